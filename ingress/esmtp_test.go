package ingress

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
)

func decodeLast(t *testing.T, f *fixture) (*envelope.Envelope, []byte) {
	t.Helper()
	m := lastIn(t, f.js)
	env, err := envelope.Decode(m.Header)
	if err != nil {
		t.Fatal(err)
	}
	return env, m.Data
}

// BDAT chunks (RFC 3030 CHUNKING) are stored byte for byte, and with
// BODY=BINARYMIME bare CR and LF and NUL bytes are message content.
func TestBDATAndBinaryMIME(t *testing.T) {
	f := start(t, nil, nil)
	tests := []struct {
		name, body, chunks string
		binary             bool
	}{
		{"two text chunks", "Subject: bdat\r\n\r\nhello\r\nworld\r\n", "", false},
		{"binary chunk", "Subject: bin\r\n\r\n\x00\x01\n\r\xff.\n.\r\n", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := rawDial(t, f.addr)
			if code, _ := rc.cmd("EHLO client.test"); code != 250 {
				t.Fatal("EHLO")
			}
			mail := "MAIL FROM:<a@remote.test>"
			if tt.binary {
				mail += " BODY=BINARYMIME"
			}
			if code, text := rc.cmd(mail); code != 250 {
				t.Fatalf("MAIL: %s", text)
			}
			if code, text := rc.cmd("RCPT TO:<b@local.test>"); code != 250 {
				t.Fatalf("RCPT: %s", text)
			}
			half := len(tt.body) / 2
			rc.send(fmt.Sprintf("BDAT %d\r\n%s", half, tt.body[:half]))
			if code, text := rc.reply(); code != 250 {
				t.Fatalf("BDAT chunk: %s", text)
			}
			rc.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(tt.body)-half, tt.body[half:]))
			if code, text := rc.reply(); code != 250 || !strings.Contains(text, "queued as") {
				t.Fatalf("BDAT LAST: %d %s", code, text)
			}
			env, data := decodeLast(t, f)
			if !bytes.HasSuffix(data, []byte(tt.body)) {
				t.Errorf("stored %q, want it to end with %q", data, tt.body)
			}
			if tt.binary && env.BodyType != "BINARYMIME" {
				t.Errorf("body type %q", env.BodyType)
			}
			if code, _ := rc.cmd("NOOP"); code != 250 {
				t.Error("session unusable after BDAT")
			}
		})
	}
	t.Run("DATA refused for BINARYMIME", func(t *testing.T) {
		rc := rawDial(t, f.addr)
		rc.cmd("EHLO client.test")
		rc.cmd("MAIL FROM:<a@remote.test> BODY=BINARYMIME")
		rc.cmd("RCPT TO:<b@local.test>")
		if code, _ := rc.cmd("DATA"); code != 502 {
			t.Errorf("DATA after BODY=BINARYMIME: %d, want 502", code)
		}
	})
	t.Run("malformed BDAT", func(t *testing.T) {
		rc := rawDial(t, f.addr)
		rc.cmd("EHLO client.test")
		for _, c := range []string{"BDAT", "BDAT x", "BDAT 5 FIRST", "BDAT 99999999999"} {
			if code, _ := rc.cmd(c); code != 501 {
				t.Errorf("%s: %d, want 501", c, code)
			}
		}
	})
}

