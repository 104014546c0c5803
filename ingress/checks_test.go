package ingress

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/authcheck"
	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/metrics"
	"github.com/mailroot/mailroot/internal/testutil"
)

// checksZone is the DNS of the senders in these tests; the client is
// 127.0.0.1.
func checksZone(keys ...testutil.DKIMKey) []string {
	z := []string{
		`org.test. TXT "v=spf1 ip4:127.0.0.1 -all"`,
		`_dmarc.org.test. TXT "v=DMARC1; p=reject"`,
		`bounce.rej.test. TXT "v=spf1 ip4:127.0.0.0/8 -all"`,
		`rej.test. TXT "v=spf1 -all"`,
		`_dmarc.rej.test. TXT "v=DMARC1; p=reject"`,
		`quar.test. TXT "v=spf1 -all"`,
		`_dmarc.quar.test. TXT "v=DMARC1; p=quarantine"`,
		`none.test. TXT "v=spf1 -all"`,
		`_dmarc.none.test. TXT "v=DMARC1; p=none"`,
		`strict.test. TXT "v=spf1 -all"`,
		`_dmarc.strict.test. TXT "v=DMARC1; p=reject; adkim=s"`,
		`soft.test. TXT "v=spf1 ~all"`,
	}
	for _, k := range keys {
		z = append(z, k.Record())
	}
	return z
}

// startChecked serves a site that checks every client (no
// relay_networks), asking d.
func startChecked(t *testing.T, d *testutil.DNS, edit func(*config.Config)) *fixture {
	t.Helper()
	return startLogged(t, func(c *config.Config) {
		c.Ingress.AuthChecks = true
		c.Ingress.RelayNetworks = nil
		c.DNS.Servers = []string{d.Addr}
		c.DNS.Timeout = config.Duration(500 * time.Millisecond)
		if edit != nil {
			edit(c)
		}
	}, nil, testutil.Logger(t), withMetrics)
}

func authMessage(from, extra string) string {
	return extra + "From: Sender <someone@" + from + ">\r\nTo: b@local.test\r\nSubject: checks\r\nMessage-ID: <x@" + from + ">\r\n\r\nHello.\r\n"
}

// authResults parses the Authentication-Results field that follows our
// Received: at the top of a stored message.
func authResults(t testing.TB, stored []byte) (string, []authres.Result) {
	t.Helper()
	_, rest, ok := bytes.Cut(stored, []byte("\r\n"+authcheck.HeaderName+": "))
	if !ok || !bytes.HasPrefix(stored, []byte("Received: ")) {
		t.Fatalf("no Authentication-Results after Received: in\n%s", stored)
	}
	var v strings.Builder
	for i, line := range strings.Split(string(rest), "\r\n") {
		if i > 0 && !strings.HasPrefix(line, "\t") && !strings.HasPrefix(line, " ") {
			break
		}
		v.WriteString(line)
	}
	id, rs, err := authres.Parse(v.String())
	if err != nil {
		t.Fatalf("parse %q: %v", v.String(), err)
	}
	return id, rs
}

// results maps method to value ("spf", "spf.helo", "dkim", "dmarc").
func results(rs []authres.Result) map[string]string {
	out := map[string]string{}
	for _, r := range rs {
		switch r := r.(type) {
		case *authres.SPFResult:
			if r.Helo != "" {
				out["spf.helo"] = string(r.Value)
			} else {
				out["spf"] = string(r.Value)
			}
		case *authres.DKIMResult:
			out["dkim"] += string(r.Value)
		case *authres.DMARCResult:
			out["dmarc"] = string(r.Value)
		}
	}
	return out
}

