package ingress

import (
	"strings"
	"testing"
)

// noControl fails when a reply holds a control character (the lines of a
// multi-line reply are joined by "\n").
func noControl(t *testing.T, what, text string) {
	t.Helper()
	for line := range strings.SplitSeq(text, "\n") {
		if strings.ContainsFunc(line, isControl) {
			t.Errorf("%s: reply %q echoes a control character", what, line)
		}
	}
}

// An EHLO or HELO argument with a control character is refused with
// 501 5.5.2: go-smtp would echo it in its 250. The session goes on.
func TestHeloControlCharacters(t *testing.T) {
	f := start(t, nil, nil)
	for _, line := range []string{
		"EHLO client\x00.test",
		"HELO client\x00.test",
		"EHLO client.test\x00",
		"EHLO \x1b[2Jclient.test",
		"HELO client\x7f.test",
		"EHLO client.test\tjunk",
	} {
		rc := rawDial(t, f.addr)
		code, text := rc.cmd(line)
		if code != 501 || !strings.HasPrefix(text, "501 5.5.2 ") {
			t.Errorf("%q: %q, want 501 5.5.2", line, text)
		}
		noControl(t, line, text)
		if code, text := rc.cmd("EHLO client.test"); code != 250 {
			t.Errorf("EHLO after the refused %q: %q", line, text)
		}
	}
}

// A domain that is no domain name — a final dot, an empty label, a stray
// character — is refused in MAIL FROM with 501 5.1.7 and in RCPT TO with
// 501 5.1.3, from a relay network too: "victim@local.test.." was taken
// with a 250 and then matched no domain.
func TestBadDomainsRefused(t *testing.T) {
	f := start(t, nil, nil) // 127.0.0.0/8 may relay: only the syntax refuses
	bad := []string{"local.test.", "local.test..", "local..test", ".local.test", "-local.test", "local_test!", "local.test/x"}
	rc := rawDial(t, f.addr)
	rc.cmd("EHLO client.test")
	for _, d := range bad {
		if code, text := rc.cmd("MAIL FROM:<a@" + d + ">"); code != 501 || !strings.HasPrefix(text, "501 5.1.7 ") {
			t.Errorf("MAIL FROM:<a@%s>: %q, want 501 5.1.7", d, text)
		}
	}
	if code, text := rc.cmd("MAIL FROM:<a@remote.test>"); code != 250 {
		t.Fatalf("MAIL: %s", text)
	}
	for _, d := range bad {
		if code, text := rc.cmd("RCPT TO:<victim@" + d + ">"); code != 501 || !strings.HasPrefix(text, "501 5.1.3 ") {
			t.Errorf("RCPT TO:<victim@%s>: %q, want 501 5.1.3", d, text)
		}
	}
	if code, text := rc.cmd("RCPT TO:<victim@local.test>"); code != 250 {
		t.Errorf("a good recipient after the bad ones: %s", text)
	}
}
