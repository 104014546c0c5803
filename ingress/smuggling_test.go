package ingress

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
)

// The SMTP smuggling end-of-data variants (bare LF / bare CR around the
// dot): none ends the message. With bare_newline = reject (the default) the
// message is refused with 550 5.5.2 and the connection closed; for a
// bare_newline_normalize network it is accepted as one message whose
// smuggled part stays content. Either way no second message appears.
func TestSMTPSmugglingRefused(t *testing.T) {
	variants := map[string]string{
		"LF.LF":       "\n.\n",
		"CRLF.LF":     "\r\n.\n",
		"LF.CRLF":     "\n.\r\n",
		"CR.CR":       "\r.\r",
		"CRLF.CR":     "\r\n.\r",
		"CR.CRLF":     "\r.\r\n",
		"CRLF.CRCRLF": "\r\n.\r\r\n",
	}
	for _, mode := range []string{"reject", "normalize"} {
		f := start(t, func(c *config.Config) {
			if mode == "normalize" {
				c.Ingress.BareNewlineNormalize = []string{"127.0.0.0/8"}
			}
		}, nil)
		for name, end := range variants {
			t.Run(mode+" "+name, func(t *testing.T) {
				before := subjectCount(t, f.js, bus.SubjIn)
				rc := rawData(t, f.addr)
				rc.send("Subject: outer\r\n\r\nhello" + end +
					"MAIL FROM:<admin@local.test>\r\nRCPT TO:<victim@local.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n")
				code, text := rc.reply()
				switch mode {
				case "reject":
					if code != 550 || !strings.Contains(text, "5.5.2 Error: bare <") {
						t.Fatalf("smuggling attempt: %q, want 550 5.5.2 bare newline", text)
					}
					if !rc.closed() {
						t.Error("connection open after a bare newline")
					}
					if n := subjectCount(t, f.js, bus.SubjIn); n != before {
						t.Errorf("%d messages stored, want none", n-before)
					}
				case "normalize":
					if code != 250 {
						t.Fatalf("normalised message: %q", text)
					}
					if n := subjectCount(t, f.js, bus.SubjIn); n != before+1 {
						t.Fatalf("%d messages stored, want exactly one", n-before)
					}
					_, data := decodeLast(t, f)
					if !bytes.Contains(data, []byte("Subject: smuggled")) || bytes.Contains(data, []byte("\n.\n")) || bytes.Contains(data, []byte("\r.\r")) {
						t.Errorf("stored:\n%q", data)
					}
					if bytes.Contains(data, []byte("\r\n.\r\n")) {
						// A lone dot line in the content is sent dot-stuffed
						// later; it must not be raw bare-newline material.
						for _, l := range bytes.Split(data, []byte("\r\n")) {
							if bytes.ContainsAny(l, "\r\n") {
								t.Errorf("line with a bare newline kept: %q", l)
							}
						}
					}
				}
			})
		}
	}
}

// Bare LF in a command: 550 5.5.2 and disconnect (reject), or treated as
// CRLF for a normalize network.
func TestBareNewlineInCommand(t *testing.T) {
	f := start(t, nil, nil)
	rc := rawDial(t, f.addr)
	rc.send("EHLO client.test\n")
	if code, text := rc.reply(); code != 550 || !strings.Contains(text, "5.5.2 Error: bare <LF> received") {
		t.Errorf("EHLO with bare LF: %q", text)
	}
	if !rc.closed() {
		t.Error("connection open after a bare LF command")
	}
	g := start(t, func(c *config.Config) { c.Ingress.BareNewline = config.BareNewlineNormalize }, nil)
	rc = rawDial(t, g.addr)
	rc.send("EHLO client.test\n")
	if code, text := rc.reply(); code != 250 {
		t.Errorf("EHLO with bare LF, normalize: %q", text)
	}
	rc.send("MAIL FROM:<a@remote.test>\nRCPT TO:<b@local.test>\nDATA\n")
	for _, want := range []int{250, 250, 354} {
		if code, text := rc.reply(); code != want {
			t.Fatalf("%q, want %d", text, want)
		}
	}
	rc.send("Subject: lf\n\nbody\n.\r\n")
	// "body\n" then ".\r\n": the dot follows a bare LF, so it is content;
	// the message ends only at a CRLF.CRLF.
	rc.send("more\r\n.\r\n")
	if code, text := rc.reply(); code != 250 {
		t.Fatalf("%q", text)
	}
	_, data := decodeLast(t, g)
	if !bytes.HasSuffix(data, []byte("Subject: lf\r\n\r\nbody\r\n.\r\nmore\r\n")) {
		t.Errorf("stored %q", data)
	}
}

// BDAT content with a bare LF outside BINARYMIME is refused too.
func TestBareNewlineInBDAT(t *testing.T) {
	f := start(t, nil, nil)
	rc := rawDial(t, f.addr)
	rc.cmd("EHLO client.test")
	rc.cmd("MAIL FROM:<a@remote.test>")
	rc.cmd("RCPT TO:<b@local.test>")
	body := "Subject: x\r\n\r\nbare\n.\nend\r\n"
	rc.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(body), body))
	if code, text := rc.reply(); code != 550 || !strings.Contains(text, "5.5.2") {
		t.Errorf("BDAT with bare LF: %q", text)
	}
}
