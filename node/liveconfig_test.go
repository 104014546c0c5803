package node

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/liveconfig"
	"github.com/mailroot/mailroot/internal/testutil"
)

// greeting is the first reply line a new connection to addr gets.
func greeting(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("greeting: %v", err)
	}
	return strings.TrimSpace(line)
}

// A domain put on hold with `mailroot config set` (the mta-config
// bucket) is held by the running ingress and router, without a restart;
// unset, it is relayed no more.
func TestLiveDomainHold(t *testing.T) {
	w := newWorld(t)
	mx := w.addMX(t, "live.test", 7)
	cfg := testConfig(t, w, t.TempDir())
	n := startNode(t, cfg)
	addr := n.Ingress.Addrs()[0]
	ctx := context.Background()
	st, err := liveconfig.Open(ctx, n.JS, 1, "")
	if err != nil {
		t.Fatal(err)
	}

	// 127.0.0.9 is outside relay_networks: live.test is not ours yet.
	if _, err := submitFrom(addr, "127.0.0.9", "a@remote.test", []string{"boss@live.test"}, "Subject: x\r\n\r\nx\r\n"); err == nil || !strings.Contains(err.Error(), "Unable to relay") {
		t.Fatalf("before the change: %v, want 550 5.7.1 relay denied", err)
	}
	if _, err := st.Set(ctx, "domain.live.test", `{type = "remote", hold = true}`, false, "tester", "customer on dial-up"); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	var qid string
	testutil.WaitFor(t, 10*time.Second, "the running ingress accepts mail for the held domain", func() bool {
		qid, err = submitFrom(addr, "127.0.0.9", "a@remote.test", []string{"boss@live.test"}, "Subject: held\r\n\r\nheld\r\n")
		return err == nil
	})
	t.Logf("hold applied by the running ingress %v after the change", time.Since(t0).Round(time.Millisecond))
	testutil.WaitFor(t, 10*time.Second, "the router holds it", func() bool { return heldCount(t, n.JS, bus.Token("live.test")) == 1 })
	if mx.Count() != 0 {
		t.Fatalf("held mail %s was delivered", qid)
	}

	if _, err := st.Set(ctx, "domain.live.test", "", true, "tester", "back to the file"); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "relay denied again", func() bool {
		_, err := submitFrom(addr, "127.0.0.9", "a@remote.test", []string{"boss@live.test"}, "Subject: x\r\n\r\nx\r\n")
		return err != nil && strings.Contains(err.Error(), "Unable to relay")
	})
}

// ingress.paused: new connections get 421 4.3.2, a session in progress
// finishes its mail; resumed, connections are served again.
func TestLivePauseSite(t *testing.T) {
	w := newWorld(t)
	cfg := testConfig(t, w, t.TempDir())
	n := startNode(t, cfg)
	addr := n.Ingress.Addrs()[0]
	ctx := context.Background()
	st, err := liveconfig.Open(ctx, n.JS, 1, "")
	if err != nil {
		t.Fatal(err)
	}

	// A session that starts before the pause.
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	say := func(line string) string {
		t.Helper()
		if line != "" {
			_, _ = c.Write([]byte(line + "\r\n"))
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			if len(l) < 4 || l[3] != '-' {
				return strings.TrimSpace(l)
			}
		}
	}
	if g := say(""); !strings.HasPrefix(g, "220 ") {
		t.Fatalf("greeting %q", g)
	}
	say("EHLO client.test")

	if _, err := st.Set(ctx, "ingress.paused", "true", false, "tester", "draining the queue"); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "new connections refused", func() bool {
		return strings.HasPrefix(greeting(t, addr), "421 4.3.2 ")
	})

	// The session in progress still sends its mail.
	for _, step := range [][2]string{{"MAIL FROM:<a@local.test>", "250"}, {"RCPT TO:<b@remote.test>", "250"}, {"DATA", "354"}, {"Subject: in progress\r\n\r\nsent during the pause\r\n.", "250"}} {
		if got := say(step[0]); !strings.HasPrefix(got, step[1]) {
			t.Fatalf("%q during the pause: %q, want %s", step[0], got, step[1])
		}
	}
	testutil.WaitFor(t, 20*time.Second, "the mail of the session in progress delivered", func() bool { return w.mx["remote.test"].Count() == 1 })

	if _, err := st.Set(ctx, "ingress.paused", "false", false, "tester", "resume"); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "connections served again", func() bool {
		return strings.HasPrefix(greeting(t, addr), "220 ")
	})
}

// A paused domain's mail waits in the queue without an attempt (no
// delivery, no bounce, no retry counted); resumed live, it goes at once
// rather than at the pause's next check.
func TestLiveResumeDomain(t *testing.T) {
	w := newWorld(t)
	mx := w.addMX(t, "paused.test", 8)
	cfg := testConfig(t, w, t.TempDir())
	cfg.Domains = []config.Domain{{Name: "paused.test", Type: config.DomainRemote, Paused: true}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, cfg)
	addr := n.Ingress.Addrs()[0]
	ctx := context.Background()
	qid := submitSMTP(t, addr, "a@local.test", []string{"b@paused.test"}, "Subject: paused\r\n\r\nwaits\r\n")
	tok := bus.Token("paused.test")
	testutil.WaitFor(t, 20*time.Second, "the mail parked on its schedule subject", func() bool {
		subjects, err := bus.DeferredSubjects(ctx, n.JS, tok)
		return err == nil && len(subjects) == 1 && strings.HasSuffix(subjects[0], "."+qid)
	})
	if mx.Count() != 0 {
		t.Fatal("mail of a paused domain was delivered")
	}

	st, err := liveconfig.Open(ctx, n.JS, 1, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Set(ctx, "domain.paused.test", `{type = "remote"}`, false, "tester", "resume"); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	// Well before the pause's own recheck (30 s): the resume fired it.
	testutil.WaitFor(t, 15*time.Second, "delivered after the resume", func() bool { return mx.Count() == 1 })
	t.Logf("delivered %v after the resume", time.Since(t0).Round(time.Millisecond))
	if got := mx.Mails()[0]; !strings.Contains(string(got.Data), "waits") {
		t.Fatalf("delivered %q", got.Data)
	}
	// No attempt was counted while it was parked: no deferred event.
	for _, e := range mailEvents(t, n, qid, bus.EventDelivered) {
		if e.Type == bus.EventDeferred || e.Type == bus.EventBounced {
			t.Fatalf("event %s while paused: %+v", e.Type, e)
		}
	}
}
