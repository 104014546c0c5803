package smtpclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
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

// since returns the client's writes after the first n.
func (w *wire) since(n int) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.writes[n:]...)
}

func (w *wire) nWrites() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.writes)
}

func refuse(code int, enhanced smtp.EnhancedCode, names ...string) func(string) error {
	return func(addr string) error {
		for _, n := range names {
			if addr == n {
				return &smtp.SMTPError{Code: code, EnhancedCode: enhanced, Message: "no"}
			}
		}
		return nil
	}
}

// With PIPELINING (RFC 2920) a transaction is two writes: MAIL, every
// RCPT and DATA together (with RSET first on a reused session), then the
// message with its end. A refused recipient among them is answered on
// its own, and the others get the message.
func TestPipelinedTransaction(t *testing.T) {
	sink := testutil.StartSink(t)
	sink.RcptFunc = refuse(550, smtp.EnhancedCode{5, 1, 1}, "no@sink.test")
	p := testPool(t, lim)
	var w wire
	c := dialSink(t, &w, sink, "sink.test", "client.test")
	body := "Subject: x\r\n\r\n.dot\r\nbody\r\n"
	for i, first := range []string{"MAIL FROM:", "RSET\r\nMAIL FROM:"} {
		if i > 0 {
			if c = p.Get(t.Context(), dest(sink, "sink.test", "client.test"), false); c == nil {
				t.Fatal("no idle session")
			}
		}
		mark := w.nWrites()
		res, herr := c.Send(t.Context(), testEnv("", "a@sink.test", "no@sink.test", "b@sink.test"), func(context.Context) (io.ReadCloser, *Error) {
			return io.NopCloser(strings.NewReader(body)), nil
		})
		if herr != nil || res.Errs[0] != nil || res.Errs[2] != nil {
			t.Fatalf("message %d: %v %v", i, herr, res.Errs)
		}
		if e := res.Errs[1]; e == nil || e.Code != 550 || !e.Permanent {
			t.Errorf("message %d: refused recipient got %v, want its 550", i, e)
		}
		writes := w.since(mark)
		wantCmds := first + "<sender@origin.test>\r\nRCPT TO:<a@sink.test>\r\nRCPT TO:<no@sink.test>\r\nRCPT TO:<b@sink.test>\r\nDATA\r\n"
		if len(writes) != 2 || !strings.HasPrefix(writes[0], first) || strings.Count(writes[0], "\r\n") != strings.Count(wantCmds, "\r\n") ||
			!strings.HasSuffix(writes[0], "DATA\r\n") || writes[1] != "Subject: x\r\n\r\n..dot\r\nbody\r\n.\r\n" {
			t.Errorf("message %d: writes %q, want the commands in one (%q) and the stuffed content with its end in another", i, writes, wantCmds)
		}
		p.Put(c)
	}
	mails := sink.Mails()
	if len(mails) != 2 {
		t.Fatalf("%d mails, want 2", len(mails))
	}
	for _, m := range mails {
		if strings.Join(m.To, ",") != "a@sink.test,b@sink.test" || string(m.Data) != body {
			t.Errorf("mail to %v: %q", m.To, m.Data)
		}
	}
}

// Pipelined, the DATA sent along with recipients that were all refused,
// or after a refused MAIL, is answered with an error and read; the
// session stays in step and carries the next message.
func TestPipelinedRefusalsKeepSessionInStep(t *testing.T) {
	sink := testutil.StartSink(t)
	sink.MailFunc = refuse(550, smtp.EnhancedCode{5, 7, 1}, "bad@origin.test")
	sink.RcptFunc = refuse(550, smtp.EnhancedCode{5, 1, 1}, "no@sink.test", "nobody@sink.test")
	var w wire
	c := dialSink(t, &w, sink, "sink.test", "client.test")
	defer c.Quit()
	opened := 0
	bodyFn := func(context.Context) (io.ReadCloser, *Error) {
		opened++
		return io.NopCloser(strings.NewReader("Subject: ok\r\n\r\nok\r\n")), nil
	}
	res, herr := c.Send(t.Context(), testEnv("", "no@sink.test", "nobody@sink.test"), bodyFn)
	if herr != nil || res.Errs[0] == nil || res.Errs[1] == nil || res.Errs[0].Code != 550 {
		t.Fatalf("all recipients refused: %v %v", herr, res.Errs)
	}
	env := testEnv("", "a@sink.test")
	env.From = "bad@origin.test"
	res, herr = c.Send(t.Context(), env, bodyFn)
	if herr != nil || res.Errs[0] == nil || res.Errs[0].Code != 550 || res.Errs[0].Enhanced != "5.7.1" {
		t.Fatalf("refused sender: %v %v, want the MAIL's 550 5.7.1 for the recipient", herr, res.Errs)
	}
	if opened != 0 {
		t.Errorf("body opened %d times with no recipient accepted", opened)
	}
	res, herr = c.Send(t.Context(), testEnv("", "a@sink.test"), bodyFn)
	if herr != nil || res.Errs[0] != nil {
		t.Fatalf("next message on the session: %v %v", herr, res.Errs)
	}
	if m := sink.Mails(); len(m) != 1 || m[0].To[0] != "a@sink.test" {
		t.Errorf("mails %+v, want the last message only", m)
	}
	if w.count("DATA") != 3 {
		t.Errorf("%d DATA, want 3 (pipelined with each group)", w.count("DATA"))
	}
}

