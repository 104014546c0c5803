package delivery

import (
	"context"
	"encoding/base64"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

// The smart host's password is in no log line, at any level (down to the
// trace level), neither when the login works nor when it is refused:
// not as text, nor as the base64 of an AUTH PLAIN or LOGIN exchange.
func TestSmartHostPasswordNeverLogged(t *testing.T) {
	for _, tc := range []struct {
		name, password string
		ok             bool
	}{
		{"accepted", "secret", true}, // the test smart host's password for relay
		{"refused", "Wr0ng-Pa55-7xq", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sink, cert, port := smartHost(t, false)
			h := newHarness(t)
			h.trust(cert)
			pw := filepath.Join(t.TempDir(), "pw")
			if err := os.WriteFile(pw, []byte(tc.password+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			h.cfg.Delivery.SmartHost = "127.0.0.1:" + strconv.Itoa(port)
			h.cfg.Delivery.SmartHostUser, h.cfg.Delivery.SmartHostPasswordFile = "relay", pw
			h.cfg.LogLevel = "trace"
			logs := &testutil.Logs{}
			h.start(func(s *Service) {
				s.log = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug - 4})).With("svc", "delivery")
			})
			env := newEnv("far.test", "x@far.test")
			h.publishOut(env, sampleBody)
			if tc.ok {
				testutil.WaitFor(t, wait, "delivery", func() bool { return sink.Count() == 1 })
				h.waitEmpty()
			} else {
				h.waitLast(bus.Defer(bus.Token("far.test"), env.QueueID))
				testutil.WaitFor(t, wait, "the refused login's log line", func() bool { return logs.Count("smart host login failed") == 1 })
			}
			out := logs.String()
			if out == "" {
				t.Fatal("nothing logged: the test proves nothing")
			}
			for _, secret := range []string{
				tc.password,
				base64.StdEncoding.EncodeToString([]byte("\x00relay\x00" + tc.password)),
				base64.StdEncoding.EncodeToString([]byte(tc.password)),
			} {
				if strings.Contains(out, secret) {
					t.Errorf("the password (%q) is in the log:\n%s", secret, out)
				}
			}
		})
	}
}

// 500 messages to one remote, with connection reuse: every one arrives,
// over at most one connection per delivery slot (4 here), where one
// connection per message (connection_cache_time = "0s",
// TestConnectionReuseOff) would be 500.
func TestConnectionReuse500(t *testing.T) {
	if testing.Short() {
		t.Skip("500 messages")
	}
	h := newHarness(t, "reuse.test. MX 10 mx.reuse.test.", "mx.reuse.test. A 127.0.0.1")
	h.cfg.Delivery.ConnectionReuseCount = 1000
	// Idle connections stay open across the gaps a loaded machine makes.
	h.cfg.Delivery.ConnectionCacheTime = config.Duration(time.Minute)
	h.start(nil)
	const n = 500
	for i := range n {
		env, body := numbered("reuse.test", i)
		h.publishOut(env, body)
	}
	// A longer deadline than waitMails': 500 messages on a loaded machine.
	testutil.WaitFor(t, 2*time.Minute, "500 mails at the sink", func() bool { return h.sink.Count() >= n })
	h.waitEmpty()
	c := h.sink.Connections()
	t.Logf("%d messages over %d connections (%d delivery slots)", n, c, h.cfg.Delivery.Concurrency)
	// Far fewer than one per message: a slot may open a second
	// connection when its first is closed by the remote or by a
	// redelivered message's retry, but never one per message.
	if c > n/25 {
		t.Errorf("%d connections for %d messages, want at most %d", c, n, n/25)
	}
	if got := h.sink.Count(); got != n {
		t.Errorf("%d messages arrived, want %d", got, n)
	}
}

// slowConnect is a Dial seam for a remote that takes d to accept a
// connection (a distant or busy MX: the TCP and greeting latency).
func slowConnect(d time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		var dl net.Dialer
		return dl.DialContext(ctx, network, addr)
	}
}

// The gain of connection reuse (issue 14 item 7) against a remote that
// takes 50 ms to accept a connection: each iteration delivers 20
// messages with 4 delivery slots, over cached connections ("reuse") or a
// new connection per message ("no-reuse", connection_cache_time = 0s).
//
//	go test -run XXX -bench ReuseSlowConnect -benchtime 10x ./delivery
func BenchmarkReuseSlowConnect(b *testing.B) {
	for _, tc := range []struct {
		name  string
		cache time.Duration
	}{{"reuse", 2 * time.Second}, {"no-reuse", 0}} {
		b.Run(tc.name, func(b *testing.B) {
			ns := testutil.StartNATS(b)
			_, js := ns.Connect(b)
			d := testutil.StartDNS(b, "slow.test. MX 10 mx.slow.test.", "mx.slow.test. A 127.0.0.1")
			sink := testutil.StartSink(b)
			cfg := config.Default()
			cfg.Hostname, cfg.DataDir = "mailroot.test", b.TempDir()
			cfg.Delivery.Concurrency, cfg.Delivery.Port, cfg.Delivery.DNSServer = 4, sink.Port, d.Addr
			cfg.Delivery.Retry = []config.Duration{config.Duration(time.Second)}
			cfg.Delivery.ConnectionCacheTime = config.Duration(tc.cache)
			cfg.Delivery.ConnectionReuseCount = 1 << 20
			cfg.Delivery.ConnectionReuseTime = config.Duration(time.Hour)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if _, err := bus.Setup(ctx, js, cfg); err != nil {
				b.Fatal(err)
			}
			svc, err := New(cfg, testutil.Discard(), js)
			if err != nil {
				b.Fatal(err)
			}
			svc.Dial = slowConnect(50 * time.Millisecond)
			svc.Grace = time.Second
			done := make(chan struct{})
			go func() { defer close(done); _ = svc.Run(ctx) }()
			defer func() { cancel(); <-done }()
			const per = 20
			sent := 0
			for b.Loop() {
				for range per {
					env, body := numbered("slow.test", sent)
					sent++
					msg, err := env.Msg(bus.Out(bus.Token("slow.test")), body)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := bus.Publish(ctx, js, msg, env.QueueID+".out"); err != nil {
						b.Fatal(err)
					}
				}
				deadline := time.Now().Add(time.Minute)
				for sink.Count() < sent {
					if time.Now().After(deadline) {
						b.Fatalf("%d of %d messages delivered", sink.Count(), sent)
					}
					time.Sleep(time.Millisecond) // poll the remote's count
				}
			}
			b.ReportMetric(float64(sink.Connections())/float64(sent), "conns/msg")
		})
	}
}
