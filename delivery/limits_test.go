package delivery

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

// Three delivery workers against a domain limited to 2 connections:
// the remote never has more than 2 open at once (measured there), and
// every message arrives: none deferred, none bounced.
func TestConnectionLimitAcrossWorkers(t *testing.T) {
	h := newHarness(t, "lim.test. MX 10 mx.lim.test.", "mx.lim.test. A 127.0.0.1")
	h.cfg.Domains = []config.Domain{{Name: "lim.test", Type: config.DomainRemote, MaxConnections: 2}}
	h.cfg.Delivery.ConnectionCacheTime = config.Duration(50 * time.Millisecond)
	var maxLive atomic.Int64
	h.sink.DataFunc = func(int, *testutil.Mail) error {
		if n := int64(h.sink.Live()); n > maxLive.Load() {
			maxLive.Store(n)
		}
		time.Sleep(10 * time.Millisecond) // a slow remote: the workers overlap
		return nil
	}
	for range 3 {
		h.start(nil)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { // the remote's open connections, sampled
		for ctx.Err() == nil {
			if n := int64(h.sink.Live()); n > maxLive.Load() {
				maxLive.Store(n)
			}
			time.Sleep(time.Millisecond)
		}
	})
	const n = 60
	for i := range n {
		env, body := numbered("lim.test", i)
		h.publishOut(env, body)
	}
	testutil.WaitFor(t, 2*time.Minute, "every mail at the remote", func() bool { return h.sink.Count() >= n })
	cancel()
	wg.Wait()
	t.Logf("%d messages, %d connections, at most %d open at once", h.sink.Count(), h.sink.Connections(), maxLive.Load())
	if m := maxLive.Load(); m > 2 || m < 1 {
		t.Fatalf("%d connections open at once at the remote, want at most 2", m)
	}
	if h.sink.Count() != n {
		t.Fatalf("%d mails, want %d", h.sink.Count(), n)
	}
}

// A rate limit holds at the remote within 10 %: 60 a minute is one
// message a second, whatever the number of workers.
func TestRateLimitAtTheRemote(t *testing.T) {
	h := newHarness(t, "rate.test. MX 10 mx.rate.test.", "mx.rate.test. A 127.0.0.1")
	h.cfg.Domains = []config.Domain{{Name: "rate.test", Type: config.DomainRemote, MessagesPerMinute: 60}}
	var mu sync.Mutex
	var at []time.Time
	h.sink.DataFunc = func(int, *testutil.Mail) error {
		mu.Lock()
		at = append(at, time.Now())
		mu.Unlock()
		return nil
	}
	h.start(nil)
	h.start(nil)
	const n = 11
	for i := range n {
		env, body := numbered("rate.test", i)
		h.publishOut(env, body)
	}
	testutil.WaitFor(t, time.Minute, "every mail at the remote", func() bool { return h.sink.Count() >= n })
	mu.Lock()
	defer mu.Unlock()
	span := at[len(at)-1].Sub(at[0])
	rate := float64(len(at)-1) / span.Minutes()
	t.Logf("%d messages in %v: %.1f a minute", len(at), span.Round(time.Millisecond), rate)
	if rate > 66 || rate < 54 {
		t.Fatalf("%.1f messages a minute at the remote, want 60 ± 10 %%", rate)
	}
}

// Masquerading rewrites the envelope sender of mail leaving over SMTP,
// for the configured sender domains only.
func TestMasquerade(t *testing.T) {
	h := newHarness(t, "masq.test. MX 10 mx.masq.test.", "mx.masq.test. A 127.0.0.1")
	h.cfg.Delivery.MasqueradeDomain = "example.com"
	h.cfg.Delivery.MasqueradeSenders = []string{"origin.test"}
	h.start(nil)
	env, body := numbered("masq.test", 1)
	h.publishOut(env, body)
	other, body2 := numbered("masq.test", 2)
	other.From = "someone@elsewhere.test"
	h.publishOut(other, body2)
	mails := h.waitMails(2)
	froms := map[string]bool{}
	for _, m := range mails {
		froms[m.From] = true
		if !bytes.Contains(m.Data, []byte("From: sender@origin.test")) {
			t.Errorf("the From: header changed: %q", m.Data)
		}
	}
	if !froms["sender@example.com"] || !froms["someone@elsewhere.test"] {
		t.Fatalf("MAIL FROM at the remote: %v, want sender@example.com and someone@elsewhere.test unchanged", froms)
	}
}
