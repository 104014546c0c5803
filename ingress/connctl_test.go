package ingress

import (
	"bufio"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/metrics"
	"github.com/mailroot/mailroot/internal/testutil"
)

// dialFrom connects to addr from the local address src (any of
// 127.0.0.0/8 on Linux), without reading the greeting.
func dialFrom(t testing.TB, addr, src string) *rawConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &rawConn{t: t, c: c, r: bufio.NewReader(c)}
}

// withMetrics gives the service metrics the test can read.
func withMetrics(s *Service) { s.Metrics = metrics.New() }

// refusedCount is the site's refusals for reason.
func refusedCount(t *testing.T, f *fixture, site, reason string) float64 {
	t.Helper()
	return metricValue(t, f.svc.Metrics, "mailroot_ingress_refusals_total", "site="+site, "reason="+reason)
}

// Each list of the issue (a subnet, all except one address, a reverse DNS
// domain with and without a confirming A record, an allow list of names)
// lets in whom it should and greets the others with 554 5.7.1.
func TestConnectAllowDeny(t *testing.T) {
	zone := []string{
		"7.0.0.127.in-addr.arpa. PTR client.bad.test.", "client.bad.test. A 127.0.0.7",
		"8.0.0.127.in-addr.arpa. PTR liar.bad.test.", "liar.bad.test. A 192.0.2.8", // not confirmed
		"9.0.0.127.in-addr.arpa. PTR mx.good.test.", "mx.good.test. A 127.0.0.9",
		"10.0.0.127.in-addr.arpa. PTR good.test.", "good.test. A 127.0.0.10",
	}
	tests := []struct {
		name         string
		allow, deny  []string
		reverseDNS   bool
		let, refuse  []string
		reason, rule string
	}{
		{"deny subnet", nil, []string{"127.0.0.0/29"}, false, []string{"127.0.0.8", "127.0.0.9"}, []string{"127.0.0.7", "127.0.0.1"}, metrics.RefusedConnectDeny, "127.0.0.0/29"},
		{"all except", []string{"127.0.0.0/8"}, []string{"127.0.0.7"}, false, []string{"127.0.0.8"}, []string{"127.0.0.7"}, metrics.RefusedConnectDeny, "127.0.0.7"},
		{"only these", []string{"127.0.0.8", "127.0.0.9/32"}, nil, false, []string{"127.0.0.8", "127.0.0.9"}, []string{"127.0.0.7"}, metrics.RefusedConnectAllow, "not in connect_allow"},
		{"deny domain", nil, []string{".bad.test"}, false, []string{"127.0.0.8", "127.0.0.9"}, []string{"127.0.0.7"}, metrics.RefusedConnectDeny, ".bad.test"},
		{"deny domain with reverse_dns", nil, []string{".bad.test"}, true, []string{"127.0.0.8"}, []string{"127.0.0.7"}, metrics.RefusedConnectDeny, ".bad.test"},
		{"deny exact name", nil, []string{"good.test"}, false, []string{"127.0.0.9"}, []string{"127.0.0.10"}, metrics.RefusedConnectDeny, "good.test"},
		{"allow domain", []string{".good.test"}, nil, false, []string{"127.0.0.9", "127.0.0.10"}, []string{"127.0.0.7", "127.0.0.8"}, metrics.RefusedConnectAllow, "not in connect_allow"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := testutil.StartDNS(t, zone...)
			var logs testutil.Logs
			f := startLogged(t, func(c *config.Config) {
				c.Delivery.DNSServer = d.Addr
				c.Ingress.ConnectAllow, c.Ingress.ConnectDeny = tt.allow, tt.deny
				c.Ingress.ReverseDNS = tt.reverseDNS
			}, nil, logs.Logger(t), withMetrics)
			for _, ip := range tt.let {
				rc := dialFrom(t, f.addr, ip)
				if code, text := rc.reply(); code != 220 {
					t.Errorf("%s: greeting %q, want 220", ip, text)
				}
				if code, text := rc.cmd("EHLO client.test"); code != 250 {
					t.Errorf("%s: EHLO %q", ip, text)
				}
			}
			for _, ip := range tt.refuse {
				rc := dialFrom(t, f.addr, ip)
				code, text := rc.reply()
				if code != 554 || !strings.HasPrefix(text, "554 5.7.1 mx.local.test Client host ["+ip+"] rejected: Access denied") {
					t.Errorf("%s: greeting %q, want 554 5.7.1", ip, text)
				}
				// RFC 5321 §3.1: 503 to everything until QUIT.
				for _, c := range []string{"EHLO client.test", "MAIL FROM:<a@remote.test>", "NOOP", "STARTTLS"} {
					if code, text := rc.cmd(c); code != 503 || !strings.HasPrefix(text, "503 5.7.1") {
						t.Errorf("%s: %s after the refusal: %q, want 503 5.7.1", ip, c, text)
					}
				}
				if code, _ := rc.cmd("QUIT"); code != 221 || !rc.closed() {
					t.Errorf("%s: QUIT %d, or the connection stayed open", ip, code)
				}
			}
			if got := refusedCount(t, f, "default", tt.reason); got != float64(len(tt.refuse)) {
				t.Errorf("refused{reason=%s} = %v, want %d", tt.reason, got, len(tt.refuse))
			}
			for _, ip := range tt.refuse {
				want := "client=" + ip + " cid="
				if n := logs.Count("connection refused"); n < len(tt.refuse) || !strings.Contains(logs.String(), want) {
					t.Errorf("no refusal logged for %s (%d lines)", ip, n)
				}
			}
			if !strings.Contains(logs.String(), "rule="+tt.rule) && !strings.Contains(logs.String(), `rule="`+tt.rule+`"`) {
				t.Errorf("the log does not name the rule %q:\n%s", tt.rule, logs.String())
			}
		})
	}
}

