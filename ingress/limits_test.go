package ingress

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/config"
)

// Every IIS limit, with its reply code; a 421 always closes the connection.
func TestLimits(t *testing.T) {
	f := start(t, func(c *config.Config) {
		c.Ingress.MaxMessageSize = 2000
		c.Ingress.MaxSessionSize = 3000
		c.Ingress.MaxMessagesPerConnection = 3
		c.Ingress.MaxRecipients = 3
		c.Ingress.MaxBadCommands = 3
		c.Ingress.MaxLineLength = 1000
		c.Ingress.MaxConnectionsPerIP = 3
		c.Ingress.MaxConnections = 5
		c.Ingress.Timeout = config.Duration(700 * time.Millisecond)
	}, nil)
	small := "Subject: s\r\n\r\n" + strings.Repeat("x", 700) + "\r\n"

	t.Run("message size", func(t *testing.T) {
		c := dial(t, f.addr)
		if err := c.Mail("a@remote.test", &smtp.MailOptions{Size: 2001}); enhanced(err) != "552 5.3.4" {
			t.Errorf("SIZE=2001: %v", err)
		}
		_, err := send(t, c, "a@remote.test", []string{"b@local.test"}, "Subject: big\r\n\r\n"+strings.Repeat(strings.Repeat("y", 98)+"\r\n", 21))
		if enhanced(err) != "552 5.3.4" {
			t.Errorf("2.1 kB message: %v, want 552 5.3.4", err)
		}
	})
	t.Run("recipients per message", func(t *testing.T) {
		c := dial(t, f.addr)
		_ = c.Mail("a@remote.test", nil)
		for i := 0; i < 3; i++ {
			if err := c.Rcpt(fmt.Sprintf("r%d@local.test", i), nil); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Rcpt("r4@local.test", nil); enhanced(err) != "452 4.5.3" {
			t.Errorf("4th recipient: %v, want 452 4.5.3", err)
		}
	})
	t.Run("session size", func(t *testing.T) {
		c := dial(t, f.addr)
		for i := 0; i < 2; i++ {
			if _, err := send(t, c, "a@remote.test", []string{"b@local.test"}, small+small); err != nil {
				t.Fatalf("message %d: %v", i+1, err)
			}
		}
		if err := c.Mail("a@remote.test", nil); enhanced(err) != "421 4.7.0" {
			t.Errorf("MAIL after %d bytes: %v, want 421 4.7.0", 3000, err)
		}
		if err := c.Noop(); err == nil {
			t.Error("connection still open after 421")
		}
	})
	t.Run("messages per connection", func(t *testing.T) {
		c := dial(t, f.addr)
		for i := 0; i < 3; i++ {
			if _, err := send(t, c, "a@remote.test", []string{"b@local.test"}, "Subject: n\r\n\r\nx\r\n"); err != nil {
				t.Fatalf("message %d: %v", i+1, err)
			}
		}
		if err := c.Mail("a@remote.test", nil); enhanced(err) != "421 4.7.0" {
			t.Errorf("4th MAIL: %v, want 421 4.7.0", err)
		}
	})
	t.Run("bad commands", func(t *testing.T) {
		rc := rawDial(t, f.addr)
		rc.cmd("EHLO client.test")
		rc.cmd("FROB")
		rc.cmd("MAIL TO:<x>")
		if code, text := rc.cmd("XYZZY"); code != 500 {
			t.Errorf("third bad command: %q, want 500", text)
		}
		if code, text := rc.reply(); code != 421 || !strings.Contains(text, "421 4.7.0") {
			t.Errorf("after the third bad command: %q, want 421 4.7.0", text)
		}
		if !rc.closed() {
			t.Error("connection open after too many bad commands")
		}
	})
	t.Run("line length", func(t *testing.T) {
		rc := rawDial(t, f.addr)
		rc.cmd("EHLO client.test")
		if code, text := rc.cmd("NOOP " + strings.Repeat("a", 1100)); code != 500 || !strings.Contains(text, "5.5.2") {
			t.Errorf("1.1 kB command: %s, want 500 5.5.2", text)
		}
		if code, _ := rc.cmd("NOOP"); code != 250 {
			t.Errorf("session unusable after a long line")
		}
	})
	t.Run("idle timeout", func(t *testing.T) {
		rc := rawDial(t, f.addr)
		if code, text := rc.reply(); code != 421 || !strings.Contains(text, "4.4.2") {
			t.Errorf("idle client: %s, want 421 4.4.2", text)
		}
		if !rc.closed() {
			t.Error("connection open after the timeout")
		}
	})
	t.Run("connections per IP", func(t *testing.T) {
		testutilWaitIdle(t, f)
		var open []*rawConn
		for i := 0; i < 3; i++ {
			open = append(open, rawDial(t, f.addr))
		}
		rc := rawDialAny(t, f.addr)
		if code, text := rc.reply(); code != 421 || !strings.Contains(text, "4.7.0") || !strings.Contains(text, "from your address") {
			t.Errorf("4th connection from one address: %s, want 421 4.7.0", text)
		}
		_ = open
	})
}

// The total cap counts every client; see TestMaxConnections for 421 at the
// limit, here the slot is given back when a connection closes.
func TestConnectionSlotsAreReturned(t *testing.T) {
	f := start(t, func(c *config.Config) { c.Ingress.MaxConnections = 1 }, nil)
	for i := 0; i < 3; i++ {
		c := dial(t, f.addr)
		if err := c.Quit(); err != nil {
			t.Fatal(err)
		}
		testutilWaitIdle(t, f)
	}
}
