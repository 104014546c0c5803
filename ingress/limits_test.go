package ingress

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/bus"
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
	t.Run("message size over BDAT chunks", func(t *testing.T) {
		// The chunk that passes the limit is read and dropped once: the
		// command after it is a command again.
		rc := rawDial(t, f.addr)
		rc.cmd("EHLO client.test")
		rc.cmd("MAIL FROM:<a@remote.test>")
		rc.cmd("RCPT TO:<b@local.test>")
		chunk := strings.Repeat("z", 1200)
		rc.send("BDAT 1200\r\n" + chunk)
		if code, text := rc.reply(); code != 250 {
			t.Fatalf("first chunk: %q", text)
		}
		rc.send("BDAT 1200 LAST\r\n" + chunk)
		if code, text := rc.reply(); code != 552 || !strings.HasPrefix(text, "552 5.3.4") {
			t.Errorf("chunk past the limit: %q, want 552 5.3.4", text)
		}
		if code, text := rc.cmd("NOOP"); code != 250 {
			t.Errorf("NOOP after the refused chunk: %q", text)
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

// trickle writes one byte to c every interval until a write fails or the
// test ends: a client holding its connection with as little as it can.
func trickle(t *testing.T, c net.Conn, interval time.Duration) {
	stop, done := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(stop); <-done })
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := c.Write([]byte("x")); err != nil {
				return
			}
		}
	}()
}

// Each request has a deadline, not each read (Postfix's
// smtpd_per_request_deadline): a command line trickled a byte at a time
// is cut off at the timeout, after STARTTLS too; message content must keep
// to the minimum data rate, and a message sent at a steady rate is taken
// however long it takes. Every case outlasts the timeout several times.
func TestRequestDeadlines(t *testing.T) {
	const timeout = 500 * time.Millisecond
	f := start(t, func(c *config.Config) { c.Ingress.Timeout = config.Duration(timeout) }, nil)
	cutOff := func(t *testing.T, rc *rawConn, want ...string) {
		t.Helper()
		for _, w := range want {
			if code, text := rc.reply(); !strings.HasPrefix(text, w) {
				t.Errorf("trickling client: %d %q, want %s", code, text, w)
			}
		}
		if !rc.closed() {
			t.Error("connection open after the deadline")
		}
	}
	t.Run("command line", func(t *testing.T) {
		rc := rawDial(t, f.addr)
		rc.cmd("EHLO client.test")
		trickle(t, rc.c, timeout/10)
		cutOff(t, rc, "421 4.4.2")
	})
	t.Run("command line after STARTTLS", func(t *testing.T) {
		rc := rawDial(t, f.addr)
		rc.cmd("EHLO client.test")
		if code, text := rc.cmd("STARTTLS"); code != 220 {
			t.Fatalf("STARTTLS: %s", text)
		}
		tc := tlsUpgrade(t, rc)
		trickle(t, tc.c, timeout/10)
		cutOff(t, tc, "421 4.4.2")
	})
	t.Run("commands answered by wire", func(t *testing.T) {
		rc := rawDial(t, f.addr)
		rc.cmd("EHLO client.test")
		for i := 0; i < 8; i++ { // 8 × timeout/5: longer than one timeout
			if code, text := rc.cmd("XYZZY"); code != 500 {
				t.Fatalf("unknown command %d: %q, want 500", i+1, text)
			}
			time.Sleep(timeout / 5) // a client thinking between commands
		}
	})
	t.Run("DATA trickled", func(t *testing.T) {
		before := subjectCount(t, f.js, bus.SubjIn)
		rc := rawData(t, f.addr)
		trickle(t, rc.c, timeout/10)
		cutOff(t, rc, "451 4.3.0", "421 4.4.2")
		if n := subjectCount(t, f.js, bus.SubjIn); n != before {
			t.Errorf("%d messages stored from a trickled DATA", n-before)
		}
	})
	t.Run("DATA at a steady rate", func(t *testing.T) {
		rc := rawData(t, f.addr)
		rc.send("Subject: slow link\r\n\r\n")
		line := strings.Repeat("y", 998) + "\r\n"
		for i := 0; i < 30; i++ { // 20 kB/s for three timeouts
			rc.send(line)
			time.Sleep(timeout / 10)
		}
		if code, text := rc.cmd("."); code != 250 {
			t.Errorf("message sent at 20 kB/s: %q, want 250", text)
		}
	})
}

// On an implicit-TLS site a connection over max_connections or
// max_connections_per_ip gets its 421 4.7.0 inside TLS, like every reply.
func TestImplicitTLSOverTheLimit(t *testing.T) {
	f := start(t, func(c *config.Config) {
		addSite(c, config.KindSMTPS, "total", func(s *config.Site) { s.MaxConnections, s.MaxConnectionsPerIP = 1, 5 })
		addSite(c, config.KindSMTPS, "perip", func(s *config.Site) { s.MaxConnections, s.MaxConnectionsPerIP = 5, 1 })
	}, nil)
	for _, tt := range []struct{ site, why string }{
		{"total", "Too many connections"},
		{"perip", "from your address"},
	} {
		t.Run(tt.site, func(t *testing.T) {
			addr := f.svc.SiteAddrs(tt.site)[0]
			dialImplicit(t, addr) // holds the one slot
			rc := tlsUpgrade(t, rawDialAny(t, addr))
			if code, text := rc.reply(); code != 421 || !strings.HasPrefix(text, "421 4.7.0 ") || !strings.Contains(text, tt.why) {
				t.Errorf("connection over the limit: %d %q, want 421 4.7.0 %s", code, text, tt.why)
			}
			if !rc.closed() {
				t.Error("connection open after the 421")
			}
		})
	}
}