func lastOn(t testing.TB, js jetstream.JetStream, subject string) *jetstream.RawStreamMsg {
	t.Helper()
	s, err := js.Stream(context.Background(), bus.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(context.Background(), subject)
	if err != nil {
		t.Fatalf("no message on %s: %v", subject, err)
	}
	return m
}

// A checked message gets our header, with every result parsing back with
// go-msgauth; a forged field with our authserv-id is removed, another
// server's kept.
func TestChecksHeader(t *testing.T) {
	k := testutil.NewDKIMKey(t, "org.test", "s1")
	d := testutil.StartDNS(t, checksZone(k)...)
	f := startChecked(t, d, nil)
	forged := "Authentication-Results: mx.local.test; dmarc=pass header.from=forged.test\r\n" +
		"Authentication-Results: upstream.test; spf=pass smtp.mailfrom=kept.test\r\n"
	msg := k.Sign(t, authMessage("org.test", forged))
	c := dial(t, f.addr)
	if resp, err := send(t, c, "bounce@org.test", []string{"b@local.test"}, string(msg)); err != nil {
		t.Fatalf("%v %v", resp, err)
	}
	m := lastIn(t, f.js)
	id, rs := authResults(t, m.Data)
	got := results(rs)
	if id != "mx.local.test" || got["spf"] != "pass" || got["dkim"] != "pass" || got["dmarc"] != "pass" || got["spf.helo"] != "none" {
		t.Fatalf("header %s: %v", id, got)
	}
	for check, result := range map[string]string{"spf": "pass", "dkim": "pass", "dmarc": "pass"} {
		if n := metricValue(t, f.svc.Metrics, "mailroot_ingress_auth_results_total", "site=default", "check="+check, "result="+result); n != 1 {
			t.Errorf("%s=%s counted %v times, want 1", check, result, n)
		}
	}
	if bytes.Contains(m.Data, []byte("forged.test")) || !bytes.Contains(m.Data, []byte("upstream.test; spf=pass smtp.mailfrom=kept.test")) {
		t.Fatalf("forged field kept or foreign one removed:\n%s", m.Data)
	}
	if !bytes.HasSuffix(m.Data, msg[bytes.Index(msg, []byte("Authentication-Results: upstream.test")):]) {
		t.Fatalf("content changed beyond the forged field:\n%s", m.Data)
	}
}

// The authserv-id is the site's setting when given.
func TestChecksAuthServID(t *testing.T) {
	d := testutil.StartDNS(t, checksZone()...)
	f := startChecked(t, d, func(c *config.Config) { c.Ingress.AuthServID = "auth.local.test" })
	c := dial(t, f.addr)
	if _, err := send(t, c, "a@org.test", []string{"b@local.test"}, authMessage("org.test", "Authentication-Results: auth.local.test; spf=pass\r\n")); err != nil {
		t.Fatal(err)
	}
	m := lastIn(t, f.js)
	if id, _ := authResults(t, m.Data); id != "auth.local.test" || bytes.Count(m.Data, []byte("auth.local.test")) != 1 {
		t.Fatalf("authserv-id %q in\n%s", id, m.Data)
	}
}

// DMARC none / quarantine / reject each do what the site says, and a
// message passes when either SPF or DKIM is aligned (relaxed), not when
// only an unaligned one passes (strict DKIM, another domain).
func TestDMARCActions(t *testing.T) {
	rej := testutil.NewDKIMKey(t, "mail.rej.test", "s")
	sub := testutil.NewDKIMKey(t, "sub.strict.test", "s")
	other := testutil.NewDKIMKey(t, "third.test", "s")
	d := testutil.StartDNS(t, checksZone(rej, sub, other)...)
	tests := []struct {
		name            string
		reject, quarant string // the site's dmarc_reject, dmarc_quarantine
		mailFrom, from  string
		key             *testutil.DKIMKey
		want            string // "reject", "quarantine" or "deliver"
		dmarc           string
	}{
		{"p=reject, reject", config.ActionReject, config.ActionTag, "a@rej.test", "rej.test", nil, "reject", "fail"},
		{"p=reject, quarantine", config.ActionQuarantine, config.ActionTag, "a@rej.test", "rej.test", nil, "quarantine", "fail"},
		{"p=reject, tag", config.ActionTag, config.ActionReject, "a@rej.test", "rej.test", nil, "deliver", "fail"},
		{"p=quarantine, quarantine", config.ActionReject, config.ActionQuarantine, "a@quar.test", "quar.test", nil, "quarantine", "fail"},
		{"p=quarantine, reject", config.ActionTag, config.ActionReject, "a@quar.test", "quar.test", nil, "reject", "fail"},
		{"p=quarantine, tag", config.ActionReject, config.ActionTag, "a@quar.test", "quar.test", nil, "deliver", "fail"},
		{"p=none", config.ActionReject, config.ActionReject, "a@none.test", "none.test", nil, "deliver", "fail"},
		{"spf aligned", config.ActionReject, config.ActionReject, "a@bounce.rej.test", "rej.test", nil, "deliver", "pass"},
		{"dkim aligned", config.ActionReject, config.ActionReject, "a@rej.test", "rej.test", &rej, "deliver", "pass"},
		{"dkim of another domain", config.ActionReject, config.ActionReject, "a@rej.test", "rej.test", &other, "reject", "fail"},
		{"strict dkim, subdomain", config.ActionReject, config.ActionReject, "a@strict.test", "strict.test", &sub, "reject", "fail"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startChecked(t, d, func(c *config.Config) {
				c.Ingress.DMARCReject, c.Ingress.DMARCQuarantine = tt.reject, tt.quarant
			})
			msg := []byte(authMessage(tt.from, ""))
			if tt.key != nil {
				msg = tt.key.Sign(t, string(msg))
			}
			c := dial(t, f.addr)
			resp, err := send(t, c, tt.mailFrom, []string{"b@local.test"}, string(msg))
			in, quar := subjectCount(t, f.js, bus.SubjIn), subjectCount(t, f.js, bus.SubjQuarantine)
			switch tt.want {
			case "reject":
				if enhanced(err) != "550 5.7.1" || !strings.Contains(err.Error(), "DMARC policy of "+tt.from) || in+quar != 0 {
					t.Fatalf("got %v %v (%d stored), want 550 5.7.1 naming the DMARC policy", resp, err, in+quar)
				}
				if n := refusedCount(t, f, "default", metrics.RefusedDMARC); n != 1 {
					t.Errorf("dmarc refusals = %v", n)
				}
				return
			case "quarantine":
				if err != nil || in != 0 || quar != 1 {
					t.Fatalf("got %v %v, %d on mail.in, %d quarantined; want 250 and quarantined", resp, err, in, quar)
				}
				m := lastOn(t, f.js, bus.SubjQuarantine)
				env, _ := envelope.Decode(m.Header)
				if !strings.Contains(env.Reason, "DMARC policy of "+tt.from) {
					t.Errorf("reason %q", env.Reason)
				}
				if _, rs := authResults(t, m.Data); results(rs)["dmarc"] != tt.dmarc {
					t.Errorf("dmarc = %v, want %s", results(rs), tt.dmarc)
				}
			default:
				if err != nil || in != 1 || quar != 0 {
					t.Fatalf("got %v %v, %d on mail.in, %d quarantined; want delivered", resp, err, in, quar)
				}
				if _, rs := authResults(t, lastIn(t, f.js).Data); results(rs)["dmarc"] != tt.dmarc {
					t.Errorf("dmarc = %v, want %s", results(rs), tt.dmarc)
				}
			}
		})
	}
}

