package smtpclient

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/dsn"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
)

// send delivers env with body to sink over real TCP and returns the result.
func send(t *testing.T, sink *testutil.Sink, env *envelope.Envelope, body []byte) (Result, *Error) {
	t.Helper()
	var d net.Dialer
	c, herr := Dial(t.Context(), d.DialContext, sink.Addr, "sink.test", "sink.test["+sink.Addr+"]", Options{
		Hostname: "client.test", ConnectTimeout: 5 * time.Second, CommandTimeout: 10 * time.Second,
	})
	if herr != nil {
		t.Fatalf("dial: %v", herr)
	}
	defer c.Quit()
	return c.Send(t.Context(), env, func(context.Context) (io.ReadCloser, *Error) {
		return io.NopCloser(bytes.NewReader(body)), nil
	})
}

func testEnv(bodyType string, rcpts ...string) *envelope.Envelope {
	env := &envelope.Envelope{From: "sender@origin.test", BodyType: bodyType}
	for _, r := range rcpts {
		env.Rcpts = append(env.Rcpts, envelope.Rcpt{Addr: r})
	}
	return env
}

// binaryBody has everything DATA would mangle or refuse: a lone dot line,
// bare CR and LF, NUL and 8-bit bytes, and it spans several BDAT chunks.
func binaryBody() []byte {
	var b bytes.Buffer
	b.WriteString("Content-Type: application/octet-stream\r\n\r\n")
	for b.Len() < 2*chunkSize+12345 {
		b.WriteString("\r\n.\r\n..x\n\r\x00\xff\xfe")
		b.WriteByte(byte(b.Len()))
	}
	return b.Bytes()
}

// BINARYMIME goes out with BDAT, byte for byte, to a server offering
// CHUNKING and BINARYMIME (RFC 3030).
func TestBINARYMIMESentWithBDAT(t *testing.T) {
	sink := testutil.StartSinkWith(t, "127.0.0.1:0", func(s *smtp.Server) { s.EnableBINARYMIME = true })
	body := binaryBody()
	env := testEnv("BINARYMIME", "a@sink.test")
	env.BodySize = int64(len(body))
	res, herr := send(t, sink, env, body)
	if herr != nil || res.Errs[0] != nil {
		t.Fatalf("send: %v %v", herr, res.Errs)
	}
	m := sink.Mails()[0]
	if !bytes.Equal(m.Data, body) {
		t.Errorf("received %d bytes, differing from the %d sent", len(m.Data), len(body))
	}
	if m.MailOpts.Body != smtp.BodyBinaryMIME {
		t.Errorf("MAIL BODY=%q, want BINARYMIME", m.MailOpts.Body)
	}
}

// Without CHUNKING and BINARYMIME both, binary mail fails for good with
// 5.6.3 before MAIL: it cannot go out with DATA.
func TestBINARYMIMERefusedWithoutChunking(t *testing.T) {
	for name, sink := range map[string]*testutil.Sink{
		"no BINARYMIME": testutil.StartSink(t),
		"no CHUNKING":   testutil.StartSinkWith(t, "127.0.0.1:0", func(s *smtp.Server) { s.EnableBINARYMIME = true }, "CHUNKING"),
	} {
		t.Run(name, func(t *testing.T) {
			_, herr := send(t, sink, testEnv("BINARYMIME", "a@sink.test"), binaryBody())
			if herr == nil || !herr.Permanent || herr.Enhanced != "5.6.3" {
				t.Fatalf("got %v, want a permanent 5.6.3", herr)
			}
			if n := sink.Transactions(); n != 0 {
				t.Errorf("%d transactions reached the server", n)
			}
		})
	}
}

