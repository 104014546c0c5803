package ingress

import (
	"bufio"
	"context"
	"encoding/base64"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/dsn"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
)

// oneConn is a listener that yields one connection.
type oneConn struct {
	c    chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
}

func newOneConn(c net.Conn) *oneConn {
	l := &oneConn{c: make(chan net.Conn, 1), done: make(chan struct{}), addr: c.LocalAddr()}
	l.c <- c
	return l
}

func (l *oneConn) Accept() (net.Conn, error) {
	select {
	case c := <-l.c:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}
func (l *oneConn) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *oneConn) Addr() net.Addr { return l.addr }

func atrnFixture(t *testing.T) (*fixture, string) {
	t.Helper()
	f := start(t, func(c *config.Config) {
		heldDomains(c)
		withUsers(t, c,
			testUser(t, "dialup", nil, []string{"dialup.test"}),
			testUser(t, "nobody", nil, nil))
		addSite(c, config.KindODMR, "odmr", nil)
	}, nil)
	return f, f.svc.SiteAddrs("odmr")[0]
}

// atrnLogin connects to the ODMR site, starts TLS and authenticates.
func atrnLogin(t *testing.T, addr, user string) *rawConn {
	t.Helper()
	rc := rawDial(t, addr)
	rc.cmd("EHLO customer.test")
	if code, _ := rc.cmd("STARTTLS"); code != 220 {
		t.Fatal("STARTTLS")
	}
	tc := tlsUpgrade(t, rc)
	tc.cmd("EHLO customer.test")
	ir := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + testPassword))
	if code, text := tc.cmd("AUTH PLAIN " + ir); code != 235 {
		t.Fatalf("AUTH: %s", text)
	}
	return tc
}

// serveTurned plays the customer's SMTP server on the turned connection;
// rcpt, when given, decides each RCPT (set before the server runs: the
// turned connection's first RCPT may come at once).
func serveTurned(t *testing.T, rc *rawConn, rcpt ...func(string) error) *testutil.Sink {
	t.Helper()
	sink := &testutil.Sink{}
	if len(rcpt) > 0 {
		sink.RcptFunc = rcpt[0]
	}
	srv := smtp.NewServer(sink)
	srv.Domain = "customer.test"
	srv.AllowInsecureAuth = true
	srv.EnableDSN = true
	srv.ReadTimeout, srv.WriteTimeout = 20*time.Second, 20*time.Second
	srv.ErrorLog = nopLog{}
	l := newOneConn(bufConn{Conn: rc.c, r: rc.r})
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return sink
}

type nopLog struct{}

func (nopLog) Printf(string, ...any) {}
func (nopLog) Println(...any)        {}

// ATRN (RFC 2645): after AUTH the connection is turned around and the held
// mail of the user's domains is delivered over it; each message leaves the
// hold queue only once the customer's server took it.
func TestATRNDeliversOverTheTurnedConnection(t *testing.T) {
	f, addr := atrnFixture(t)
	tok := bus.Token("dialup.test")
	publishHeld(t, f.js, tok, "q1", "Subject: one\r\n\r\nfirst\r\n", "a@dialup.test", "b@dialup.test")
	publishHeld(t, f.js, tok, "q2", "Subject: two\r\n\r\nsecond\r\n", "c@dialup.test")
	publishHeld(t, f.js, bus.Token("branch.dialup.test"), "q3", "Subject: three\r\n\r\nx\r\n", "d@branch.dialup.test")

	tc := atrnLogin(t, addr, "dialup")
	if code, text := tc.cmd("ATRN branch.dialup.test"); code != 450 {
		t.Errorf("ATRN for a domain the user may not dequeue: %q, want 450", text)
	}
	if code, text := tc.cmd("ATRN"); code != 250 || !strings.Contains(text, "reversing") {
		t.Fatalf("ATRN: %q", text)
	}
	sink := serveTurned(t, tc)
	testutil.WaitFor(t, 20*time.Second, "2 messages over the turned connection", func() bool { return sink.Count() == 2 })
	testutil.WaitFor(t, 10*time.Second, "hold queue empty", func() bool { return subjectCount(t, f.js, bus.Hold(tok)) == 0 })
	got := map[string]string{}
	for _, m := range sink.Mails() {
		got[strings.Join(m.To, ",")] = string(m.Data)
		if m.Helo != "mx.local.test" || m.From != "sender@remote.test" {
			t.Errorf("helo %q from %q", m.Helo, m.From)
		}
	}
	if !strings.Contains(got["a@dialup.test,b@dialup.test"], "first") || !strings.Contains(got["c@dialup.test"], "second") {
		t.Errorf("received %v", got)
	}
	if n := subjectCount(t, f.js, bus.Hold(bus.Token("branch.dialup.test"))); n != 1 {
		t.Errorf("another domain's mail was dequeued")
	}
	// One delivered event per recipient in the mail log.
	testutil.WaitFor(t, 10*time.Second, "delivered events", func() bool {
		var rcpts []string
		err := bus.ReadEvents(t.Context(), f.js, bus.EventFilter{Type: bus.EventDelivered}, false, func(e bus.Event) error {
			if e.Domain != "dialup.test" || e.MXIP != "127.0.0.1" {
				t.Errorf("delivered event %+v", e)
			}
			rcpts = append(rcpts, e.QueueID+":"+e.Rcpt)
			return nil
		})
		slices.Sort(rcpts)
		return err == nil && strings.Join(rcpts, " ") == "q1:a@dialup.test q1:b@dialup.test q2:c@dialup.test"
	})
}

