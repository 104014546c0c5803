package ingress

import (
	"bytes"
	"crypto/tls"
	"net"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
)

// trio starts the usual three sites (mta, submission, smtps) plus an odmr
// site, all on free ports, with one user.
func trio(t *testing.T, edit func(*config.Config)) *fixture {
	t.Helper()
	return start(t, func(c *config.Config) {
		c.Domains = []config.Domain{{Name: "dialup.test", Type: config.DomainRemote, Hold: true}}
		withUsers(t, c, testUser(t, "alice@local.test", nil, []string{"dialup.test"}))
		addSite(c, config.KindMTA, "mta", nil)
		addSite(c, config.KindSubmission, "submission", func(s *config.Site) { s.Hostname = "submit.local.test" })
		addSite(c, config.KindSMTPS, "smtps", nil)
		addSite(c, config.KindODMR, "odmr", nil)
		if edit != nil {
			edit(c)
		}
	}, nil)
}

// ehlo returns the EHLO keywords (first word of each line after the greeting).
func ehlo(c *smtp.Client) map[string]bool {
	out := map[string]bool{}
	for _, kw := range []string{"STARTTLS", "AUTH", "REQUIRETLS", "ETRN", "ATRN", "PIPELINING", "8BITMIME", "SIZE",
		"ENHANCEDSTATUSCODES", "DSN", "CHUNKING", "BINARYMIME", "SMTPUTF8"} {
		if ok, _ := c.Extension(kw); ok {
			out[kw] = true
		}
	}
	return out
}

// Each listener advertises what applies to it and to the TLS state: no
// STARTTLS once in TLS, AUTH only in TLS, REQUIRETLS only in TLS, ETRN on
// the MTA site, ATRN on the ODMR site.
func TestEHLOPerListenerAndTLSState(t *testing.T) {
	f := trio(t, nil)
	always := []string{"PIPELINING", "8BITMIME", "SIZE", "ENHANCEDSTATUSCODES", "DSN", "CHUNKING", "BINARYMIME", "SMTPUTF8"}
	tests := []struct {
		name, site string
		dial       func(testing.TB, string) *smtp.Client
		want, not  []string
	}{
		{"mta plain", "mta", dial, []string{"STARTTLS", "ETRN"}, []string{"AUTH", "REQUIRETLS", "ATRN"}},
		{"mta after STARTTLS", "mta", dialStartTLS, []string{"AUTH", "REQUIRETLS", "ETRN"}, []string{"STARTTLS", "ATRN"}},
		{"submission plain", "submission", dial, []string{"STARTTLS"}, []string{"AUTH", "ETRN", "ATRN", "REQUIRETLS"}},
		{"submission after STARTTLS", "submission", dialStartTLS, []string{"AUTH", "REQUIRETLS"}, []string{"STARTTLS", "ETRN", "ATRN"}},
		{"smtps (implicit TLS)", "smtps", dialImplicit, []string{"AUTH", "REQUIRETLS"}, []string{"STARTTLS", "ETRN", "ATRN"}},
		{"odmr after STARTTLS", "odmr", dialStartTLS, []string{"AUTH", "ATRN"}, []string{"STARTTLS", "ETRN"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.dial(t, f.svc.SiteAddrs(tt.site)[0])
			got := ehlo(c)
			for _, kw := range append(tt.want, always...) {
				if !got[kw] {
					t.Errorf("%s does not advertise %s (has %v)", tt.name, kw, got)
				}
			}
			for _, kw := range tt.not {
				if got[kw] {
					t.Errorf("%s advertises %s", tt.name, kw)
				}
			}
			if ok, mechs := c.Extension("AUTH"); ok && mechs != "PLAIN LOGIN" {
				t.Errorf("AUTH %q, want PLAIN LOGIN", mechs)
			}
		})
	}
}

// The banner and EHLO name are the site's; the envelope and a header say
// which site accepted the mail; Received: records TLS version and cipher.
func TestSiteIdentityAndReceivedTLS(t *testing.T) {
	f := trio(t, nil)
	c := dialStartTLS(t, f.svc.SiteAddrs("submission")[0])
	if err := authPlain(c, "alice@local.test", testPassword); err != nil {
		t.Fatal(err)
	}
	if _, err := send(t, c, "alice@local.test", []string{"bob@elsewhere.test"}, "Subject: hi\r\n\r\nbody\r\n"); err != nil {
		t.Fatal(err)
	}
	m := lastIn(t, f.js)
	env, err := envelope.Decode(m.Header)
	if err != nil {
		t.Fatal(err)
	}
	if env.Site != "submission" || m.Header.Get(envelope.HdrSite) != "submission" || env.AuthUser != "alice@local.test" || !strings.HasPrefix(env.TLS, "TLS1.3 ") {
		t.Errorf("envelope site %q user %q tls %q", env.Site, env.AuthUser, env.TLS)
	}
	want := "\tby submit.local.test (Mailroot) with ESMTPSA id " + env.QueueID + "\r\n\t(using TLS1.3 with cipher " + tls.CipherSuiteName(tls.TLS_AES_128_GCM_SHA256)
	if !bytes.Contains(m.Data, []byte(want)) {
		t.Errorf("Received: does not record the site, AUTH and TLS:\n%s", m.Data[:bytes.Index(m.Data, []byte("Subject"))])
	}
}

func TestBannerIsTheSites(t *testing.T) {
	f := trio(t, func(c *config.Config) { c.Sites[1].Banner = "Submission service" })
	if g := rawDial(t, f.svc.SiteAddrs("submission")[0]).greeting; g != "220 submit.local.test Submission service" {
		t.Errorf("greeting %q", g)
	}
	if g := rawDial(t, f.svc.SiteAddrs("mta")[0]).greeting; g != "220 mx.local.test ESMTP Mailroot" {
		t.Errorf("greeting %q", g)
	}
}

// A site listens on IPv6 as well as IPv4.
func TestIPv6Listener(t *testing.T) {
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback here")
	}
	_ = l.Close()
	f := start(t, func(c *config.Config) { c.Ingress.Listen = []string{"127.0.0.1:0", "[::1]:0"} }, nil)
	addr := f.svc.Addrs()[1]
	if !strings.HasPrefix(addr, "[::1]:") {
		t.Fatalf("addresses %v", f.svc.Addrs())
	}
	c := dial(t, addr)
	if _, err := send(t, c, "a@remote.test", []string{"b@local.test"}, "Subject: v6\r\n\r\nx\r\n"); err != nil {
		t.Fatal(err)
	}
	if env, _ := decodeLast(t, f); env.ClientIP != "::1" {
		t.Errorf("client %q", env.ClientIP)
	}
}
