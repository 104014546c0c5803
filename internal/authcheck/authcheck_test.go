package authcheck

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"blitiri.com.ar/go/spf"
	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dmarc"

	"github.com/mailroot/mailroot/internal/resolver"
	"github.com/mailroot/mailroot/internal/testutil"
)

var clientIP = netip.MustParseAddr("192.0.2.10")

// checker asks the test DNS server d, with short timeouts.
func checker(d *testutil.DNS) *Checker {
	return &Checker{Resolver: &resolver.Resolver{Servers: []string{d.Addr}, Timeout: 300 * time.Millisecond, Attempts: 1}}
}

func TestSPFResults(t *testing.T) {
	zone := []string{
		`pass.test. TXT "v=spf1 ip4:192.0.2.0/24 -all"`,
		`fail.test. TXT "v=spf1 ip4:198.51.100.1 -all"`,
		`softfail.test. TXT "v=spf1 ~all"`,
		`neutral.test. TXT "v=spf1 ?all"`,
		`nospf.test. TXT "hello"`,
		`syntax.test. TXT "v=spf1 ip4:300.1.1.1 -all"`,
		`mx.test. TXT "v=spf1 mx -all"`,
		`mx.test. MX 10 mail.mx.test.`,
		`mail.mx.test. A 192.0.2.10`,
	}
	// limit.test needs 11 DNS-querying mechanisms: one over RFC 7208
	// §4.6.4's 10.
	var inc []string
	for i := range 11 {
		inc = append(inc, fmt.Sprintf("include:l%d.test", i))
		zone = append(zone, fmt.Sprintf(`l%d.test. TXT "v=spf1 ip4:203.0.113.%d -all"`, i, i))
	}
	zone = append(zone, `limit.test. TXT "v=spf1 `+strings.Join(inc, " ")+` ip4:192.0.2.10 -all"`)
	// ten.test uses exactly 10, then passes.
	zone = append(zone, `ten.test. TXT "v=spf1 `+strings.Join(inc[:10], " ")+` ip4:192.0.2.10 -all"`)
	d := testutil.StartDNS(t, zone...)
	c := checker(d)
	for _, tc := range []struct {
		domain string
		want   spf.Result
	}{
		{"pass.test", spf.Pass},
		{"fail.test", spf.Fail},
		{"softfail.test", spf.SoftFail},
		{"neutral.test", spf.Neutral},
		{"nospf.test", spf.None},
		{"nxdomain.test", spf.None},
		{"syntax.test", spf.PermError},
		{"mx.test", spf.Pass},
		{"limit.test", spf.PermError},
		{"ten.test", spf.Pass},
	} {
		t.Run(tc.domain, func(t *testing.T) {
			from, _ := c.spf(t.Context(), Input{IP: clientIP, Helo: "client.example", MailFrom: "someone@" + tc.domain})
			if from.Result != tc.want || from.Domain != tc.domain {
				t.Errorf("spf(%s) = %s (%s, err %v), want %s", tc.domain, from.Result, from.Domain, from.Err, tc.want)
			}
		})
	}
}

func TestSPFTempErrorOnDeadDNS(t *testing.T) {
	d := testutil.StartDNS(t, `pass.test. TXT "v=spf1 ip4:192.0.2.0/24 -all"`)
	d.SetSilent(true)
	c := checker(d)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	from, helo := c.spf(ctx, Input{IP: clientIP, Helo: "pass.test", MailFrom: "a@pass.test"})
	if from.Result != spf.TempError || helo.Result != spf.TempError {
		t.Fatalf("dead DNS: mail from %s (%v), helo %s, want temperror", from.Result, from.Err, helo.Result)
	}
	// SERVFAIL too.
	d.SetSilent(false)
	d.SetRcode(2)
	if from, _ := c.spf(ctx, Input{IP: clientIP, MailFrom: "a@pass.test"}); from.Result != spf.TempError {
		t.Fatalf("SERVFAIL: %s, want temperror", from.Result)
	}
}

func TestSPFHeloAndNullSender(t *testing.T) {
	d := testutil.StartDNS(t,
		`mta.example.test. TXT "v=spf1 ip4:192.0.2.10 -all"`,
		`other.test. TXT "v=spf1 -all"`)
	c := checker(d)
	from, helo := c.spf(t.Context(), Input{IP: clientIP, Helo: "mta.example.test", MailFrom: ""})
	if from.Result != spf.Pass || from.Domain != "mta.example.test" || helo.Result != spf.Pass {
		t.Fatalf("null sender: from %+v helo %+v, want pass for the HELO domain", from, helo)
	}
	from, helo = c.spf(t.Context(), Input{IP: clientIP, Helo: "mta.example.test", MailFrom: "x@other.test"})
	if from.Result != spf.Fail || helo.Result != spf.Pass {
		t.Fatalf("from %s helo %s, want fail and pass", from.Result, helo.Result)
	}
	// An address literal HELO has no identity to check.
	_, helo = c.spf(t.Context(), Input{IP: clientIP, Helo: "[192.0.2.10]", MailFrom: "x@other.test"})
	if helo.Result != "" {
		t.Fatalf("literal HELO checked: %+v", helo)
	}
}