// Without PIPELINING every command waits for the reply before it: no
// RCPT after a refused MAIL, no DATA when every recipient was refused.
func TestLockstepWithoutPipelining(t *testing.T) {
	sink := testutil.StartSinkWith(t, "127.0.0.1:0", nil, "PIPELINING")
	sink.RcptFunc = refuse(550, smtp.EnhancedCode{5, 1, 1}, "no@sink.test")
	var w wire
	c := dialSink(t, &w, sink, "sink.test", "client.test")
	defer c.Quit()
	mark := w.nWrites()
	res, herr := c.Send(t.Context(), testEnv("", "no@sink.test"), func(context.Context) (io.ReadCloser, *Error) {
		t.Error("body opened with no recipient accepted")
		return nil, nil
	})
	if herr != nil || res.Errs[0] == nil || res.Errs[0].Code != 550 {
		t.Fatalf("refused recipient: %v %v", herr, res.Errs)
	}
	got := w.since(mark)
	if len(got) != 3 || !strings.HasPrefix(got[0], "MAIL FROM:") || got[1] != "RCPT TO:<no@sink.test>\r\n" || got[2] != "RSET\r\n" {
		t.Errorf("writes %q, want MAIL, RCPT and RSET one by one, no DATA", got)
	}
	mark = w.nWrites()
	res, herr = c.Send(t.Context(), testEnv("", "a@sink.test"), func(context.Context) (io.ReadCloser, *Error) {
		return io.NopCloser(strings.NewReader("Subject: ok\r\n\r\nok\r\n")), nil
	})
	if herr != nil || res.Errs[0] != nil {
		t.Fatalf("send: %v %v", herr, res.Errs)
	}
	if got := w.since(mark); len(got) != 4 || got[2] != "DATA\r\n" {
		t.Errorf("writes %q, want MAIL, RCPT, DATA and the content one by one", got)
	}
}

// STARTTLS goes on whatever the certificate, and the session says whether
// it verified: against the roots given, for the host name dialled.
func TestTLSVerification(t *testing.T) {
	cert := testutil.SelfSigned(t, "mx.sink.test")
	sink := testutil.StartSinkWith(t, "127.0.0.1:0", func(s *smtp.Server) {
		s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	})
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	trusted := x509.NewCertPool()
	trusted.AddCert(leaf)
	for _, tc := range []struct {
		name     string
		host     string
		roots    *x509.CertPool
		verified bool
		why      string
	}{
		{"trusted, right name", "mx.sink.test", trusted, true, ""},
		{"not trusted", "mx.sink.test", nil, false, "unknown authority"},
		{"trusted, other name", "mx.other.test", trusted, false, "mx.other.test"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d net.Dialer
			c, herr := Dial(t.Context(), d.DialContext, sink.Addr, tc.host, tc.host+"["+sink.Addr+"]", Options{
				Hostname: "client.test", ConnectTimeout: 5 * time.Second, CommandTimeout: 10 * time.Second, Roots: tc.roots,
			})
			if herr != nil {
				t.Fatalf("dial: %v", herr)
			}
			defer c.Quit()
			if c.Verified() != tc.verified || !strings.Contains(c.VerifyError(), tc.why) {
				t.Errorf("verified %v (%q), want %v (%s)", c.Verified(), c.VerifyError(), tc.verified, tc.why)
			}
			want := " unverified: "
			if tc.verified {
				want = " verified"
			}
			if !strings.HasPrefix(c.TLS(), "TLS 1.") || !strings.Contains(c.TLS(), want) {
				t.Errorf("TLS() = %q, want the version and %q", c.TLS(), want)
			}
			if res, herr := c.Send(t.Context(), testEnv("", "a@sink.test"), func(context.Context) (io.ReadCloser, *Error) {
				return io.NopCloser(strings.NewReader("Subject: x\r\n\r\nx\r\n")), nil
			}); herr != nil || res.Errs[0] != nil {
				t.Errorf("send over the session: %v %v", herr, res.Errs)
			}
		})
	}
}

// Options.Verify replaces the WebPKI check (as DANE does), and the session
// keeps the verifier's name in its Dest: a Pool hands it only to a request
// for the same verifier, never to one checked another way.
func TestCustomVerifierAndPoolKey(t *testing.T) {
	cert := testutil.SelfSigned(t, "mx.sink.test")
	sink := testutil.StartSinkWith(t, "127.0.0.1:0", func(s *smtp.Server) {
		s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	})
	var called int
	var d net.Dialer
	c, herr := Dial(t.Context(), d.DialContext, sink.Addr, "mx.sink.test", "mx.sink.test["+sink.Addr+"]", Options{
		Hostname: "client.test", ConnectTimeout: 5 * time.Second, CommandTimeout: 10 * time.Second,
		Verify: func(host string, st tls.ConnectionState) string {
			called++
			if host != "mx.sink.test" || len(st.PeerCertificates) == 0 {
				return "wrong host or no certificate"
			}
			return ""
		},
		Verifier: "test",
	})
	if herr != nil {
		t.Fatalf("dial: %v", herr)
	}
	if called != 1 || !c.Verified() {
		t.Fatalf("verifier called %d times, verified %v (%s): the self-signed certificate should pass it", called, c.Verified(), c.VerifyError())
	}
	p := testPool(t, lim)
	p.Put(c)
	base := Dest{Addr: sink.Addr, Host: "mx.sink.test", Hostname: "client.test"}
	if got := p.Get(t.Context(), base, true); got != nil {
		t.Fatalf("a session verified by %q was handed to a WebPKI request", "test")
	}
	base.Verifier = "test"
	got := p.Get(t.Context(), base, true)
	if got == nil {
		t.Fatal("the session is not found under its own verifier")
	}
	if !got.Verified() {
		t.Errorf("cached session lost its verification")
	}
	got.Quit()
}
