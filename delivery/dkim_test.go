package delivery

import (
	"bytes"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/config"
	dkimkeys "github.com/mailroot/mailroot/internal/dkim"
	"github.com/mailroot/mailroot/internal/testutil"
)

// A key made under data_dir/dkim signs, with no configuration, the mail
// of its From: domain as it leaves over SMTP: the sink gets one signature
// per key, which verifies against the key published in the test's DNS
// server, and SIZE= counts it. A retry after a 451 carries one signature
// again, not two; mail of another From: domain leaves unsigned.
func TestDKIMSignedOnceOnTheWayOut(t *testing.T) {
	h := newHarness(t, "dkim.test. MX 10 mx.dkim.test.", "mx.dkim.test. A 127.0.0.1")
	k, err := dkimkeys.Generate(dkimkeys.Dir(h.cfg.DataDir), "origin.test", dkimkeys.DefaultSelector, dkimkeys.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	h.dns.Add(t, k.Zone())
	h.cfg.Delivery.Retry = []config.Duration{config.Duration(100 * time.Millisecond)}
	var refused atomic.Bool // the signed mail's first attempt gets a 451
	h.sink.DataFunc = func(_ int, m *testutil.Mail) error {
		if m.To[0] == "a@dkim.test" && refused.CompareAndSwap(false, true) {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again"}
		}
		return nil
	}
	h.start(nil)
	h.publishOut(newEnv("dkim.test", "a@dkim.test"), sampleBody)
	other := []byte("From: x@elsewhere.test\r\nSubject: unsigned\r\n\r\nhi\r\n")
	h.publishOut(newEnv("dkim.test", "b@dkim.test"), other)

	mails := h.waitMails(2)
	for _, m := range mails {
		if m.To[0] == "b@dkim.test" {
			if !bytes.Equal(m.Data, other) {
				t.Errorf("mail of a domain without a key changed: %q", m.Data)
			}
			continue
		}
		if n := bytes.Count(m.Data, []byte("DKIM-Signature:")); n != 1 {
			t.Errorf("%d DKIM-Signature fields after a retry, want 1:\n%s", n, m.Data)
		}
		if !bytes.HasSuffix(m.Data, sampleBody) {
			t.Errorf("message under the signature changed:\n%q", m.Data)
		}
		if m.MailOpts.Size != int64(len(m.Data)) {
			t.Errorf("SIZE=%d, the message has %d bytes", m.MailOpts.Size, len(m.Data))
		}
		vs, err := dkim.VerifyWithOptions(bytes.NewReader(m.Data), &dkim.VerifyOptions{LookupTXT: h.dns.LookupTXT})
		if err != nil || len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != "origin.test" {
			t.Errorf("verification: %v %+v", err, vs)
		}
		if !strings.Contains(string(m.Data), "s="+dkimkeys.DefaultSelector) {
			t.Errorf("signature does not name selector %s", dkimkeys.DefaultSelector)
		}
	}
	h.waitEmpty()
	if n := h.sink.Transactions(); n != 3 {
		t.Errorf("%d transactions, want 3 (the signed mail retried once)", n)
	}
}

// [[dkim]] blocks sign: keys kept outside data_dir/dkim, two selectors
// of one domain at once, each with its own header list, and they alone
// sign for their domain (the key under data_dir/dkim for it does not).
func TestDKIMBlocksSign(t *testing.T) {
	h := newHarness(t, "dkim.test. MX 10 mx.dkim.test.", "mx.dkim.test. A 127.0.0.1")
	elsewhere := t.TempDir()
	var blocks []config.DKIM
	for _, k := range []struct{ sel, alg string }{{"ed", dkimkeys.Ed25519}, {"rsa", dkimkeys.RSA}} {
		key, err := dkimkeys.Generate(elsewhere, "origin.test", k.sel, k.alg)
		if err != nil {
			t.Fatal(err)
		}
		h.dns.Add(t, key.Zone())
		blocks = append(blocks, config.DKIM{Domain: "origin.test", Selector: k.sel, KeyFile: dkimkeys.KeyPath(elsewhere, "origin.test", k.sel)})
	}
	blocks[1].Headers = []string{"From", "From", "Subject"}
	if _, err := dkimkeys.Generate(dkimkeys.Dir(h.cfg.DataDir), "origin.test", dkimkeys.DefaultSelector, dkimkeys.Ed25519); err != nil {
		t.Fatal(err)
	}
	h.cfg.DKIM = blocks
	h.start(nil)
	h.publishOut(newEnv("dkim.test", "a@dkim.test"), sampleBody)
	m := h.waitMails(1)[0]
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(m.Data), &dkim.VerifyOptions{LookupTXT: h.dns.LookupTXT})
	if err != nil || len(vs) != 2 {
		t.Fatalf("verification: %v, %d signatures, want 2:\n%s", err, len(vs), m.Data)
	}
	for _, v := range vs {
		if v.Err != nil || v.Domain != "origin.test" {
			t.Errorf("signature %+v", v)
		}
	}
	for _, want := range []string{"s=ed;", "s=rsa;", "h=From:From:Subject;"} {
		if !bytes.Contains(bytes.ReplaceAll(m.Data, []byte("\r\n\t"), nil), []byte(want)) {
			t.Errorf("signatures lack %q:\n%s", want, m.Data)
		}
	}
	if bytes.Contains(m.Data, []byte("s="+dkimkeys.DefaultSelector+";")) {
		t.Error("the data_dir key signed a domain that has [[dkim]] blocks")
	}
}

