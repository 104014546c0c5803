package node

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/testutil"
)

// BenchmarkPipeline measures the whole in-process pipeline with fsync on:
// SMTP submission of 4 KiB messages over parallel sessions, through router
// and delivery, to a go-smtp sink via smart_host. b.N messages are
// submitted; the timer stops when the sink has all of them.
func BenchmarkPipeline(b *testing.B) {
	sink := testutil.StartSink(b)
	w := &world{dns: testutil.StartDNS(b), port: sink.Port}
	cfg := testConfig(b, w, b.TempDir())
	cfg.Delivery.SmartHost = sink.Addr
	cfg.LogLevel = "error"
	n, err := StartEmbedded(b.Context(), cfg, testutil.Discard())
	if err != nil {
		b.Fatal(err)
	}
	defer n.Stop()
	<-n.Ingress.Ready()
	addr := n.Ingress.Addrs()[0]
	body := "Subject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("b", 76)+"\r\n", 4096/78)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.SetParallelism(10) // 20 sessions on 2 cores, like bench/relay.sh
	var sent atomic.Int64
	start := time.Now()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c, err := smtp.Dial(addr)
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
	accepted := time.Since(start)
	deadline := time.Now().Add(5 * time.Minute)
	for sink.Count() < int(sent.Load()) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	b.StopTimer()
	total := time.Since(start)
	if got := sink.Count(); got < int(sent.Load()) {
		b.Fatalf("only %d of %d delivered", got, sent.Load())
	}
	b.ReportMetric(float64(sent.Load())/accepted.Seconds(), "accepted/s")
	b.ReportMetric(float64(sent.Load())/total.Seconds(), "delivered/s")
}
