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
		if code, text := rc.cmd("EHLO client.test"); code != 250 || !strings.Contains(text, "client.test") {
			t.Errorf("EHLO after the refused %q: %q", line, text)
		}
	}
}