type signer = testutil.DKIMKey

func newSigner(t testing.TB, domain, selector string) signer {
	return testutil.NewDKIMKey(t, domain, selector)
}

func message(from string) string {
	return "From: Someone <someone@" + from + ">\r\nTo: rcpt@local.test\r\nSubject: hello\r\nMessage-ID: <1@" + from + ">\r\n\r\nHello there.\r\nSecond line.\r\n"
}

func check(t testing.TB, c *Checker, mailFrom string, msg []byte) Verdict {
	t.Helper()
	return c.Check(context.Background(), Input{IP: clientIP, Helo: "client.example", MailFrom: mailFrom, Message: bytes.NewReader(msg), Header: HeaderSection(msg)})
}

func TestDKIM(t *testing.T) {
	s1 := newSigner(t, "signer.test", "s1")
	s2 := newSigner(t, "other.test", "s2")
	d := testutil.StartDNS(t, s1.Record(), s2.Record())
	c := checker(d)
	signed := s1.Sign(t, message("signer.test"))
	v := check(t, c, "", signed)
	if len(v.DKIM) != 1 || v.DKIM[0].Result != "pass" || v.DKIM[0].Domain != "signer.test" {
		t.Fatalf("signed message: %+v, want one pass for signer.test", v.DKIM)
	}
	// One body byte changed.
	bad := bytes.Replace(signed, []byte("Hello there."), []byte("Hello therE."), 1)
	v = check(t, c, "", bad)
	if len(v.DKIM) != 1 || v.DKIM[0].Result != "fail" {
		t.Fatalf("changed body: %+v, want fail", v.DKIM)
	}
	// Two signatures, each with its own result; the second key is not
	// published under that selector.
	double := s2.Sign(t, string(signed))
	v = check(t, c, "", double)
	if len(v.DKIM) != 2 || v.DKIM[0].Result != "pass" || v.DKIM[0].Domain != "other.test" || v.DKIM[1].Result != "pass" {
		t.Fatalf("two signatures: %+v, want two passes", v.DKIM)
	}
	missing := newSigner(t, "signer.test", "nokey").Sign(t, message("signer.test"))
	v = check(t, c, "", missing)
	if len(v.DKIM) != 1 || v.DKIM[0].Result != "permerror" {
		t.Fatalf("unpublished key: %+v, want permerror", v.DKIM)
	}
	if v := check(t, c, "", []byte(message("x.test"))); len(v.DKIM) != 0 {
		t.Fatalf("unsigned: %+v", v.DKIM)
	}
	d.SetSilent(true)
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	v = c.Check(ctx, Input{IP: clientIP, Message: bytes.NewReader(signed), Header: HeaderSection(signed)})
	if len(v.DKIM) != 1 || v.DKIM[0].Result != "temperror" {
		t.Fatalf("dead DNS: %+v, want temperror", v.DKIM)
	}
}

