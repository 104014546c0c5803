package delivery

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
)

// numbered is message i of a test: its own recipients and body.
func numbered(domain string, i int) (*envelope.Envelope, []byte) {
	env := newEnv(domain, fmt.Sprintf("a%d@%s", i, domain), fmt.Sprintf("b%d@%s", i, domain))
	body := fmt.Appendf(nil, "From: sender@origin.test\r\nSubject: %d\r\n\r\n.line %d\r\n..\r\nend\r\n", i, i)
	return env, body
}

// checkArrived checks that every message of sent arrived once at sink,
// byte for byte, with its own recipients.
func checkArrived(t *testing.T, sink *testutil.Sink, sent map[string][]byte, rcpts map[string][]string) {
	t.Helper()
	mails := sink.Mails()
	if len(mails) != len(sent) {
		t.Errorf("%d mails at the sink, want %d", len(mails), len(sent))
	}
	seen := map[string]bool{}
	for _, m := range mails {
		subj := string(m.Data[bytes.Index(m.Data, []byte("Subject: "))+9:])
		subj = subj[:strings.Index(subj, "\r\n")]
		if seen[subj] {
			t.Errorf("message %s arrived twice", subj)
		}
		seen[subj] = true
		if !bytes.Equal(m.Data, sent[subj]) {
			t.Errorf("message %s arrived as %q, want %q", subj, m.Data, sent[subj])
		}
		if !slices.Equal(m.To, rcpts[subj]) {
			t.Errorf("message %s arrived for %v, want %v", subj, m.To, rcpts[subj])
		}
	}
}

// N messages to one host go over a few connections, not N: at most one
// per delivery slot. Each arrives intact, with its own recipients.
func TestConnectionReuse(t *testing.T) {
	h := newHarness(t, "reuse.test. MX 10 mx.reuse.test.", "mx.reuse.test. A 127.0.0.1")
	h.start(nil)
	const n = 40
	sent, rcpts := map[string][]byte{}, map[string][]string{}
	for i := range n {
		env, body := numbered("reuse.test", i)
		sent[fmt.Sprint(i)], rcpts[fmt.Sprint(i)] = body, env.Addrs()
		h.publishOut(env, body)
	}
	h.waitMails(n)
	h.waitEmpty()
	checkArrived(t, h.sink, sent, rcpts)
	if c := h.sink.Connections(); c > h.cfg.Delivery.Concurrency {
		t.Errorf("%d connections for %d messages, want at most %d (the delivery slots)", c, n, h.cfg.Delivery.Concurrency)
	}
	if s := h.svc.pool.Stats(); s.Hits < n-h.cfg.Delivery.Concurrency {
		t.Errorf("pool %+v", s)
	}
}

// With connection_cache_time = "0s" every message has its connection.
func TestConnectionReuseOff(t *testing.T) {
	h := newHarness(t, "reuse.test. MX 10 mx.reuse.test.", "mx.reuse.test. A 127.0.0.1")
	h.cfg.Delivery.ConnectionCacheTime = 0
	h.start(nil)
	for i := range 3 {
		env, body := numbered("reuse.test", i)
		h.publishOut(env, body)
		h.waitMails(i + 1)
		h.waitEmpty()
	}
	if c := h.sink.Connections(); c != 3 {
		t.Errorf("%d connections for 3 messages", c)
	}
	testutil.WaitFor(t, wait, "no connection left open", func() bool { return h.sink.Live() == 0 })
}