// 8BITMIME mail to a server without 8BITMIME is refused with 5.6.3, not
// converted; 7-bit mail still goes, without BODY=.
func Test8BITMIMERefusedWithout8BITMIME(t *testing.T) {
	sink := testutil.StartSinkWith(t, "127.0.0.1:0", nil, "8BITMIME")
	_, herr := send(t, sink, testEnv("8BITMIME", "a@sink.test"), []byte("Subject: x\r\n\r\nj\xc3\xb6rg\r\n"))
	if herr == nil || !herr.Permanent || herr.Enhanced != "5.6.3" {
		t.Fatalf("8-bit mail: got %v, want a permanent 5.6.3", herr)
	}
	res, herr := send(t, sink, testEnv("7BIT", "a@sink.test"), []byte("Subject: x\r\n\r\nplain\r\n"))
	if herr != nil || res.Errs[0] != nil {
		t.Fatalf("7-bit mail: %v %v", herr, res.Errs)
	}
	if m := sink.Mails()[0]; m.MailOpts.Body != "" || string(m.Data) != "Subject: x\r\n\r\nplain\r\n" {
		t.Errorf("7-bit mail arrived with BODY=%q as %q", m.MailOpts.Body, m.Data)
	}
}

// 8BITMIME mail goes with DATA (dot-stuffed on the wire, intact on
// arrival) to a server offering 8BITMIME.
func Test8BITMIMEWithDATA(t *testing.T) {
	sink := testutil.StartSink(t)
	body := []byte("Subject: x\r\n\r\n.\r\nj\xc3\xb6rg\r\n")
	res, herr := send(t, sink, testEnv("8BITMIME", "a@sink.test"), body)
	if herr != nil || res.Errs[0] != nil {
		t.Fatalf("send: %v %v", herr, res.Errs)
	}
	if m := sink.Mails()[0]; m.MailOpts.Body != smtp.Body8BitMIME || !bytes.Equal(m.Data, body) {
		t.Errorf("arrived with BODY=%q as %q", m.MailOpts.Body, m.Data)
	}
	if !res.DSN || !strings.HasPrefix(res.Reply, "250 ") {
		t.Errorf("result DSN %v reply %q", res.DSN, res.Reply)
	}
}

// The envelope stores ORCPT as "type;xtext"; the server receives the
// address the sender gave, decoded once and encoded once.
func TestORCPTEncodedOnce(t *testing.T) {
	sink := testutil.StartSink(t)
	env := testEnv("", "a@sink.test", "b@sink.test", "c@sink.test")
	env.SMTPUTF8 = true
	want := []struct{ typ, addr string }{
		{"rfc822", "a+b@example.test"},
		{"rfc822", "x=y@example.test"},
		{"utf-8", "jörg@example.test"},
	}
	for i, w := range want {
		env.Rcpts[i].ORcpt = w.typ + ";" + dsn.EncodeXtext(w.addr) // as ingress stores it
	}
	if _, herr := send(t, sink, env, []byte("Subject: x\r\n\r\nx\r\n")); herr != nil {
		t.Fatal(herr)
	}
	for i, o := range sink.Mails()[0].RcptOpts {
		if !strings.EqualFold(string(o.OriginalRecipientType), want[i].typ) || o.OriginalRecipient != want[i].addr {
			t.Errorf("ORCPT %d: %s;%s, want %s;%s", i, o.OriginalRecipientType, o.OriginalRecipient, want[i].typ, want[i].addr)
		}
	}
}

// Per-recipient refusals come back as typed errors; the others deliver.
func TestPerRecipientErrors(t *testing.T) {
	sink := testutil.StartSink(t)
	sink.RcptFunc = func(to string) error {
		switch to {
		case "gone@sink.test":
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		case "later@sink.test":
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
		}
		return nil
	}
	res, herr := send(t, sink, testEnv("", "gone@sink.test", "ok@sink.test", "later@sink.test"), []byte("Subject: x\r\n\r\nx\r\n"))
	if herr != nil {
		t.Fatal(herr)
	}
	if e := res.Errs[0]; e == nil || !e.Permanent || e.Code != 550 || e.Enhanced != "5.1.1" {
		t.Errorf("gone: %v", e)
	}
	if res.Errs[1] != nil {
		t.Errorf("ok: %v", res.Errs[1])
	}
	if e := res.Errs[2]; e == nil || e.Permanent || e.Code != 451 || e.Enhanced != "4.3.0" {
		t.Errorf("later: %v", e)
	}
	if m := sink.Mails(); len(m) != 1 || len(m[0].To) != 1 || m[0].To[0] != "ok@sink.test" {
		t.Errorf("delivered %+v", m)
	}
}