func TestDMARC(t *testing.T) {
	s := newSigner(t, "mail.org.test", "s")
	other := newSigner(t, "third.test", "s")
	d := testutil.StartDNS(t, s.Record(), other.Record(),
		`_dmarc.org.test. TXT "v=DMARC1; p=reject; sp=quarantine"`,
		`_dmarc.strict.test. TXT "v=DMARC1; p=quarantine; adkim=s; aspf=s"`,
		`_dmarc.none.test. TXT "v=DMARC1; p=none"`,
		`_dmarc.half.test. TXT "v=DMARC1; p=reject; pct=50"`,
		`_dmarc.broken.test. TXT "v=DMARC1; p=bogus"`,
		`org.test. TXT "v=spf1 ip4:192.0.2.10 -all"`,
		`bounce.org.test. TXT "v=spf1 ip4:192.0.2.10 -all"`,
		`strict.test. TXT "v=spf1 ip4:192.0.2.10 -all"`,
		`sub.strict.test. TXT "v=spf1 ip4:192.0.2.10 -all"`,
		`half.test. TXT "v=spf1 -all"`,
		`none.test. TXT "v=spf1 -all"`,
	)
	c := checker(d)
	pct := 99
	c.Percent = func() int { return pct }
	for _, tc := range []struct {
		name, mailFrom, from string
		signer               *signer
		want                 string
		policy               dmarc.Policy
		spfAl, dkimAl        bool
	}{
		{"spf aligned relaxed", "a@bounce.org.test", "org.test", nil, "pass", "", true, false},
		{"dkim aligned relaxed", "", "org.test", &s, "pass", "", false, true},
		{"unaligned dkim, no spf", "", "org.test", &other, "fail", dmarc.PolicyReject, false, false},
		{"spf pass for another domain", "a@strict.test", "org.test", nil, "fail", dmarc.PolicyReject, false, false},
		{"subdomain takes sp", "a@none.test", "x.org.test", nil, "fail", dmarc.PolicyQuarantine, false, false},
		{"strict spf: subdomain not aligned", "a@sub.strict.test", "strict.test", nil, "fail", dmarc.PolicyQuarantine, false, false},
		{"strict spf: same domain aligned", "a@strict.test", "strict.test", nil, "pass", "", true, false},
		{"p=none", "a@none.test", "none.test", nil, "fail", dmarc.PolicyNone, false, false},
		{"pct not sampled", "a@half.test", "half.test", nil, "fail", dmarc.PolicyQuarantine, false, false},
		{"no policy", "a@none.test", "nodmarc.test", nil, "none", "", false, false},
		{"bad record", "a@none.test", "broken.test", nil, "permerror", "", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := []byte(message(tc.from))
			if tc.signer != nil {
				msg = tc.signer.Sign(t, string(msg))
			}
			v := check(t, c, tc.mailFrom, msg)
			got := v.DMARC
			if got.Result != tc.want || got.Policy != tc.policy || got.SPFAligned != tc.spfAl || got.DKIMAligned != tc.dkimAl || got.From != tc.from {
				t.Fatalf("dmarc = %+v (spf %+v, dkim %+v), want %s policy %q aligned spf %v dkim %v", got, v.SPF, v.DKIM, tc.want, tc.policy, tc.spfAl, tc.dkimAl)
			}
		})
	}
	// Strict DKIM: a signature of a subdomain is not aligned.
	sub := newSigner(t, "sub.strict.test", "s")
	d.Add(t, sub.Record())
	v := check(t, c, "", sub.Sign(t, message("strict.test")))
	if v.DMARC.Result != "fail" || v.DKIM[0].Result != "pass" {
		t.Fatalf("strict dkim: %+v %+v, want fail with a passing signature", v.DMARC, v.DKIM)
	}
	pct = 10 // sampled: the policy applies as published
	if v := check(t, c, "a@half.test", []byte(message("half.test"))); v.DMARC.Policy != dmarc.PolicyReject {
		t.Fatalf("pct sampled: %+v, want reject", v.DMARC)
	}
	d.SetSilent(true)
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	msg := []byte(message("org.test"))
	if v := c.Check(ctx, Input{IP: clientIP, MailFrom: "a@org.test", Message: bytes.NewReader(msg), Header: msg}); v.DMARC.Result != "temperror" {
		t.Fatalf("dead DNS: %+v, want temperror", v.DMARC)
	}
}