func TestATRNReplies(t *testing.T) {
	f, addr := atrnFixture(t)
	t.Run("no mail", func(t *testing.T) {
		tc := atrnLogin(t, addr, "dialup")
		if code, text := tc.cmd("ATRN dialup.test"); code != 453 {
			t.Errorf("ATRN with nothing held: %q, want 453", text)
		}
	})
	t.Run("no domains", func(t *testing.T) {
		tc := atrnLogin(t, addr, "nobody")
		if code, text := tc.cmd("ATRN"); code != 450 {
			t.Errorf("ATRN by a user without domains: %q, want 450", text)
		}
	})
	t.Run("not authenticated", func(t *testing.T) {
		rc := rawDial(t, addr)
		rc.cmd("EHLO customer.test")
		if code, text := rc.cmd("ATRN dialup.test"); code != 530 {
			t.Errorf("ATRN without AUTH: %q, want 530", text)
		}
	})
	t.Run("one session per domain", func(t *testing.T) {
		publishHeld(t, f.js, bus.Token("dialup.test"), "q9", "Subject: x\r\n\r\nx\r\n", "a@dialup.test")
		ctx := context.Background()
		rev, err := bus.Lock(ctx, f.js, bus.BucketSessions, bus.ATRNLockPrefix+bus.Token("dialup.test"), []byte("elsewhere"), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		tc := atrnLogin(t, addr, "dialup")
		if code, text := tc.cmd("ATRN dialup.test"); code != 451 {
			t.Errorf("ATRN while another session holds the domain: %q, want 451", text)
		}
		if err := bus.Unlock(ctx, f.js, bus.BucketSessions, bus.ATRNLockPrefix+bus.Token("dialup.test"), rev); err != nil {
			t.Fatal(err)
		}
		tc = atrnLogin(t, addr, "dialup")
		if code, text := tc.cmd("ATRN dialup.test"); code != 250 {
			t.Fatalf("ATRN after the lock was released: %q", text)
		}
		sink := serveTurned(t, tc)
		testutil.WaitFor(t, 20*time.Second, "delivery", func() bool { return sink.Count() == 1 })
	})
}

// A connection that breaks in the middle of a transfer loses nothing: the
// message stays held and the next ATRN session delivers it.
func TestATRNInterruptedLosesNothing(t *testing.T) {
	f, addr := atrnFixture(t)
	tok := bus.Token("dialup.test")
	publishHeld(t, f.js, tok, "q1", "Subject: one\r\n\r\nfirst\r\n", "a@dialup.test")

	tc := atrnLogin(t, addr, "dialup")
	if code, text := tc.cmd("ATRN"); code != 250 {
		t.Fatalf("ATRN: %q", text)
	}
	// Play a server that hangs up in the middle of DATA.
	w := bufio.NewWriter(tc.c)
	say := func(s string) { _, _ = w.WriteString(s + "\r\n"); _ = w.Flush() }
	expect := func(prefix string) {
		t.Helper()
		_ = tc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := tc.r.ReadString('\n')
		if err != nil || !strings.HasPrefix(strings.ToUpper(line), prefix) {
			t.Fatalf("got %q %v, want %s", line, err, prefix)
		}
	}
	say("220 customer.test ESMTP")
	expect("EHLO")
	say("250-customer.test")
	say("250 8BITMIME")
	expect("MAIL FROM:<SENDER@REMOTE.TEST>")
	say("250 ok")
	expect("RCPT TO:<A@DIALUP.TEST>")
	say("250 ok")
	expect("DATA")
	say("354 go")
	expect("SUBJECT")
	_ = tc.c.Close()

	testutilWaitIdle(t, f)
	if n := subjectCount(t, f.js, bus.Hold(tok)); n != 1 {
		t.Fatalf("%d messages held after the broken session, want 1", n)
	}
	tc = atrnLogin(t, addr, "dialup")
	if code, text := tc.cmd("ATRN"); code != 250 {
		t.Fatalf("second ATRN: %q", text)
	}
	sink := serveTurned(t, tc)
	testutil.WaitFor(t, 20*time.Second, "the message on the second try", func() bool { return sink.Count() == 1 })
	testutil.WaitFor(t, 10*time.Second, "hold queue empty", func() bool { return subjectCount(t, f.js, bus.Hold(tok)) == 0 })
}

// A recipient the customer's server refuses with 5xx is reported to the
// sender with a non-delivery report on mail.in, not left in Badmail.
func TestATRNRefusedRecipientBounces(t *testing.T) {
	f, addr := atrnFixture(t)
	tok := bus.Token("dialup.test")
	publishHeld(t, f.js, tok, "q1", "Subject: one\r\n\r\nfirst\r\n", "gone@dialup.test", "here@dialup.test")
	tc := atrnLogin(t, addr, "dialup")
	if code, text := tc.cmd("ATRN"); code != 250 {
		t.Fatalf("ATRN: %q", text)
	}
	sink := serveTurned(t, tc, func(to string) error {
		if to == "gone@dialup.test" {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such mailbox"}
		}
		return nil
	})
	testutil.WaitFor(t, 20*time.Second, "delivery of the accepted recipient", func() bool { return sink.Count() == 1 })
	s, err := f.js.Stream(t.Context(), bus.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	var report string
	testutil.WaitFor(t, 10*time.Second, "a report on mail.in", func() bool {
		m, err := s.GetLastMsgForSubject(t.Context(), bus.SubjIn)
		if err == nil {
			report = string(m.Data)
		}
		return err == nil
	})
	for _, want := range []string{"report-type=delivery-status", "Final-Recipient: rfc822; gone@dialup.test", "Action: failed", "Status: 5.1.1", "Diagnostic-Code: smtp; 550 5.1.1 no such mailbox"} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
	if n := subjectCount(t, f.js, bus.SubjBad); n != 0 {
		t.Errorf("%d messages in Badmail, want none", n)
	}
}

// ATRN hands the customer's server the ORCPT the sender gave: the stored
// "type;xtext" is decoded once and encoded once on the wire (issue #11:
// it used to leave double-encoded, a+b as a+2B2Bb).
func TestATRNKeepsORCPT(t *testing.T) {
	f, addr := atrnFixture(t)
	tok := bus.Token("dialup.test")
	want := []struct{ typ, addr string }{
		{"rfc822", "a+b@example.test"},
		{"rfc822", "x=y@example.test"},
		{"utf-8", "jörg@example.test"},
	}
	env := &envelope.Envelope{QueueID: "q1", MsgID: "q1." + tok, From: "sender@remote.test", Body: envelope.BodyInline, SMTPUTF8: true}
	for i, w := range want {
		env.Rcpts = append(env.Rcpts, envelope.Rcpt{
			Addr:  "r" + strconv.Itoa(i) + "@dialup.test",
			ORcpt: w.typ + ";" + dsn.EncodeXtext(w.addr), // as ingress stores it
		})
	}
	msg, err := env.Msg(bus.Hold(tok), []byte("Subject: orcpt\r\n\r\nx\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(t.Context(), f.js, msg, env.MsgID); err != nil {
		t.Fatal(err)
	}
	tc := atrnLogin(t, addr, "dialup")
	if code, text := tc.cmd("ATRN"); code != 250 {
		t.Fatalf("ATRN: %q", text)
	}
	sink := serveTurned(t, tc)
	testutil.WaitFor(t, 20*time.Second, "the message over the turned connection", func() bool { return sink.Count() == 1 })
	opts := sink.Mails()[0].RcptOpts
	if len(opts) != len(want) {
		t.Fatalf("%d recipients, want %d", len(opts), len(want))
	}
	for i, o := range opts {
		if !strings.EqualFold(string(o.OriginalRecipientType), want[i].typ) || o.OriginalRecipient != want[i].addr {
			t.Errorf("ORCPT %d: %s;%s, want %s;%s", i, o.OriginalRecipientType, o.OriginalRecipient, want[i].typ, want[i].addr)
		}
	}
}