// SPF fail of the MAIL FROM is refused with spf_fail = "reject" (not a
// softfail), and tagged by default.
func TestSPFFailAction(t *testing.T) {
	d := testutil.StartDNS(t, checksZone()...)
	f := startChecked(t, d, func(c *config.Config) { c.Ingress.SPFFail = config.ActionReject })
	c := dial(t, f.addr)
	_, err := send(t, c, "a@none.test", []string{"b@local.test"}, authMessage("none.test", ""))
	if enhanced(err) != "550 5.7.23" || !strings.Contains(err.Error(), "none.test") {
		t.Fatalf("SPF fail: %v, want 550 5.7.23", err)
	}
	if n := refusedCount(t, f, "default", metrics.RefusedSPF); n != 1 {
		t.Errorf("spf refusals = %v", n)
	}
	if _, err := send(t, c, "a@soft.test", []string{"b@local.test"}, authMessage("soft.test", "")); err != nil {
		t.Fatalf("softfail refused: %v", err)
	}
	if _, rs := authResults(t, lastIn(t, f.js).Data); results(rs)["spf"] != "softfail" {
		t.Errorf("spf = %v", results(rs))
	}

	f = startChecked(t, d, nil) // tag
	c = dial(t, f.addr)
	if _, err := send(t, c, "a@none.test", []string{"b@local.test"}, authMessage("none.test", "")); err != nil {
		t.Fatalf("tag: %v", err)
	}
	if _, rs := authResults(t, lastIn(t, f.js).Data); results(rs)["spf"] != "fail" {
		t.Errorf("spf = %v", results(rs))
	}
}