func TestOrgDomain(t *testing.T) {
	for in, want := range map[string]string{
		"a.b.example.com": "example.com", "example.co.uk": "example.co.uk", "x.example.co.uk.": "example.co.uk",
		"com": "com", "mail.org.test": "org.test",
	} {
		if got := OrgDomain(in); got != want {
			t.Errorf("OrgDomain(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFromDomains(t *testing.T) {
	for _, tc := range []struct {
		header, want string
		err          error
	}{
		{"From: a@Example.TEST\r\n\r\n", "example.test", nil},
		{"from:\r\n  \"A, B\" <a@x.test>\r\nTo: b@y\r\n\r\n", "x.test", nil},
		{"From: a@x.test, b@x.test\r\n\r\n", "x.test", nil},
		{"From: a@x.test, b@y.test\r\n\r\n", "x.test y.test", nil},
		{"To: a@x.test\r\n\r\n", "", ErrNoFrom},
		{"From: a@x.test\r\nFrom: b@Y.test\r\n\r\n", "x.test y.test", nil},
		{"From: Jörg <jörg@x.test>\r\n\r\n", "x.test", nil},
		{"From: a@Bücher.test\r\n\r\n", "xn--bcher-kva.test", nil},
		{"From: nobody\r\n\r\n", "", ErrFromSyntax},
		{"Subject: x\r\n\r\nFrom: a@x.test\r\n", "", ErrNoFrom},
	} {
		got, err := FromDomains([]byte(tc.header))
		if strings.Join(got, " ") != tc.want || err != tc.err {
			t.Errorf("FromDomains(%q) = %q, %v; want %q, %v", tc.header, got, err, tc.want, tc.err)
		}
	}
}

// A second From cannot hide a failing one: the worst verdict counts.
func TestDMARCSeveralFrom(t *testing.T) {
	k := newSigner(t, "good.test", "s")
	d := testutil.StartDNS(t, k.Record(),
		`_dmarc.good.test. TXT "v=DMARC1; p=reject"`,
		`_dmarc.victim.test. TXT "v=DMARC1; p=reject"`)
	c := checker(d)
	for _, h := range []string{
		"From: a@good.test\r\nFrom: ceo@victim.test\r\nSubject: x\r\n\r\nbody\r\n",
		"From: a@good.test, ceo@victim.test\r\nSubject: x\r\n\r\nbody\r\n",
	} {
		v := check(t, c, "", k.Sign(t, h))
		if v.DMARC.Result != "fail" || v.DMARC.From != "victim.test" || v.DMARC.Policy != dmarc.PolicyReject {
			t.Errorf("%q: %+v, want fail for victim.test", h, v.DMARC)
		}
	}
}

func TestHeaderParsesBack(t *testing.T) {
	v := Verdict{
		SPF:   SPFResult{Result: spf.Pass, Domain: "org.test"},
		Helo:  SPFResult{Result: spf.None, Domain: "client.example"},
		DKIM:  []DKIMResult{{Result: "pass", Domain: "org.test", Identifier: "@org.test"}, {Result: "fail", Domain: "x.test", Reason: "signature did not verify; \r\nreally"}},
		DMARC: DMARCResult{Result: "fail", From: "org.test", Policy: dmarc.PolicyQuarantine},
	}
	h := Header("mx.local.test", v)
	if !strings.HasPrefix(h, HeaderName+": ") || !strings.HasSuffix(h, "\r\n") {
		t.Fatalf("header %q", h)
	}
	for _, line := range strings.Split(strings.TrimSuffix(h, "\r\n"), "\r\n") {
		if len(line) > 998 || strings.ContainsAny(line, "\r\n") {
			t.Fatalf("bad line %q", line)
		}
	}
	unfolded := strings.ReplaceAll(strings.TrimSuffix(strings.TrimPrefix(h, HeaderName+": "), "\r\n"), "\r\n", "")
	id, rs, err := authres.Parse(unfolded)
	if err != nil || id != "mx.local.test" || len(rs) != 5 {
		t.Fatalf("Parse(%q) = %q, %d results, %v", unfolded, id, len(rs), err)
	}
	if r, ok := rs[0].(*authres.SPFResult); !ok || r.Value != authres.ResultPass || r.From != "org.test" {
		t.Errorf("spf = %#v", rs[0])
	}
	if r, ok := rs[1].(*authres.SPFResult); !ok || r.Value != authres.ResultNone || r.Helo != "client.example" {
		t.Errorf("helo = %#v", rs[1])
	}
	if r, ok := rs[2].(*authres.DKIMResult); !ok || r.Value != authres.ResultPass || r.Domain != "org.test" || r.Identifier != "@org.test" {
		t.Errorf("dkim = %#v", rs[2])
	}
	if r, ok := rs[3].(*authres.DKIMResult); !ok || r.Value != authres.ResultFail || r.Domain != "x.test" {
		t.Errorf("dkim 2 = %#v", rs[3])
	}
	if r, ok := rs[4].(*authres.DMARCResult); !ok || r.Value != authres.ResultFail || r.From != "org.test" || strings.Trim(r.Reason, `"`) != "p=quarantine" {
		t.Errorf("dmarc = %#v", rs[4])
	}
}

func TestStripOwn(t *testing.T) {
	msg := "Authentication-Results: MX.local.test; spf=pass smtp.mailfrom=forged.test\r\n" +
		"Received: from x\r\n" +
		"Authentication-Results: other.test;\r\n\tdkim=pass header.d=x.test\r\n" +
		"authentication-results: (comment) mx.local.test (more)\r\n\t; dmarc=pass\r\n" +
		"Authentication-Results: mx.local.test; garbage ((\r\n" +
		"Subject: s\r\n\r\n" +
		"Authentication-Results: mx.local.test; spf=pass\r\n"
	out, n := StripOwn([]byte(msg), "mx.local.test")
	want := "Received: from x\r\n" +
		"Authentication-Results: other.test;\r\n\tdkim=pass header.d=x.test\r\n" +
		"Subject: s\r\n\r\n" +
		"Authentication-Results: mx.local.test; spf=pass\r\n"
	if string(out) != want || n != 3 {
		t.Fatalf("StripOwn removed %d:\n%s\nwant 3:\n%s", n, out, want)
	}
	same := []byte("Subject: x\r\n\r\nbody\r\n")
	if out, n := StripOwn(same, "mx.local.test"); n != 0 || &out[0] != &same[0] {
		t.Fatalf("nothing to strip: copied or removed %d", n)
	}
}
