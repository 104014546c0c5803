package smtpclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/testutil"
)

const wait = 10 * time.Second

// wire records the commands a client writes, one line each (message
// content included, which no test here looks for).
type wire struct {
	mu     sync.Mutex
	lines  []string
	writes []string // each Write of the client, whole
}

func (w *wire) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &wireConn{Conn: c, w: w}, nil
}

// count is how many command lines start with verb.
func (w *wire) count(verb string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, l := range w.lines {
		if strings.HasPrefix(l, verb) {
			n++
		}
	}
	return n
}

type wireConn struct {
	net.Conn
	w *wire
}

func (c *wireConn) Write(p []byte) (int, error) {
	c.w.mu.Lock()
	c.w.writes = append(c.w.writes, string(p))
	for l := range strings.SplitSeq(string(p), "\r\n") {
		if l != "" {
			c.w.lines = append(c.w.lines, l)
		}
	}
	c.w.mu.Unlock()
	return c.Conn.Write(p)
}

// dialSink opens a session to sink as Dial does for delivery.
func dialSink(t *testing.T, w *wire, sink *testutil.Sink, host, hostname string) *Client {
	t.Helper()
	c, herr := Dial(t.Context(), w.dial, sink.Addr, host, host+"["+sink.Addr+"]", Options{
		Hostname: hostname, ConnectTimeout: 5 * time.Second, CommandTimeout: 10 * time.Second,
	})
	if herr != nil {
		t.Fatalf("dial: %v", herr)
	}
	return c
}

func dest(sink *testutil.Sink, host, hostname string) Dest {
	return Dest{Addr: sink.Addr, Host: host, Hostname: hostname}
}

// sendOne sends a message numbered i on c and checks it was accepted.
func sendOne(t *testing.T, c *Client, i int) {
	t.Helper()
	env := testEnv("", fmt.Sprintf("r%d@sink.test", i))
	res, herr := c.Send(t.Context(), env, func(context.Context) (io.ReadCloser, *Error) {
		return io.NopCloser(strings.NewReader(fmt.Sprintf("Subject: %d\r\n\r\nbody %d\r\n", i, i))), nil
	})
	if herr != nil || res.Errs[0] != nil {
		t.Fatalf("message %d: %v %v", i, herr, res.Errs)
	}
}

func waitLive(t *testing.T, sink *testutil.Sink, n int) {
	t.Helper()
	testutil.WaitFor(t, wait, fmt.Sprintf("%d open connections at the sink", n), func() bool { return sink.Live() == n })
}

var lim = PoolLimits{Idle: time.Minute, MaxAge: time.Hour, MaxUses: 100, MaxIdlePerDest: 4, MaxIdle: 8}

// A session put back after its message carries the next one: one
// connection, one EHLO, a RSET starting each transaction on a reused
// session, and every message intact.
func TestPoolReusesSession(t *testing.T) {
	sink := testutil.StartSink(t)
	p := testPool(t, lim)
	var w wire
	d := dest(sink, "sink.test", "client.test")
	c := dialSink(t, &w, sink, "sink.test", "client.test")
	ehlo := w.count("EHLO") // Dial's (two without STARTTLS: before and after the hand-over to go-smtp)
	const n = 5
	for i := range n {
		if i > 0 {
			if c = p.Get(t.Context(), d, false); c == nil {
				t.Fatalf("message %d: no idle session", i)
			}
		}
		sendOne(t, c, i)
		p.Put(c)
	}
	if got := sink.Connections(); got != 1 {
		t.Errorf("%d connections, want 1", got)
	}
	if got := w.count("EHLO"); got != ehlo {
		t.Errorf("%d EHLO, want only Dial's %d", got, ehlo)
	}
	if got, want := w.count("RSET"), n-1; got != want {
		t.Errorf("%d RSET, want %d", got, want)
	}
	mails := sink.Mails()
	if len(mails) != n {
		t.Fatalf("%d mails", len(mails))
	}
	for i, m := range mails {
		if want := fmt.Sprintf("Subject: %d\r\n\r\nbody %d\r\n", i, i); string(m.Data) != want || m.To[0] != fmt.Sprintf("r%d@sink.test", i) {
			t.Errorf("mail %d to %v: %q", i, m.To, m.Data)
		}
	}
	if s := p.Stats(); s.Hits != n-1 || s.Kept != n || s.Idle != 1 {
		t.Errorf("stats %+v", s)
	}
}