// Relay clients and authenticated users are not checked, and what they
// send is stored as sent; nor are sites with auth_checks off.
func TestChecksSkipTrusted(t *testing.T) {
	d := testutil.StartDNS(t, checksZone()...)
	body := authMessage("rej.test", "Authentication-Results: mx.local.test; dmarc=pass\r\n")
	for _, tt := range []struct {
		name string
		edit func(*config.Config)
		auth bool
	}{
		{"relay_networks", func(c *config.Config) { c.Ingress.RelayNetworks = []string{"127.0.0.0/8"} }, false},
		{"AUTH", func(c *config.Config) {
			withUsers(t, c, testUser(t, "alice", nil, nil))
			c.Ingress.AllowInsecureAuth = true
		}, true},
		{"auth_checks off", func(c *config.Config) { c.Ingress.AuthChecks = false }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := startChecked(t, d, func(c *config.Config) {
				c.Ingress.DMARCReject = config.ActionReject
				tt.edit(c)
			})
			before := d.Queries()
			c := dial(t, f.addr)
			if tt.auth {
				if err := authPlain(c, "alice", testPassword); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := send(t, c, "a@rej.test", []string{"b@local.test"}, body); err != nil {
				t.Fatalf("refused: %v", err)
			}
			m := lastIn(t, f.js)
			if !bytes.HasSuffix(m.Data, []byte("\r\n"+body)) || bytes.Count(m.Data, []byte(authcheck.HeaderName)) != 1 || d.Queries() != before {
				t.Fatalf("checked (%d queries):\n%s", d.Queries()-before, m.Data)
			}
		})
	}
}

// Submission sites do not inherit [ingress] auth_checks.
func TestChecksOffForSubmission(t *testing.T) {
	c := config.Default()
	if !c.SiteOf(config.KindMTA).AuthChecks || c.SiteOf(config.KindSubmission).AuthChecks || c.SiteOf(config.KindSMTPS).AuthChecks {
		t.Fatal("auth_checks should be on for mta sites only")
	}
}

// A dead DNS server cannot hold the session: the checks give up within
// the site's timeout, the message is accepted with temperror verdicts,
// and the session goes on.
func TestChecksDeadDNS(t *testing.T) {
	k := testutil.NewDKIMKey(t, "org.test", "s1")
	d := testutil.StartDNS(t, checksZone(k)...)
	timeout := 2 * time.Second
	var logs testutil.Logs
	f := startLogged(t, func(c *config.Config) {
		c.Ingress.AuthChecks = true
		c.Ingress.RelayNetworks = nil
		c.DNS.Servers = []string{d.Addr}
		c.DNS.Timeout = config.Duration(time.Minute) // only the checks' deadline bounds them
		c.Ingress.Timeout = config.Duration(timeout)
		c.Ingress.DMARCReject = config.ActionReject
	}, nil, logs.Logger(t))
	d.SetSilent(true)
	rc := rawDial(t, f.addr)
	rc.cmd("EHLO client.org.test")
	rc.cmd("MAIL FROM:<a@org.test>")
	rc.cmd("RCPT TO:<b@local.test>")
	if code, text := rc.cmd("DATA"); code != 354 {
		t.Fatal(text)
	}
	rc.send(string(k.Sign(t, authMessage("org.test", ""))) + ".\r\n")
	start := time.Now()
	code, text := rc.reply()
	took := time.Since(start)
	t.Logf("end of DATA answered after %v with a dead DNS server (site timeout %v)", took, timeout)
	if code != 250 || took >= timeout {
		t.Fatalf("reply %d %q after %v, want 250 within the site timeout %v", code, text, took, timeout)
	}
	if code, _ := rc.cmd("NOOP"); code != 250 {
		t.Fatal("session did not go on")
	}
	got := results(func() []authres.Result { _, rs := authResults(t, lastIn(t, f.js).Data); return rs }())
	if got["spf"] != "temperror" || got["dkim"] != "temperror" || got["dmarc"] != "temperror" {
		t.Fatalf("results %v, want temperror", got)
	}
}

// A message over 64 KiB is checked from the Object Store and stored with
// the header, whole and once.
func TestChecksLargeMessage(t *testing.T) {
	k := testutil.NewDKIMKey(t, "org.test", "s1")
	d := testutil.StartDNS(t, checksZone(k)...)
	f := startChecked(t, d, nil)
	body := authMessage("org.test", "Authentication-Results: mx.local.test; dkim=pass header.d=forged.test\r\n")
	body += strings.Repeat(strings.Repeat("y", 998)+"\r\n", 300)
	msg := k.Sign(t, body)
	bad := bytes.Replace(msg, []byte("yyyy\r\n"), []byte("yyyz\r\n"), 1)
	c := dial(t, f.addr)
	obs, err := f.js.ObjectStore(context.Background(), bus.BucketBodies)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		msg  []byte
		dkim string
	}{{msg, "pass"}, {bad, "fail"}} {
		if _, err := send(t, c, "a@org.test", []string{"b@local.test"}, string(tc.msg)); err != nil {
			t.Fatal(err)
		}
		m := lastIn(t, f.js)
		env, _ := envelope.Decode(m.Header)
		if env.Body != envelope.BodyObject {
			t.Fatalf("body %q", env.Body)
		}
		got, err := obs.GetBytes(context.Background(), env.QueueID)
		if err != nil {
			t.Fatal(err)
		}
		_, rs := authResults(t, got)
		if r := results(rs); r["dkim"] != tc.dkim || r["spf"] != "pass" {
			t.Errorf("results %v, want dkim=%s", r, tc.dkim)
		}
		if bytes.Contains(got, []byte("forged.test")) || int64(len(got)) != env.BodySize {
			t.Errorf("forged field kept, or size %d != %d", len(got), env.BodySize)
		}
		if _, err := obs.GetInfo(context.Background(), uncheckedName(env.QueueID)); err == nil {
			t.Error("unchecked copy left in the store")
		}
		want := tc.msg[bytes.Index(tc.msg, []byte("From: ")):]
		if !bytes.HasSuffix(got, want) {
			t.Error("content changed")
		}
	}
}