// A refused client that never sends QUIT is cut off after max_bad_commands.
func TestConnectRefusedBadCommandsEnd(t *testing.T) {
	f := startLogged(t, func(c *config.Config) {
		c.Ingress.ConnectDeny = []string{"127.0.0.1"}
		c.Ingress.MaxBadCommands = 3
	}, nil, testutil.Logger(t), withMetrics)
	rc := rawDialAny(t, f.addr)
	if code, _ := rc.reply(); code != 554 {
		t.Fatalf("greeting %d", code)
	}
	rc.cmd("DATA")
	rc.cmd("AUTH PLAIN")
	if code, _ := rc.cmd("HELP"); code != 503 {
		t.Errorf("third command: %d, want 503", code)
	}
	if _, text := rc.reply(); !strings.HasPrefix(text, "421 4.7.0") {
		t.Errorf("after the third: %q, want the 421 of max_bad_commands", text)
	}
	if !rc.closed() {
		t.Error("connection still open")
	}
}

// An IPv6 prefix refuses a client connecting over IPv6.
func TestConnectDenyIPv6(t *testing.T) {
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback (::1) on this machine: %v", err)
	}
	_ = l.Close()
	f := startLogged(t, func(c *config.Config) {
		addSite(c, config.KindMTA, "v6", func(s *config.Site) {
			s.Listen = []string{"[::1]:0"}
			s.ConnectDeny = []string{"::/96"} // ::1 is in it
		})
		addSite(c, config.KindMTA, "v6other", func(s *config.Site) {
			s.Listen = []string{"[::1]:0"}
			s.ConnectDeny = []string{"2001:db8::/32"}
		})
	}, nil, testutil.Logger(t), withMetrics)
	rc := rawDialAny(t, f.svc.SiteAddrs("v6")[0])
	if code, text := rc.reply(); code != 554 || !strings.Contains(text, "5.7.1") || !strings.Contains(text, "[::1]") {
		t.Errorf("greeting %q, want 554 5.7.1 for [::1]", text)
	}
	if got := refusedCount(t, f, "v6", metrics.RefusedConnectDeny); got != 1 {
		t.Errorf("refused = %v", got)
	}
	rc = rawDialAny(t, f.svc.SiteAddrs("v6other")[0])
	if code, text := rc.reply(); code != 220 {
		t.Errorf("other prefix: greeting %q, want 220", text)
	}
}