// A reused session decides by the EHLO reply of its own connection: no
// 8BITMIME there, 8-bit mail is refused without a command, and the
// session stays usable.
func TestPoolSessionKeepsItsKeywords(t *testing.T) {
	sink := testutil.StartSinkWith(t, "127.0.0.1:0", nil, "8BITMIME")
	p := testPool(t, lim)
	var w wire
	c := dialSink(t, &w, sink, "sink.test", "client.test")
	ehlo := w.count("EHLO")
	sendOne(t, c, 0)
	p.Put(c)
	c = p.Get(t.Context(), dest(sink, "sink.test", "client.test"), false)
	if c == nil {
		t.Fatal("no idle session")
	}
	_, herr := c.Send(t.Context(), testEnv("8BITMIME", "a@sink.test"), func(context.Context) (io.ReadCloser, *Error) {
		return io.NopCloser(strings.NewReader("Subject: x\r\n\r\nj\xc3\xb6rg\r\n")), nil
	})
	if herr == nil || herr.Enhanced != "5.6.3" {
		t.Fatalf("8-bit mail over the reused session: %v, want 5.6.3", herr)
	}
	p.Put(c)
	c = p.Get(t.Context(), dest(sink, "sink.test", "client.test"), false)
	if c == nil {
		t.Fatal("session not kept after a refusal that sent nothing")
	}
	sendOne(t, c, 1)
	c.Quit()
	if w.count("EHLO") != ehlo || sink.Connections() != 1 || sink.Transactions() != 2 {
		t.Errorf("%d EHLO, %d connections, %d transactions", w.count("EHLO"), sink.Connections(), sink.Transactions())
	}
}

// A session the remote closed while idle fails its first command with
// ErrStale and is not kept; whether the remote said 421 first (an idle
// timeout) or just went away (a restart).
func TestPoolStaleSession(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start func(t *testing.T) *testutil.Sink
		kill  func(t *testing.T, s *testutil.Sink)
	}{
		{"idle timeout with 421", func(t *testing.T) *testutil.Sink {
			return testutil.StartSinkWith(t, "127.0.0.1:0", func(s *smtp.Server) { s.ReadTimeout = 200 * time.Millisecond })
		}, func(t *testing.T, s *testutil.Sink) { waitLive(t, s, 0) }},
		{"server restart", func(t *testing.T) *testutil.Sink { return testutil.StartSink(t) }, func(t *testing.T, s *testutil.Sink) {
			s.Close()
			waitLive(t, s, 0)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sink := tc.start(t)
			p := testPool(t, lim)
			var w wire
			c := dialSink(t, &w, sink, "sink.test", "client.test")
			sendOne(t, c, 0)
			p.Put(c)
			tc.kill(t, sink)
			c = p.Get(t.Context(), dest(sink, "sink.test", "client.test"), false)
			if c == nil {
				t.Fatal("no idle session")
			}
			_, herr := c.Send(t.Context(), testEnv("", "a@sink.test"), func(context.Context) (io.ReadCloser, *Error) {
				t.Error("body opened on a stale session")
				return nil, nil
			})
			if herr == nil || !errors.Is(herr, ErrStale) {
				t.Fatalf("got %v, want ErrStale", herr)
			}
			p.Put(c)
			if s := p.Stats(); s.Idle != 0 {
				t.Errorf("stale session kept: %+v", s)
			}
		})
	}
}

// The same failure on a fresh connection is the host's failure, not
// ErrStale: only a cached session may be retried for free.
func TestFreshSessionNeverStale(t *testing.T) {
	sink := testutil.StartSink(t)
	var w wire
	c := dialSink(t, &w, sink, "sink.test", "client.test")
	sink.Close()
	waitLive(t, sink, 0)
	_, herr := c.Send(t.Context(), testEnv("", "a@sink.test"), nil)
	if herr == nil || errors.Is(herr, ErrStale) || !herr.Broken {
		t.Fatalf("got %v, want a broken connection that is not ErrStale", herr)
	}
	c.Close()
}