// noSchedules fails the test if any retry schedule was published.
func noSchedules(t *testing.T, nc *nats.Conn) func() {
	t.Helper()
	var n atomic.Int32
	sub, err := nc.Subscribe("mail.defer.>", func(*nats.Msg) { n.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		_ = nc.Flush()
		_ = sub.Unsubscribe()
		if n.Load() != 0 {
			t.Errorf("%d retry schedules published", n.Load())
		}
	}
}

// A cached connection that the remote closed meanwhile — an idle timeout
// with 421, or a restart — is no failure: the message goes over a new
// connection at once, with no retry schedule and no attempt counted.
func TestCachedConnectionClosedByRemote(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(h *harness)
		kill  func(h *harness)
	}{
		{"idle timeout", func(h *harness) {
			h.sink = testutil.StartSinkWith(h.t, "127.0.0.1:0", func(s *smtp.Server) { s.ReadTimeout = 300 * time.Millisecond })
			h.cfg.Delivery.Port = h.sink.Port
		}, func(h *harness) {
			testutil.WaitFor(h.t, wait, "the remote to close the idle connection", func() bool { return h.sink.Live() == 0 })
		}},
		{"restart", func(*harness) {}, func(h *harness) {
			old := h.sink
			old.Close()
			testutil.WaitFor(h.t, wait, "the old server's connections to close", func() bool { return old.Live() == 0 })
			h.sink = testutil.StartSinkOn(h.t, old.Addr)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, "stale.test. MX 10 mx.stale.test.", "mx.stale.test. A 127.0.0.1")
			tc.setup(h)
			h.cfg.Delivery.ConnectionCacheTime = config.Duration(time.Minute) // outlives the remote's patience
			var dials atomic.Int32
			h.start(func(s *Service) {
				dial := s.Dial
				s.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
					dials.Add(1)
					return dial(ctx, network, addr)
				}
			})
			check := noSchedules(t, h.nc)
			first, body := numbered("stale.test", 0)
			h.publishOut(first, body)
			h.waitMails(1)
			h.waitEmpty()
			if s := h.svc.pool.Stats(); s.Idle != 1 {
				t.Fatalf("connection not cached: %+v", s)
			}
			tc.kill(h)

			env, body := numbered("stale.test", 1)
			h.publishOut(env, body)
			var m testutil.Mail
			testutil.WaitFor(t, wait, "the second message at the sink", func() bool {
				for _, m = range h.sink.Mails() {
					if slices.Equal(m.To, env.Addrs()) {
						return true
					}
				}
				return false
			})
			h.waitEmpty()
			check()
			if !bytes.Equal(m.Data, body) {
				t.Errorf("arrived as %q, want %q", m.Data, body)
			}
			if n := dials.Load(); n != 2 {
				t.Errorf("%d connects, want 2 (the first message's, then a new one for the second)", n)
			}
			if s := h.svc.pool.Stats(); s.Hits != 1 {
				t.Errorf("the stale connection was not tried first: %+v", s)
			}
			if _, err := h.stream.GetLastMsgForSubject(t.Context(), bus.Defer(bus.Token("stale.test"), env.QueueID)); err == nil {
				t.Error("a retry schedule was stored")
			}
		})
	}
}

// An idle connection is ended after connection_cache_time, with QUIT.
func TestIdleConnectionClosed(t *testing.T) {
	h := newHarness(t, "idle.test. MX 10 mx.idle.test.", "mx.idle.test. A 127.0.0.1")
	idle := 500 * time.Millisecond
	h.cfg.Delivery.ConnectionCacheTime = config.Duration(idle)
	h.start(nil)
	env, body := numbered("idle.test", 0)
	h.publishOut(env, body)
	h.waitMails(1)
	delivered := time.Now()
	h.waitEmpty()
	if h.sink.Live() != 1 {
		t.Fatalf("%d connections open right after the message, want the cached one", h.sink.Live())
	}
	testutil.WaitFor(t, wait, "the idle connection to be closed", func() bool { return h.sink.Live() == 0 })
	if d := time.Since(delivered); d < idle-100*time.Millisecond {
		t.Errorf("closed %v after the message, before the idle limit %v", d, idle)
	}
	if s := h.svc.pool.Stats(); s.Idle != 0 || s.Kept != 1 {
		t.Errorf("pool %+v", s)
	}
}

// Different destinations never share a connection: not two servers, and
// not two host names at one address.
func TestConnectionsNotShared(t *testing.T) {
	h := newHarness(t,
		"one.test. MX 10 mx.one.test.", "mx.one.test. A 127.0.0.1",
		"two.test. MX 10 mx.two.test.", "mx.two.test. A 127.0.0.1")
	other := testutil.StartSink(t)
	h.cfg.Domains = []config.Domain{{Name: "three.test", Type: config.DomainRemote, SmartHost: other.Addr}}
	h.cfg.Delivery.ConnectionCacheTime = config.Duration(time.Minute)
	h.start(nil)
	// By server: the MX (one.test, two.test) or the smart host.
	sent := map[bool]map[string][]byte{false: {}, true: {}}
	rcpts := map[bool]map[string][]string{false: {}, true: {}}
	for i := range 9 {
		domain := []string{"one.test", "two.test", "three.test"}[i%3]
		env, body := numbered(domain, i)
		smart := domain == "three.test"
		sent[smart][fmt.Sprint(i)], rcpts[smart][fmt.Sprint(i)] = body, env.Addrs()
		h.publishOut(env, body)
		h.waitEmpty() // one after the other: each finds the connections of the ones before
	}
	checkArrived(t, h.sink, sent[false], rcpts[false])
	checkArrived(t, other, sent[true], rcpts[true])
	if c := h.sink.Connections(); c != 2 {
		t.Errorf("%d connections to the MX address, want 2 (one per host name)", c)
	}
	if c := other.Connections(); c != 1 {
		t.Errorf("%d connections to the smart host, want 1", c)
	}
	if s := h.svc.pool.Stats(); s.Hits != 6 || s.Idle != 3 {
		t.Errorf("pool %+v", s)
	}
}