// SMTPUTF8 (RFC 6531): UTF-8 addresses are accepted with the parameter and
// refused (553 5.6.7) without it.
func TestSMTPUTF8Addresses(t *testing.T) {
	f := start(t, func(c *config.Config) { c.LocalDomains = append(c.LocalDomains, "bücher.test") }, nil)
	c := dial(t, f.addr)
	if err := c.Mail("jürgen@remote.test", nil); enhanced(err) != "553 5.6.7" {
		t.Errorf("UTF-8 sender without SMTPUTF8: %v", err)
	}
	if err := c.Mail("jürgen@remote.test", &smtp.MailOptions{UTF8: true}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"δοκιμή@bücher.test", "user@xn--bcher-kva.test"} {
		if err := c.Rcpt(r, nil); err != nil {
			t.Fatalf("RCPT %s: %v", r, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	_, _ = w.Write([]byte("Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\nhallo\r\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	env, _ := decodeLast(t, f)
	if !env.SMTPUTF8 || env.From != "jürgen@remote.test" || env.Rcpts[0].Addr != "δοκιμή@bücher.test" {
		t.Errorf("envelope %+v", env)
	}
	c = dial(t, f.addr)
	_ = c.Mail("a@remote.test", nil)
	if err := c.Rcpt("δοκιμή@bücher.test", nil); enhanced(err) != "553 5.6.7" {
		t.Errorf("UTF-8 recipient without SMTPUTF8: %v", err)
	}
}

// DSN parameters (RFC 3461) and REQUIRETLS (RFC 8689) are kept; REQUIRETLS
// needs TLS.
func TestDSNAndRequireTLS(t *testing.T) {
	f := start(t, nil, nil)
	rc := rawDial(t, f.addr)
	rc.cmd("EHLO client.test")
	if code, text := rc.cmd("MAIL FROM:<a@remote.test> REQUIRETLS"); code != 530 || !strings.Contains(text, "5.7.10") {
		t.Errorf("REQUIRETLS in plain text: %s", text)
	}
	c := dialStartTLS(t, f.addr)
	if err := c.Mail("a@remote.test", &smtp.MailOptions{RequireTLS: true, Return: smtp.DSNReturnHeaders, EnvelopeID: "env+2B1"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("b@local.test", &smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed}, OriginalRecipientType: smtp.DSNAddressTypeRFC822, OriginalRecipient: "b+x@local.test"}); err != nil {
		t.Fatal(err)
	}
	w, _ := c.Data()
	_, _ = w.Write([]byte("Subject: dsn\r\n\r\nx\r\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	env, _ := decodeLast(t, f)
	if !env.RequireTLS || env.Ret != "HDRS" || env.EnvID == "" || len(env.Rcpts[0].Notify) != 2 || !strings.EqualFold(env.Rcpts[0].ORcpt, "rfc822;b+2Bx@local.test") {
		t.Errorf("envelope %+v rcpt %+v", env, env.Rcpts[0])
	}
}

// STARTTLS (RFC 3207): TLS 1.2 at least; commands pipelined in plain text
// after STARTTLS are discarded; EHLO must be repeated; STARTTLS is refused
// in TLS, with arguments and after AUTH.
func TestSTARTTLSRules(t *testing.T) {
	f := start(t, nil, nil)
	t.Run("no TLS 1.1", func(t *testing.T) {
		rc := rawDial(t, f.addr)
		rc.cmd("EHLO client.test")
		if code, _ := rc.cmd("STARTTLS"); code != 220 {
			t.Fatal("STARTTLS refused")
		}
		tc := tls.Client(rc.c, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS11, MinVersion: tls.VersionTLS10})
		_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err == nil {
			t.Error("TLS 1.1 handshake succeeded")
		}
	})
	t.Run("injection discarded, EHLO first", func(t *testing.T) {
		rc := rawDial(t, f.addr)
		rc.cmd("EHLO client.test")
		// A man in the middle appends a command to the STARTTLS packet.
		rc.send("STARTTLS\r\nMAIL FROM:<evil@remote.test>\r\n")
		if code, _ := rc.reply(); code != 220 {
			t.Fatal("STARTTLS refused")
		}
		tc := tls.Client(rc.c, clientTLS())
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		tr := &rawConn{t: t, c: tc, r: bufio.NewReader(tc)}
		if code, text := tr.cmd("RCPT TO:<b@local.test>"); code != 503 {
			t.Errorf("RCPT after STARTTLS without EHLO: %d %s, want 503 (and no injected MAIL)", code, text)
		}
		if code, _ := tr.cmd("MAIL FROM:<a@remote.test>"); code != 503 {
			t.Errorf("MAIL before the new EHLO: %d, want 503", code)
		}
		if code, text := tr.cmd("EHLO client.test"); code != 250 || strings.Contains(text, "STARTTLS") {
			t.Errorf("EHLO in TLS: %d %s", code, text)
		}
		if code, _ := tr.cmd("STARTTLS"); code != 503 {
			t.Errorf("STARTTLS in TLS: %d, want 503", code)
		}
		if code, _ := tr.cmd("MAIL FROM:<a@remote.test>"); code != 250 {
			t.Errorf("MAIL after EHLO: %d", code)
		}
	})
	t.Run("arguments", func(t *testing.T) {
		rc := rawDial(t, f.addr)
		rc.cmd("EHLO client.test")
		if code, _ := rc.cmd("STARTTLS now"); code != 501 {
			t.Errorf("STARTTLS with an argument: %d, want 501", code)
		}
	})
}

// Implicit TLS (port 465, RFC 8314): the handshake comes first; a plain
// text client gets nothing and is dropped.
func TestImplicitTLS(t *testing.T) {
	f := trio(t, nil)
	addr := f.svc.SiteAddrs("smtps")[0]
	c := dialImplicit(t, addr)
	if st, ok := c.TLSConnectionState(); !ok || st.Version < tls.VersionTLS12 {
		t.Fatalf("TLS state %v %v", ok, st.Version)
	}
	if err := authPlain(c, "alice@local.test", testPassword); err != nil {
		t.Fatal(err)
	}
	if _, err := send(t, c, "alice@local.test", []string{"x@elsewhere.test"}, "Subject: 465\r\n\r\nbody\r\n"); err != nil {
		t.Fatal(err)
	}
	env, _ := decodeLast(t, f)
	if env.Site != "smtps" || env.TLS == "" {
		t.Errorf("site %q tls %q", env.Site, env.TLS)
	}
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_, _ = nc.Write([]byte("EHLO plain.test\r\n"))
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 100)
	n, _ := nc.Read(buf)
	if bytes.Contains(buf[:n], []byte("250")) {
		t.Errorf("plain text client on the implicit TLS port got %q", buf[:n])
	}
}