// A transaction that ended with 421 leaves nothing to reuse.
func TestPoolDrops421Session(t *testing.T) {
	sink := testutil.StartSink(t)
	sink.DataFunc = func(int, *testutil.Mail) error {
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "shutting down"}
	}
	p := testPool(t, lim)
	var w wire
	c := dialSink(t, &w, sink, "sink.test", "client.test")
	res, herr := c.Send(t.Context(), testEnv("", "a@sink.test"), func(context.Context) (io.ReadCloser, *Error) {
		return io.NopCloser(strings.NewReader("Subject: x\r\n\r\nx\r\n")), nil
	})
	if herr != nil || res.Errs[0] == nil || res.Errs[0].Code != 421 {
		t.Fatalf("got %v %v, want the 421 for the recipient", herr, res.Errs)
	}
	p.Put(c)
	if s := p.Stats(); s.Idle != 0 || s.Kept != 0 {
		t.Errorf("stats %+v", s)
	}
	waitLive(t, sink, 0)
	if n := w.count("RSET"); n != 0 {
		t.Errorf("%d RSET after a 421", n)
	}
}

// Sessions are interchangeable only with the same address, server name,
// EHLO name and TLS state; a plain-text session never serves a request
// that needs TLS.
func TestPoolKeys(t *testing.T) {
	a, b := testutil.StartSink(t), testutil.StartSink(t)
	p := testPool(t, lim)
	var w wire
	ca := dialSink(t, &w, a, "mx.a.test", "client.test")
	sendOne(t, ca, 0)
	p.Put(ca)
	for _, d := range []Dest{
		dest(b, "mx.a.test", "client.test"),  // another address
		dest(a, "mx.b.test", "client.test"),  // another server name at that address
		dest(a, "mx.a.test", "client2.test"), // another EHLO name
		{Addr: a.Addr, Host: "mx.a.test"},    // no EHLO name
	} {
		if c := p.Get(t.Context(), d, false); c != nil {
			t.Errorf("%+v got the session of %+v", d, ca.dest)
			p.Put(c)
		}
	}
	if c := p.Get(t.Context(), dest(a, "mx.a.test", "client.test"), true); c != nil {
		t.Error("a plain-text session served a request for TLS")
		p.Put(c)
	}
	if c := p.Get(t.Context(), dest(a, "mx.a.test", "client.test"), false); c != ca {
		t.Errorf("got %p, want the session %p", c, ca)
	}
}

// Sessions from New (ATRN's turned connection) are never cached.
func TestPoolRefusesATRNSession(t *testing.T) {
	sink := testutil.StartSink(t)
	conn, err := net.Dial("tcp", sink.Addr)
	if err != nil {
		t.Fatal(err)
	}
	c, herr := New(conn, "sink.test", false, Options{Hostname: "client.test", CommandTimeout: 10 * time.Second})
	if herr != nil {
		t.Fatal(herr)
	}
	sendOne(t, c, 0)
	p := testPool(t, lim)
	p.Put(c)
	if s := p.Stats(); s.Idle != 0 {
		t.Errorf("ATRN session cached: %+v", s)
	}
	waitLive(t, sink, 0)
}

