package node

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

// BenchmarkPipeline measures the whole in-process pipeline: SMTP
// submission of 4 KiB messages over parallel sessions, through router and
// delivery, to a go-smtp sink via smart_host, for each nats.sync mode:
// always (the group commit, the default), per-write (nats-server's fsync
// of every record) and 2m (no sync before a reply). b.N messages are
// submitted; the timer stops when the sink has all of them. cpu-us/msg is
// the CPU of the whole process (server, actors, client, sink).
func BenchmarkPipeline(b *testing.B) {
	for _, mode := range []string{config.SyncAlways, config.SyncPerWrite, "2m"} {
		b.Run("sync="+mode, func(b *testing.B) { benchPipeline(b, mode) })
	}
}

func benchPipeline(b *testing.B, sync string) {
	sink := testutil.StartSink(b)
	w := &world{dns: testutil.StartDNS(b), port: sink.Port}
	cfg := testConfig(b, w, b.TempDir())
	cfg.Delivery.SmartHost = sink.Addr
	cfg.NATS.Sync = sync
	if d, err := time.ParseDuration(os.Getenv("BENCH_SYNC_DELAY")); err == nil {
		cfg.NATS.SyncDelay = config.Duration(d) // to try delays: BENCH_SYNC_DELAY=1ms
	}
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
	cpu0, syncs0 := testutil.ProcessCPU(), n.Syncer.Syncs()
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
	b.ReportMetric(float64((testutil.ProcessCPU()-cpu0).Microseconds())/float64(sent.Load()), "cpu-us/msg")
	b.ReportMetric(float64(n.Syncer.Syncs()-syncs0)/float64(sent.Load()), "syncs/msg")
}
