package ingress

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/crypto/bcrypt"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
	"github.com/mailroot/mailroot/internal/users"
)

const testPassword = "correct horse battery"

// testUser is a users file entry with a cheap hash.
func testUser(t testing.TB, name string, from, atrn []string) users.User {
	t.Helper()
	h, err := users.HashWithCost(testPassword, bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return users.User{Name: name, Hash: h, From: from, ATRN: atrn}
}

// withUsers writes a users file and points the configuration at it.
func withUsers(t testing.TB, c *config.Config, list ...users.User) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "users")
	if err := users.Save(path, list); err != nil {
		t.Fatal(err)
	}
	c.Auth.UsersFile = path
	c.Auth.FailDelay = 0
	return path
}

// addSite appends a site of kind on a free port.
func addSite(c *config.Config, kind, name string, edit func(*config.Site)) {
	s := c.SiteOf(kind)
	s.Name = name
	s.Listen = []string{"127.0.0.1:0"}
	if edit != nil {
		edit(&s)
	}
	c.Sites = append(c.Sites, s)
}

func clientTLS() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, ServerName: "mx.local.test", MinVersion: tls.VersionTLS12}
}

func dialStartTLS(t testing.TB, addr string) *smtp.Client {
	t.Helper()
	c, err := smtp.DialStartTLS(addr, clientTLS())
	if err != nil {
		t.Fatalf("STARTTLS: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	return c
}

func dialImplicit(t testing.TB, addr string) *smtp.Client {
	t.Helper()
	c, err := smtp.DialTLS(addr, clientTLS())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	return c
}

func authPlain(c *smtp.Client, user, pw string) error {
	return c.Auth(sasl.NewPlainClient("", user, pw))
}

// enhanced returns "code x.y.z" of an SMTP error, "" for nil.
func enhanced(err error) string {
	if err == nil {
		return ""
	}
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return "not smtp: " + err.Error()
	}
	return strconv.Itoa(se.Code) + " " + strconv.Itoa(se.EnhancedCode[0]) + "." + strconv.Itoa(se.EnhancedCode[1]) + "." + strconv.Itoa(se.EnhancedCode[2])
}

// rawConn speaks SMTP byte by byte, for what a well-behaved client never
// sends.
type rawConn struct {
	t        testing.TB
	c        net.Conn
	r        *bufio.Reader
	greeting string
}

func rawDial(t testing.TB, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	rc := &rawConn{t: t, c: c, r: bufio.NewReader(c)}
	code, text := rc.reply()
	if code != 220 {
		t.Fatalf("greeting %d %s", code, text)
	}
	rc.greeting = text
	return rc
}

// rawData dials addr and goes as far as the 354 of DATA, for a message
// from a@remote.test to b@local.test.
func rawData(t testing.TB, addr string) *rawConn {
	t.Helper()
	rc := rawDial(t, addr)
	rc.cmd("EHLO client.test")
	rc.cmd("MAIL FROM:<a@remote.test>")
	rc.cmd("RCPT TO:<b@local.test>")
	if code, text := rc.cmd("DATA"); code != 354 {
		t.Fatalf("DATA: %s", text)
	}
	return rc
}

// send writes s as is.
func (rc *rawConn) send(s string) {
	rc.t.Helper()
	_ = rc.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(rc.c, s); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

// reply reads one (multi-line) reply: the code and all text lines joined
// by "\n"; code 0 when the connection ended.
func (rc *rawConn) reply() (int, string) {
	rc.t.Helper()
	_ = rc.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	var lines []string
	for {
		line, err := rc.r.ReadString('\n')
		if err != nil {
			return 0, strings.Join(lines, "\n")
		}
		line = strings.TrimRight(line, "\r\n")
		lines = append(lines, line)
		if len(line) < 4 || line[3] != '-' {
			code, _ := strconv.Atoi(line[:min(3, len(line))])
			return code, strings.Join(lines, "\n")
		}
	}
}

// cmd sends one command line and reads the reply.
func (rc *rawConn) cmd(line string) (int, string) {
	rc.t.Helper()
	rc.send(line + "\r\n")
	return rc.reply()
}

// closed reports whether the server closed the connection.
func (rc *rawConn) closed() bool {
	_ = rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := rc.r.ReadByte()
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err)
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}

// subjectCount is the number of messages on subject.
func subjectCount(t testing.TB, js jetstream.JetStream, subject string) int {
	t.Helper()
	s, err := js.Stream(context.Background(), bus.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	return int(info.State.Subjects[subject])
}

// publishHeld puts a message for rcpts on mail.hold.<tok>.
func publishHeld(t testing.TB, js jetstream.JetStream, tok, qid, body string, rcpts ...string) {
	t.Helper()
	env := &envelope.Envelope{QueueID: qid, MsgID: qid + "." + tok, From: "sender@remote.test", Body: envelope.BodyInline}
	for _, r := range rcpts {
		env.Rcpts = append(env.Rcpts, envelope.Rcpt{Addr: r})
	}
	msg, err := env.Msg(bus.Hold(tok), []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(context.Background(), js, msg, env.MsgID); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// tlsUpgrade does the client side of STARTTLS on a raw connection after
// the 220.
func tlsUpgrade(t testing.TB, rc *rawConn) *rawConn {
	t.Helper()
	tc := tls.Client(rc.c, clientTLS())
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	_ = tc.SetDeadline(time.Time{})
	return &rawConn{t: t, c: tc, r: bufio.NewReader(tc)}
}

// rawDialAny connects without reading the greeting.
func rawDialAny(t testing.TB, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &rawConn{t: t, c: c, r: bufio.NewReader(c)}
}

// testutilWaitIdle waits until no site holds a connection.
func testutilWaitIdle(t testing.TB, f *fixture) {
	t.Helper()
	testutil.WaitFor(t, 10*time.Second, "all connections closed", func() bool {
		for _, st := range f.svc.sites {
			st.mu.Lock()
			n := st.conns
			st.mu.Unlock()
			if n != 0 {
				return false
			}
		}
		return true
	})
}