// The limits: uses, age, idle sessions per destination and in all; the
// janitor ends an idle session with QUIT after Idle.
func TestPoolLimits(t *testing.T) {
	t.Run("uses", func(t *testing.T) {
		sink := testutil.StartSink(t)
		l := lim
		l.MaxUses = 2
		p := testPool(t, l)
		var w wire
		c := dialSink(t, &w, sink, "sink.test", "client.test")
		sendOne(t, c, 0)
		p.Put(c)
		c = p.Get(t.Context(), dest(sink, "sink.test", "client.test"), false)
		sendOne(t, c, 1)
		p.Put(c) // its second transaction: ended
		if s := p.Stats(); s.Idle != 0 {
			t.Errorf("stats %+v", s)
		}
		waitLive(t, sink, 0)
		if w.count("QUIT") != 1 {
			t.Errorf("%d QUIT", w.count("QUIT"))
		}
	})
	t.Run("age", func(t *testing.T) {
		sink := testutil.StartSink(t)
		l := lim
		l.MaxAge = 300 * time.Millisecond
		p := testPool(t, l)
		var w wire
		c := dialSink(t, &w, sink, "sink.test", "client.test")
		sendOne(t, c, 0)
		p.Put(c)
		waitLive(t, sink, 0) // well before Idle (a minute)
		if c := p.Get(t.Context(), dest(sink, "sink.test", "client.test"), false); c != nil {
			t.Error("an old session was returned")
		}
		if w.count("QUIT") != 1 {
			t.Errorf("%d QUIT", w.count("QUIT"))
		}
	})
	t.Run("idle", func(t *testing.T) {
		sink := testutil.StartSink(t)
		l := lim
		l.Idle = 300 * time.Millisecond
		p := testPool(t, l)
		var w wire
		c := dialSink(t, &w, sink, "sink.test", "client.test")
		sendOne(t, c, 0)
		put := time.Now()
		p.Put(c)
		waitLive(t, sink, 0)
		if d := time.Since(put); d < l.Idle {
			t.Errorf("closed after %v, before the idle limit %v", d, l.Idle)
		}
		if w.count("QUIT") != 1 || p.Stats().Idle != 0 {
			t.Errorf("%d QUIT, stats %+v", w.count("QUIT"), p.Stats())
		}
	})
	t.Run("per destination and in all", func(t *testing.T) {
		a, b := testutil.StartSink(t), testutil.StartSink(t)
		l := lim
		l.MaxIdlePerDest, l.MaxIdle = 1, 2
		p := testPool(t, l)
		var w wire
		a1, a2 := dialSink(t, &w, a, "a.test", "client.test"), dialSink(t, &w, a, "a.test", "client.test")
		p.Put(a1)
		p.Put(a2) // over the limit for a: ended
		waitLive(t, a, 1)
		b1 := dialSink(t, &w, b, "b.test", "client.test")
		p.Put(b1)
		b2 := dialSink(t, &w, b, "b2.test", "client.test")
		p.Put(b2) // over the limit in all: a1, idle longest, is ended
		waitLive(t, a, 0)
		if s := p.Stats(); s.Idle != 2 {
			t.Errorf("stats %+v", s)
		}
		if p.Get(t.Context(), dest(a, "a.test", "client.test"), false) != nil {
			t.Error("evicted session returned")
		}
		if p.Get(t.Context(), dest(b, "b.test", "client.test"), false) != b1 || p.Get(t.Context(), dest(b, "b2.test", "client.test"), false) != b2 {
			t.Error("kept sessions not returned")
		}
		b1.Quit()
		b2.Quit()
	})
	t.Run("off", func(t *testing.T) {
		sink := testutil.StartSink(t)
		p := NewPool(PoolLimits{})
		var w wire
		c := dialSink(t, &w, sink, "sink.test", "client.test")
		sendOne(t, c, 0)
		p.Put(c)
		waitLive(t, sink, 0)
		if w.count("RSET") != 0 || w.count("QUIT") != 1 {
			t.Errorf("%d RSET, %d QUIT", w.count("RSET"), w.count("QUIT"))
		}
	})
}

// Close ends the idle sessions with QUIT at once; a session put back
// afterwards is ended too.
func TestPoolClose(t *testing.T) {
	sink := testutil.StartSink(t)
	p := NewPool(lim)
	var w wire
	c1, c2 := dialSink(t, &w, sink, "sink.test", "client.test"), dialSink(t, &w, sink, "sink.test", "client.test")
	p.Put(c1)
	start := time.Now()
	p.Close(time.Second)
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
	waitLive(t, sink, 1)
	p.Put(c2)
	waitLive(t, sink, 0)
	if w.count("QUIT") != 2 || p.Stats().Idle != 0 {
		t.Errorf("%d QUIT, stats %+v", w.count("QUIT"), p.Stats())
	}
}

// The end of the user's context closes a session taken from the pool, as
// it does one Dial opened; Put then drops it.
func TestPoolSessionBoundToContext(t *testing.T) {
	sink := testutil.StartSink(t)
	p := testPool(t, lim)
	var w wire
	c := dialSink(t, &w, sink, "sink.test", "client.test")
	sendOne(t, c, 0)
	p.Put(c)
	ctx, cancel := context.WithCancel(t.Context())
	c = p.Get(ctx, dest(sink, "sink.test", "client.test"), false)
	cancel()
	waitLive(t, sink, 0)
	p.Put(c)
	if s := p.Stats(); s.Idle != 0 {
		t.Errorf("stats %+v", s)
	}
}

// testPool is a Pool closed when the test ends.
func testPool(t *testing.T, lim PoolLimits) *Pool {
	p := NewPool(lim)
	t.Cleanup(func() { p.Close(time.Second) })
	return p
}
