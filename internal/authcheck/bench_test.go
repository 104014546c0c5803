package authcheck

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/mailroot/mailroot/internal/resolver"
	"github.com/mailroot/mailroot/internal/testutil"
)

// rsaRecord is the TXT record of an RSA DKIM key, split in strings of
// 255 bytes as a zone file has it.
func rsaRecord(t testing.TB, k *rsa.PrivateKey, selector, domain string) string {
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	v := "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
	var parts []string
	for len(v) > 255 {
		parts, v = append(parts, `"`+v[:255]+`"`), v[255:]
	}
	parts = append(parts, `"`+v+`"`)
	return fmt.Sprintf("%s._domainkey.%s. TXT %s", selector, domain, strings.Join(parts, " "))
}

// BenchmarkCheck is the whole verdict on one 4 KiB message (SPF of MAIL
// FROM and HELO, two DKIM signatures, RSA-2048 and Ed25519, DMARC) with
// the DNS answers in the resolver's cache, then the header and the
// removal of forged fields: the CPU the checks add to a message.
// cpu-us/msg is the process's CPU time per message.
func BenchmarkCheck(b *testing.B) {
	ed := testutil.NewDKIMKey(b, "org.test", "ed")
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	d := testutil.StartDNS(b, ed.Record(), rsaRecord(b, rk, "rsa", "org.test"),
		`org.test. TXT "v=spf1 ip4:198.51.100.0/24 ip4:192.0.2.0/24 -all"`,
		`client.example. TXT "v=spf1 ip4:192.0.2.10 -all"`,
		`_dmarc.org.test. TXT "v=DMARC1; p=reject; rua=mailto:d@org.test"`)
	c := &Checker{Resolver: &resolver.Resolver{Servers: []string{d.Addr}, Timeout: time.Second, CacheSize: 100}}
	body := strings.Repeat(strings.Repeat("b", 76)+"\r\n", 4096/78)
	msg := ed.Sign(b, "From: Someone <someone@org.test>\r\nTo: rcpt@local.test\r\nSubject: bench\r\nMessage-ID: <1@org.test>\r\n\r\n"+body)
	var signed bytes.Buffer
	if err := dkim.Sign(&signed, bytes.NewReader(msg), &dkim.SignOptions{Domain: "org.test", Selector: "rsa", Signer: rk}); err != nil {
		b.Fatal(err)
	}
	msg = signed.Bytes()
	in := Input{IP: clientIP, Helo: "client.example", MailFrom: "bounce@org.test"}
	run := func() Verdict {
		in.Message, in.Header = bytes.NewReader(msg), HeaderSection(msg)
		v := c.Check(context.Background(), in)
		_ = Header("mx.local.test", v)
		_, _ = StripOwn(msg, "mx.local.test")
		return v
	}
	if v := run(); v.DMARC.Result != "pass" || len(v.DKIM) != 2 || v.DKIM[0].Result != "pass" || v.DKIM[1].Result != "pass" || v.SPF.Result != "pass" {
		b.Fatalf("verdict %+v", v)
	}
	queries := d.Queries()
	b.ReportAllocs()
	cpu0 := testutil.ProcessCPU()
	for b.Loop() {
		run()
	}
	b.ReportMetric(float64((testutil.ProcessCPU()-cpu0).Microseconds())/float64(b.N), "cpu-us/msg")
	if d.Queries() != queries {
		b.Fatalf("%d DNS queries in the loop: answers not cached", d.Queries()-queries)
	}
}