// BenchmarkAcceptChecked is BenchmarkAccept's plain mode for mail the
// checks apply to (a client outside relay_networks, to a local domain), a
// DKIM-signed 4 KiB message with every DNS answer cached, with the checks
// off and on: the difference of cpu-us/msg is what the checks add.
func BenchmarkAcceptChecked(b *testing.B) {
	k := testutil.NewDKIMKey(b, "org.test", "s1")
	d := testutil.StartDNS(b, append(checksZone(k), `client.org.test. TXT "v=spf1 ip4:127.0.0.1 -all"`)...)
	body := string(k.Sign(b, authMessage("org.test", "")+strings.Repeat(strings.Repeat("b", 76)+"\r\n", 4096/78)))
	for _, mode := range []string{"off", "on"} {
		b.Run(mode, func(b *testing.B) {
			f := startLogged(b, func(c *config.Config) {
				c.Ingress.AuthChecks = mode == "on"
				c.Ingress.RelayNetworks = nil
				c.Ingress.MaxConnectionsPerIP = 1000
				c.DNS.Servers = []string{d.Addr}
				c.DNS.CacheSize = 100
			}, nil, testutil.Discard())
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			b.SetParallelism(10)
			var sent atomic.Int64
			cpu0 := testutil.ProcessCPU()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				c, err := smtp.Dial(f.addr)
				if err == nil {
					err = c.Hello("client.org.test")
				}
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				for pb.Next() {
					sent.Add(1)
					if err := c.SendMail("bounce@org.test", []string{"b@local.test"}, strings.NewReader(body)); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64((testutil.ProcessCPU()-cpu0).Microseconds())/float64(sent.Load()), "cpu-us/msg")
			if mode == "on" {
				if _, rs := authResults(b, lastIn(b, f.js).Data); results(rs)["dmarc"] != "pass" {
					b.Fatalf("results %v", results(rs))
				}
			}
		})
	}
}

// BDAT content is checked as DATA is: a refusal answers BDAT LAST, a
// pass is stored with the header.
func TestChecksBDAT(t *testing.T) {
	k := testutil.NewDKIMKey(t, "org.test", "s1")
	d := testutil.StartDNS(t, checksZone(k)...)
	f := startChecked(t, d, func(c *config.Config) { c.Ingress.DMARCReject = config.ActionReject })
	rc := rawDial(t, f.addr)
	rc.cmd("EHLO client.test")
	for _, tc := range []struct {
		from string
		msg  []byte
		code int
	}{
		{"a@rej.test", []byte(authMessage("rej.test", "")), 550},
		{"a@rej.test", k.Sign(t, authMessage("org.test", "")), 250},
	} {
		rc.cmd("MAIL FROM:<" + tc.from + ">")
		rc.cmd("RCPT TO:<b@local.test>")
		half := len(tc.msg) / 2
		rc.send(fmt.Sprintf("BDAT %d\r\n%s", half, tc.msg[:half]))
		if code, text := rc.reply(); code != 250 {
			t.Fatalf("first chunk: %s", text)
		}
		rc.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(tc.msg)-half, tc.msg[half:]))
		code, text := rc.reply()
		if code != tc.code {
			t.Fatalf("BDAT LAST: %q, want %d", text, tc.code)
		}
	}
	if _, rs := authResults(t, lastIn(t, f.js).Data); results(rs)["dmarc"] != "pass" || subjectCount(t, f.js, bus.SubjIn) != 1 {
		t.Fatalf("results %v", results(rs))
	}
}
