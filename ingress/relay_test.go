package ingress

import (
	"strings"
	"testing"

	"github.com/mailroot/mailroot/internal/config"
)

// Never an open relay: every classic trick from a client outside
// relay_networks and not authenticated is refused with 550 5.7.1 (or 501
// 5.1.3 when the domain is no domain name: a final dot, an empty label),
// and what must be accepted (local, alias and held domains, postmaster)
// is.
func TestOpenRelayTricks(t *testing.T) {
	f := start(t, func(c *config.Config) {
		c.Ingress.RelayNetworks = []string{"192.0.2.0/24"}
		c.Ingress.MaxBadCommands = 100 // every trick is one, on one connection
		c.LocalDomains = []string{"local.test"}
		c.Domains = []config.Domain{
			{Name: "alias.test", Type: config.DomainAlias},
			{Name: "dialup.test", Type: config.DomainRemote, Hold: true},
			{Name: "smart.test", Type: config.DomainRemote, SmartHost: "127.0.0.1:1"},
		}
	}, nil)
	tests := []struct {
		rcpt string
		code int
	}{
		{"<user@local.test>", 250},
		{"<User@LOCAL.TEST>", 250},
		{"<user@local.test.>", 501},
		{"<victim@local.test..>", 501},
		{"<victim@local..test>", 501},
		{"<victim@.local.test>", 501},
		{"<postmaster>", 250},
		{"<PostMaster>", 250},
		{"<user@alias.test>", 250},
		{"<user@dialup.test>", 250},
		{"<victim@elsewhere.test>", 550},
		{"<victim@ELSEWHERE.test.>", 501},
		{"<victim@smart.test>", 550},
		{"<user%victim.test@local.test>", 550},
		{"<user%victim.test@LOCAL.test.>", 501},
		{"<victim.test!user@local.test>", 550},
		{`<"victim@elsewhere.test"@local.test>`, 550},
		{`<"victim@elsewhere.test">`, 501},
		{"<victim@elsewhere.test@local.test>", 550},
		{"<user@local.test@elsewhere.test>", 550},
		{"<@local.test:victim@elsewhere.test>", 550},
		{"<@hop1.test,@local.test:victim@elsewhere.test>", 550},
		{"<@elsewhere.test:user@local.test>", 250},
		{"<victim@[192.0.2.1]>", 550},
		{"<victim@[127.0.0.1]>", 550},
		{"<victim@[IPv6:::1]>", 550},
		{"<victim>", 501},
		{"<victim@>", 501},
	}
	rc := rawDial(t, f.addr)
	rc.cmd("EHLO client.test")
	if code, _ := rc.cmd("MAIL FROM:<a@remote.test>"); code != 250 {
		t.Fatal("MAIL")
	}
	for _, tt := range tests {
		code, text := rc.cmd("RCPT TO:" + tt.rcpt)
		if code != tt.code {
			t.Errorf("RCPT TO:%s: %s, want %d", tt.rcpt, text, tt.code)
		}
		if tt.code == 550 && !strings.HasPrefix(text, "550 5.7.1 Unable to relay for ") {
			t.Errorf("RCPT TO:%s: %q, want 550 5.7.1 Unable to relay for <address>", tt.rcpt, text)
		}
	}
	rc.send("DATA\r\nSubject: t\r\n\r\nx\r\n.\r\n")
	if code, _ := rc.reply(); code != 354 {
		t.Fatal("DATA")
	}
	if code, text := rc.reply(); code != 250 {
		t.Fatalf("data: %s", text)
	}
	env, _ := decodeLast(t, f)
	var got []string
	for _, r := range env.Rcpts {
		got = append(got, r.Addr)
	}
	want := "user@local.test User@LOCAL.TEST postmaster@local.test postmaster@local.test user@local.test user@dialup.test user@local.test"
	if strings.Join(got, " ") != want {
		t.Errorf("recipients\n%s\nwant (alias rewritten to the default domain, postmaster stamped)\n%s", strings.Join(got, " "), want)
	}
}

// Relay networks and authenticated users may relay; a site's local_domains
// narrows what it accepts from anyone; a sender without a domain gets the
// default domain (IIS).
func TestRelayPermissions(t *testing.T) {
	f := start(t, func(c *config.Config) {
		c.LocalDomains = []string{"local.test", "other.test"}
		c.DefaultDomain = "other.test"
		withUsers(t, c, testUser(t, "u@local.test", nil, nil))
		addSite(c, config.KindMTA, "open", func(s *config.Site) { s.RelayNetworks = []string{"127.0.0.0/8"} })
		addSite(c, config.KindMTA, "closed", func(s *config.Site) {
			s.RelayNetworks = nil
			s.LocalDomains = []string{"local.test"}
		})
	}, nil)
	c := dial(t, f.svc.SiteAddrs("open")[0])
	if _, err := send(t, c, "a@local.test", []string{"x@elsewhere.test"}, "Subject: r\r\n\r\nb\r\n"); err != nil {
		t.Errorf("relay network: %v", err)
	}
	closed := f.svc.SiteAddrs("closed")[0]
	c = dial(t, closed)
	_ = c.Mail("a@remote.test", nil)
	if err := c.Rcpt("x@other.test", nil); enhanced(err) != "550 5.7.1" {
		t.Errorf("a local domain outside the site's local_domains: %v", err)
	}
	if err := c.Rcpt("x@local.test", nil); err != nil {
		t.Errorf("the site's local domain: %v", err)
	}
	c = dialStartTLS(t, closed)
	if err := authPlain(c, "u@local.test", testPassword); err != nil {
		t.Fatal(err)
	}
	if _, err := send(t, c, "u@local.test", []string{"x@elsewhere.test", "y@other.test"}, "Subject: r\r\n\r\nb\r\n"); err != nil {
		t.Errorf("authenticated user: %v", err)
	}
	rc := rawDial(t, closed)
	rc.cmd("EHLO client.test")
	if code, text := rc.cmd("MAIL FROM:<webapp>"); code != 250 {
		t.Fatalf("bare sender: %s", text)
	}
	rc.cmd("RCPT TO:<x@local.test>")
	rc.cmd("DATA")
	if code, text := rc.cmd("Subject: bare\r\n\r\nb\r\n."); code != 250 {
		t.Fatalf("bare sender's message: %s", text)
	}
	if env, _ := decodeLast(t, f); env.From != "webapp@other.test" {
		t.Errorf("bare sender: %q, want the default domain stamped", env.From)
	}
}