// A plain-text connection in the cache never carries mail of a domain
// with require_tls; TLS connections are cached as TLS and reused.
func TestCachedConnectionTLS(t *testing.T) {
	t.Run("plain connection not used for require_tls", func(t *testing.T) {
		h := newHarness(t,
			"open.test. MX 10 mx.shared.test.", "secure.test. MX 10 mx.shared.test.", "mx.shared.test. A 127.0.0.1")
		h.cfg.Domains = []config.Domain{{Name: "secure.test", Type: config.DomainRemote, RequireTLS: true}}
		h.cfg.Delivery.ConnectionCacheTime = config.Duration(time.Minute)
		h.start(nil)
		h.publishOut(newEnv("open.test", "x@open.test"), sampleBody)
		h.waitMails(1)
		h.waitEmpty()
		env := newEnv("secure.test", "x@secure.test")
		h.publishOut(env, sampleBody)
		raw := h.waitLast(bus.Defer(bus.Token("secure.test"), env.QueueID))
		next, err := envelope.Decode(raw.Header)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(next.LastError, "4.7.10") {
			t.Errorf("last error %q", next.LastError)
		}
		if n := h.sink.Transactions(); n != 1 {
			t.Errorf("%d transactions: mail for a require_tls domain went in plain text", n)
		}
		if s := h.svc.pool.Stats(); s.Hits != 0 {
			t.Errorf("pool %+v", s)
		}
	})
	t.Run("TLS connection reused", func(t *testing.T) {
		b := &tlsBackend{sink: &testutil.Sink{}}
		cert := selfSigned(t)
		port := serveSMTP(t, b, func(srv *smtp.Server) {
			srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
		})
		h := newHarness(t, "tls.test. MX 10 mx.tls.test.", "mx.tls.test. A 127.0.0.1")
		h.trust(cert)
		h.cfg.Delivery.Port = port
		h.cfg.Domains = []config.Domain{{Name: "tls.test", Type: config.DomainRemote, RequireTLS: true}}
		h.cfg.Delivery.ConnectionCacheTime = config.Duration(time.Minute)
		var dials atomic.Int32
		h.start(func(s *Service) {
			dial := s.Dial
			s.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
				dials.Add(1)
				return dial(ctx, network, addr)
			}
		})
		for i := range 3 {
			env, body := numbered("tls.test", i)
			h.publishOut(env, body)
			testutil.WaitFor(t, wait, "delivery", func() bool { return b.sink.Count() == i+1 })
			h.waitEmpty()
		}
		if got := b.transactions(); !slices.Equal(got, []bool{true, true, true}) {
			t.Errorf("transactions over TLS: %v", got)
		}
		if n := dials.Load(); n != 1 {
			t.Errorf("%d connections, want 1", n)
		}
	})
}

// On shutdown the cached connections are ended with QUIT within the grace.
func TestShutdownDrainsConnections(t *testing.T) {
	h := newHarness(t, "drain.test. MX 10 mx.drain.test.", "mx.drain.test. A 127.0.0.1")
	h.cfg.Delivery.ConnectionCacheTime = config.Duration(time.Hour)
	stop := h.start(nil)
	for i := range 3 {
		env, body := numbered("drain.test", i)
		h.publishOut(env, body)
	}
	h.waitMails(3)
	h.waitEmpty()
	if h.sink.Live() == 0 {
		t.Fatal("no connection cached")
	}
	start := time.Now()
	stop()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("shutdown took %v", d)
	}
	testutil.WaitFor(t, wait, "the cached connections to be closed", func() bool { return h.sink.Live() == 0 })
	if s := h.svc.pool.Stats(); s.Idle != 0 {
		t.Errorf("pool %+v", s)
	}
}
