package ingress

import (
	"strings"
	"testing"
)

// goSMTPTexts are fragments of go-smtp v0.25.1's own reply texts.
var goSMTPTexts = []string{
	"Roger", "I'll make sure", "successfully done nothing", "Session reset",
	"Bye", "Go ahead", "OK: queued", "Cannot VRFY", "command not implemented",
	"Was expecting", "Missing MAIL FROM command.", "Missing RCPT TO command.",
	"Hello client.test", "introduce yourself", "not allowed during message transfer",
	"Unable to parse", "Unknown MAIL FROM argument", "Unknown RCPT TO argument",
}

// In a whole session, every reply a client gets is a text of ours: none
// of go-smtp's defaults gets through.
func TestNoLibraryReplyTexts(t *testing.T) {
	f := start(t, nil, nil)
	rc := rawDial(t, f.addr)
	steps := []struct {
		send string
		code int
		want string // a text of ours the reply must carry, if any
	}{
		{"EHLO client.test", 250, "250-mx.local.test"},
		{"HELP", 502, ""},
		{"NOOP", 250, "250 2.0.0 OK"},
		{"VRFY b@local.test", 252, ""},
		{"EXPN staff", 502, ""},
		{"RCPT TO:<b@local.test>", 502, ""},
		{"DATA", 502, ""},
		{"MAIL TO:<a@remote.test>", 501, ""},
		{"MAIL FROM:<a@remote.test> FOO=BAR", 500, ""},
		{"MAIL FROM:<a@remote.test>", 250, "250 2.1.0 Sender OK"},
		{"RCPT FROM:<b@local.test>", 501, ""},
		{"RCPT TO:<b@local.test> FOO=BAR", 500, ""},
		{"DATA", 502, ""},
		{"RCPT TO:<b@local.test>", 250, "250 2.1.5 Recipient OK"},
		{"DATA x", 501, ""},
		{"DATA", 354, ""},
		{"Subject: plain\r\n\r\nhello\r\n.", 250, ""},
		{"RSET", 250, "250 2.0.0 Reset OK"},
		{"HELO client.test", 250, "250 2.0.0 mx.local.test"},
		{"QUIT", 221, ""},
	}
	for _, s := range steps {
		code, text := rc.cmd(s.send)
		if code != s.code {
			t.Errorf("%q: got %q, want code %d", s.send, text, s.code)
		}
		if s.want != "" && !strings.Contains(text, s.want) {
			t.Errorf("%q: got %q, want %q", s.send, text, s.want)
		}
		for _, lib := range goSMTPTexts {
			if strings.Contains(text, lib) {
				t.Errorf("%q: go-smtp's text %q reached the client: %q", s.send, lib, text)
			}
		}
	}
}
