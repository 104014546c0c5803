package ingress

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

// BenchmarkAccept measures ingress alone (SMTP to the PubAck, JetStream
// without fsync) with 20 sessions of 4 KiB messages: plain, and STARTTLS
// with AUTH as on a submission port. cpu-us/msg is the CPU time of the
// whole test process (server, embedded NATS and the clients) per message,
// the figure to compare across changes; msgs/s depends on the machine's
// load. bench/submission.sh measures the built binary with fsync.
// plain+txlog is plain with the W3C transaction log on (log_dir).
func BenchmarkAccept(b *testing.B) {
	for _, mode := range []string{"plain", "plain+txlog", "starttls+auth"} {
		b.Run(mode, func(b *testing.B) {
			f := startLogged(b, func(c *config.Config) {
				withUsers(b, c, testUser(b, "bench@local.test", nil, nil))
				c.Ingress.MaxConnectionsPerIP = 1000
				if mode == "plain+txlog" {
					c.Ingress.LogDir = b.TempDir()
				}
			}, nil, testutil.Discard())
			body := "Subject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("b", 76)+"\r\n", 4096/78)
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			b.SetParallelism(10)
			var sent atomic.Int64
			cpu0 := testutil.ProcessCPU()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				var c *smtp.Client
				var err error
				if mode != "starttls+auth" {
					c, err = smtp.Dial(f.addr)
				} else {
					c, err = smtp.DialStartTLS(f.addr, clientTLS())
					if err == nil {
						err = authPlain(c, "bench@local.test", testPassword)
					}
				}
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				for pb.Next() {
					i := sent.Add(1)
					if err := c.SendMail("bench@local.test", []string{fmt.Sprintf("r%d@remote.test", i)}, strings.NewReader(body)); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(sent.Load())/b.Elapsed().Seconds(), "msgs/s")
			b.ReportMetric(float64((testutil.ProcessCPU()-cpu0).Microseconds())/float64(sent.Load()), "cpu-us/msg")
		})
	}
}