// A DNSBL listing the client refuses it, naming the list and its TXT
// reason; a client the list does not name is let in, as is a relay_networks
// client; a second listing zone is not the one named when the first lists.
func TestDNSBL(t *testing.T) {
	d := testutil.StartDNS(t,
		"7.0.0.127.bl.test. A 127.0.0.2",
		`7.0.0.127.bl.test. TXT "Listed, see https://bl.test/q?127.0.0.7"`,
		"7.0.0.127.other.test. A 127.0.0.4",
		"8.0.0.127.other.test. A 127.0.0.4",    // no TXT
		"9.0.0.127.bl.test. A 127.255.255.254", // the list refused the query
		"10.0.0.127.bl.test. A 192.0.2.1",      // not a listing
	)
	var logs testutil.Logs
	f := startLogged(t, func(c *config.Config) {
		c.Delivery.DNSServer = d.Addr
		c.Ingress.DNSBL = []string{"bl.test", "other.test."}
		c.Ingress.RelayNetworks = []string{"127.0.0.1/32"}
	}, nil, logs.Logger(t), withMetrics)
	for _, tt := range []struct{ ip, want string }{
		{"127.0.0.7", "554 5.7.1 mx.local.test Service unavailable; client [127.0.0.7] blocked using bl.test; Listed, see https://bl.test/q?127.0.0.7"},
		{"127.0.0.8", "554 5.7.1 mx.local.test Service unavailable; client [127.0.0.8] blocked using other.test"},
		{"127.0.0.9", "220 "},
		{"127.0.0.10", "220 "},
		{"127.0.0.11", "220 "},
	} {
		rc := dialFrom(t, f.addr, tt.ip)
		if _, text := rc.reply(); !strings.HasPrefix(text, tt.want) || (tt.want != "220 " && text != tt.want) {
			t.Errorf("%s: greeting %q, want %q", tt.ip, text, tt.want)
		}
	}
	if got := refusedCount(t, f, "default", metrics.RefusedDNSBL); got != 2 {
		t.Errorf("refused{dnsbl} = %v, want 2", got)
	}
	if logs.Count("rule=bl.test") != 1 || logs.Count("rule=other.test") != 1 {
		t.Errorf("refusals not logged with their zone:\n%s", logs.String())
	}
	if logs.Count("refused the query") != 1 {
		t.Errorf("the 127.255.255.254 answer not logged as an error")
	}
	// A relay_networks client is not asked about.
	before := d.Queries()
	rc := rawDialAny(t, f.addr)
	if code, text := rc.reply(); code != 220 {
		t.Errorf("relay client: %q", text)
	}
	if d.Queries() != before {
		t.Errorf("DNSBL asked about a relay_networks client")
	}
}

func TestDNSBLName(t *testing.T) {
	for _, tt := range []struct{ ip, want string }{
		{"192.0.2.99", "99.2.0.192.zen.test."},
		{"::ffff:192.0.2.99", "99.2.0.192.zen.test."},
		{"2001:db8:1:2::ab", "b.a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.zen.test."},
	} {
		if got, _ := dnsblName(netip.MustParseAddr(tt.ip), "zen.test"); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.ip, got, tt.want)
		}
	}
}

// A dead DNS server holds the greeting no longer than the lookup bound
// (here the site's timeout, 2 s): DNSBLs and deny names let the client in,
// an allow list of names alone answers 421 4.7.0, to be retried.
func TestConnectDNSSilent(t *testing.T) {
	tests := []struct {
		name   string
		edit   func(*config.Site)
		want   string
		reason string
		asks   bool
	}{
		{"dnsbl", func(s *config.Site) { s.DNSBL = []string{"bl.test"} }, "220 ", "", true},
		{"deny names", func(s *config.Site) { s.ConnectDeny = []string{".bad.test"} }, "220 ", "", true},
		{"deny names with reverse_dns", func(s *config.Site) { s.ConnectDeny = []string{".bad.test"}; s.ReverseDNS = true }, "220 ", "", true},
		{"allow names", func(s *config.Site) { s.ConnectAllow = []string{".good.test"} }, "421 4.7.0", metrics.RefusedDNSTempfail, true},
		// The address is allowed: the name is not needed, nor looked up.
		{"allow names or address", func(s *config.Site) { s.ConnectAllow = []string{".good.test", "127.0.0.0/8"} }, "220 ", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := testutil.StartDNS(t)
			d.SetSilent(true)
			f := startLogged(t, func(c *config.Config) {
				c.Delivery.DNSServer = d.Addr
				c.Ingress.RelayNetworks = nil
				addSite(c, config.KindMTA, "mx", func(s *config.Site) {
					s.Timeout = config.Duration(2 * time.Second)
					tt.edit(s)
				})
			}, nil, testutil.Logger(t), withMetrics)
			begin := time.Now()
			rc := dialFrom(t, f.svc.SiteAddrs("mx")[0], "127.0.0.7")
			_, text := rc.reply()
			took := time.Since(begin)
			t.Logf("greeting %q after %v", text, took)
			if !strings.HasPrefix(text, tt.want) {
				t.Errorf("greeting %q, want %s", text, tt.want)
			}
			if took > 2*time.Second+time.Second {
				t.Errorf("greeting after %v, past the 2 s bound", took)
			}
			if asked := d.Queries() > 0; asked != tt.asks {
				t.Errorf("DNS asked: %v, want %v", asked, tt.asks)
			}
			if tt.reason != "" {
				if got := refusedCount(t, f, "mx", tt.reason); got != 1 {
					t.Errorf("refused{%s} = %v", tt.reason, got)
				}
				if !rc.closed() {
					t.Error("421 left the connection open")
				}
			}
		})
	}
}
