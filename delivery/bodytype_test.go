package delivery

import (
	"bytes"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/dsn"
	"github.com/mailroot/mailroot/internal/testutil"
)

var binaryMail = []byte("From: sender@origin.test\r\nSubject: bin\r\nContent-Type: application/octet-stream\r\n" +
	"Content-Transfer-Encoding: binary\r\n\r\n\x00\xff\r\n.\r\nbare\nlf\rcr\r\n")

// BINARYMIME mail is relayed with BDAT, byte for byte, to a host that
// offers CHUNKING and BINARYMIME.
func TestBINARYMIMERelayedWithBDAT(t *testing.T) {
	h := newHarness(t, "bin.test. MX 10 mx.bin.test.", "mx.bin.test. A 127.0.0.1")
	h.sink = testutil.StartSinkWith(t, "127.0.0.1:0", func(s *smtp.Server) { s.EnableBINARYMIME = true })
	h.cfg.Delivery.Port = h.sink.Port
	h.start(nil)
	env := newEnv("bin.test", "r@bin.test")
	env.BodyType, env.BodySize = "BINARYMIME", int64(len(binaryMail))
	h.publishOut(env, binaryMail)
	m := h.waitMails(1)[0]
	if !bytes.Equal(m.Data, binaryMail) || m.MailOpts.Body != smtp.BodyBinaryMIME {
		t.Errorf("arrived with BODY=%q as %q", m.MailOpts.Body, m.Data)
	}
	h.waitEmpty()
}

// To a host without BINARYMIME, binary mail cannot go (RFC 3030): the
// sender gets a non-delivery report with 5.6.3, the host no transaction.
func TestBINARYMIMEToHostWithoutItBounces(t *testing.T) {
	h := newHarness(t, "bin.test. MX 10 mx.bin.test.", "mx.bin.test. A 127.0.0.1")
	in := h.watchIn()
	h.start(nil)
	env := newEnv("bin.test", "r@bin.test")
	env.BodyType, env.BodySize = "BINARYMIME", int64(len(binaryMail))
	h.publishOut(env, binaryMail)
	checkNDR563(t, in.next(), "BINARYMIME")
	h.waitEmpty()
	if n := h.sink.Transactions(); n != 0 {
		t.Errorf("%d transactions at the host", n)
	}
}

// 8BITMIME mail to a host that does not offer 8BITMIME is refused with
// 5.6.3, not converted (see smtpclient.Client.Send).
func Test8BITMIMEToHostWithoutItBounces(t *testing.T) {
	h := newHarness(t, "old.test. MX 10 mx.old.test.", "mx.old.test. A 127.0.0.1")
	h.sink = testutil.StartSinkWith(t, "127.0.0.1:0", nil, "8BITMIME")
	h.cfg.Delivery.Port = h.sink.Port
	in := h.watchIn()
	h.start(nil)
	env := newEnv("old.test", "r@old.test")
	env.BodyType = "8BITMIME"
	h.publishOut(env, []byte("Subject: x\r\n\r\nj\xc3\xb6rg\r\n"))
	checkNDR563(t, in.next(), "8BITMIME")
	h.waitEmpty()
	if n := h.sink.Transactions(); n != 0 {
		t.Errorf("%d transactions at the host", n)
	}
}

func checkNDR563(t *testing.T, n notice, ext string) {
	t.Helper()
	if len(n.p.Report.Recipients) != 1 {
		t.Fatalf("report has %d recipients", len(n.p.Report.Recipients))
	}
	rc := n.p.Report.Recipients[0]
	if rc.Action != dsn.ActionFailed || rc.Status != "5.6.3" {
		t.Errorf("report: action %q status %q, want failed 5.6.3", rc.Action, rc.Status)
	}
	if !strings.Contains(n.p.Text, ext) {
		t.Errorf("report text does not name %s:\n%s", ext, n.p.Text)
	}
}