// [[dkim]] blocks changed in the live configuration sign the mail that
// follows, without a restart; a change whose key file cannot be read
// keeps the keys in use, so the domain's mail stays signed.
func TestDKIMBlocksLive(t *testing.T) {
	h := newHarness(t, "dkim.test. MX 10 mx.dkim.test.", "mx.dkim.test. A 127.0.0.1")
	dir := t.TempDir()
	block := func(sel string) config.DKIM {
		key, err := dkimkeys.Generate(dir, "origin.test", sel, dkimkeys.Ed25519)
		if err != nil {
			t.Fatal(err)
		}
		h.dns.Add(t, key.Zone())
		return config.DKIM{Domain: "origin.test", Selector: sel, KeyFile: dkimkeys.KeyPath(dir, "origin.test", sel)}
	}
	first, second := block("first"), block("second")
	h.cfg.DKIM = []config.DKIM{first}
	h.start(nil)
	selectors := func(rcpt string) string {
		t.Helper()
		h.publishOut(newEnv("dkim.test", rcpt), sampleBody)
		var m *testutil.Mail
		testutil.WaitFor(t, 10*time.Second, "mail to "+rcpt, func() bool {
			for _, x := range h.sink.Mails() {
				if x.To[0] == rcpt {
					m = &x
					return true
				}
			}
			return false
		})
		vs, err := dkim.VerifyWithOptions(bytes.NewReader(m.Data), &dkim.VerifyOptions{LookupTXT: h.dns.LookupTXT})
		if err != nil {
			t.Fatal(err)
		}
		var sels []string
		for _, v := range vs {
			if v.Err != nil {
				t.Errorf("signature of %s: %v", rcpt, v.Err)
			}
			for _, f := range strings.Split(strings.ReplaceAll(string(m.Data), "\r\n\t", ""), ";") {
				if sel, ok := strings.CutPrefix(strings.TrimSpace(f), "s="); ok && len(vs) == 1 {
					sels = append(sels, sel)
				}
			}
		}
		return strings.Join(sels, ",")
	}
	if got := selectors("a@dkim.test"); got != "first" {
		t.Fatalf("before the change: signed by %q, want first", got)
	}
	cfg := h.cfg
	cfg.DKIM = []config.DKIM{second}
	h.svc.Apply(cfg)
	if got := selectors("b@dkim.test"); got != "second" {
		t.Errorf("after the live change: signed by %q, want second", got)
	}
	bad := h.cfg
	bad.DKIM = []config.DKIM{{Domain: "origin.test", Selector: "gone", KeyFile: dir + "/no-such.key"}}
	h.svc.Apply(bad)
	if got := selectors("c@dkim.test"); got != "second" {
		t.Errorf("after a change with an unreadable key: signed by %q, want second (kept)", got)
	}
}
