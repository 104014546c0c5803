package ingress

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mailroot/mailroot/delivery/release"
	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

func heldDomains(c *config.Config) {
	c.Domains = []config.Domain{
		{Name: "dialup.test", Type: config.DomainRemote, Hold: true},
		{Name: "branch.dialup.test", Type: config.DomainRemote, Hold: true},
		{Name: "smart.test", Type: config.DomainRemote, SmartHost: "127.0.0.1:1"},
	}
}

// startRelease runs the release worker a delivery process would run.
func startRelease(t *testing.T, f *fixture) {
	t.Helper()
	r := release.New(*f.svc.conf(), testutil.Logger(t), &bus.Room{JS: f.js})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	// The worker subscribes asynchronously; wait until a request is answered.
	nc := f.js.Conn()
	testutil.WaitFor(t, 10*time.Second, "release worker", func() bool {
		_, err := nc.Request(bus.SubjCtlRelease, []byte("{}"), 200*time.Millisecond)
		return err == nil
	})
}

// ETRN (RFC 1985) releases the held mail of a domain: the reply counts it
// and the messages move from mail.hold.<tok> to mail.out.<tok>.
func TestETRNReleasesHeldMail(t *testing.T) {
	f := start(t, heldDomains, nil)
	startRelease(t, f)
	tok := bus.Token("dialup.test")
	publishHeld(t, f.js, tok, "q1", "Subject: 1\r\n\r\nx\r\n", "a@dialup.test")
	publishHeld(t, f.js, tok, "q2", "Subject: 2\r\n\r\nx\r\n", "b@dialup.test")
	publishHeld(t, f.js, bus.Token("branch.dialup.test"), "q3", "Subject: 3\r\n\r\nx\r\n", "c@branch.dialup.test")

	rc := rawDial(t, f.addr)
	if code, _ := rc.cmd("ETRN dialup.test"); code != 503 {
		t.Errorf("ETRN before EHLO: %d, want 503", code)
	}
	rc.cmd("EHLO client.test")
	if code, text := rc.cmd("ETRN dialup.test"); code != 253 || !strings.Contains(text, "253 2.0.0 OK, 2 pending messages for node dialup.test started") {
		t.Fatalf("ETRN: %q", text)
	}
	testutil.WaitFor(t, 10*time.Second, "held mail on mail.out", func() bool {
		return subjectCount(t, f.js, bus.Out(tok)) == 2 && subjectCount(t, f.js, bus.Hold(tok)) == 0
	})
	if n := subjectCount(t, f.js, bus.Hold(bus.Token("branch.dialup.test"))); n != 1 {
		t.Errorf("the subdomain was released too (%d left)", n)
	}
	if code, text := rc.cmd("ETRN dialup.test"); code != 251 || !strings.Contains(text, "no messages waiting for node dialup.test") {
		t.Errorf("second ETRN: %q, want 251", text)
	}
	if code, text := rc.cmd("ETRN @dialup.test"); code != 253 || !strings.Contains(text, "1 pending") {
		t.Errorf("ETRN @domain: %q, want the subdomain's message", text)
	}
	tests := []struct {
		cmd  string
		code int
	}{
		{"ETRN elsewhere.test", 459},
		{"ETRN #queue", 459},
		{"ETRN", 501},
		{"ETRN a b", 501},
		{"ETRN smart.test", 251},
	}
	for _, tt := range tests {
		if code, text := rc.cmd(tt.cmd); code != tt.code {
			t.Errorf("%s: %q, want %d", tt.cmd, text, tt.code)
		}
	}
	rc.cmd("MAIL FROM:<a@remote.test>")
	if code, _ := rc.cmd("ETRN dialup.test"); code != 503 {
		t.Errorf("ETRN in a transaction: %d, want 503", code)
	}
}

func TestETRNRefusals(t *testing.T) {
	f := start(t, func(c *config.Config) {
		heldDomains(c)
		addSite(c, config.KindMTA, "restricted", func(s *config.Site) { s.ETRNNetworks = []string{"192.0.2.0/24"} })
		addSite(c, config.KindSubmission, "submission", nil)
		addSite(c, config.KindMTA, "open", nil)
	}, nil)
	rc := rawDial(t, f.svc.SiteAddrs("restricted")[0])
	rc.cmd("EHLO client.test")
	if code, text := rc.cmd("ETRN dialup.test"); code != 459 || !strings.Contains(text, "client not permitted") {
		t.Errorf("ETRN from outside etrn_networks: %q", text)
	}
	rc = rawDial(t, f.svc.SiteAddrs("submission")[0])
	rc.cmd("EHLO client.test")
	if code, _ := rc.cmd("ETRN dialup.test"); code != 502 {
		t.Errorf("ETRN on submission: %d, want 502", code)
	}
	// No release worker answers: 458.
	rc = rawDial(t, f.svc.SiteAddrs("open")[0])
	rc.cmd("EHLO client.test")
	if code, text := rc.cmd("ETRN dialup.test"); code != 458 {
		t.Errorf("ETRN with no delivery process: %q, want 458", text)
	}
}
