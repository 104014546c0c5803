package testutil

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Mail is one message received by a Sink.
type Mail struct {
	From string
	To   []string
	Data []byte
	// MailOpts and RcptOpts are the ESMTP parameters the client sent.
	MailOpts smtp.MailOptions
	RcptOpts []smtp.RcptOptions
	Helo     string
	// User is who the client logged in as (AUTH), "" for nobody.
	User string
}

// Sink is a go-smtp server on 127.0.0.1 that records what it receives. Its
// replies can be programmed per recipient and per DATA.
type Sink struct {
	Addr string // "127.0.0.1:port"
	Port int

	mu    sync.Mutex
	mails []Mail
	// Users, when set before the sink serves, are the logins AUTH PLAIN
	// accepts (name to password): the sink then offers AUTH where go-smtp
	// allows it (over TLS, or with AllowInsecureAuth).
	Users map[string]string
	// MailFunc, if set, decides each MAIL (nil error = accept).
	MailFunc func(from string) error
	// RcptFunc, if set, decides each RCPT (nil error = accept).
	RcptFunc func(to string) error
	// DataFunc, if set, decides the DATA reply after the data was read
	// (nil error = 250). It is called with the 1-based transaction number.
	DataFunc func(n int, m *Mail) error
	txns     int
	// accepted and live count the TCP connections the sink accepted, and
	// those of them still open.
	accepted, live int
	srv            *smtp.Server
}

// StartSink starts a recording SMTP server, closed in t.Cleanup.
func StartSink(t testing.TB) *Sink {
	t.Helper()
	return StartSinkOn(t, "127.0.0.1:0")
}

// StartSinkOn starts a recording SMTP server on addr.
func StartSinkOn(t testing.TB, addr string) *Sink {
	t.Helper()
	return StartSinkWith(t, addr, nil)
}

// StartSinkWith starts a recording SMTP server on addr; edit may change
// the go-smtp server's settings (EnableBINARYMIME, ...), and the EHLO
// keywords in hide are taken out of its replies (go-smtp always offers
// 8BITMIME and CHUNKING), so a remote without them can be played.
func StartSinkWith(t testing.TB, addr string, edit func(*smtp.Server), hide ...string) *Sink {
	t.Helper()
	s := &Sink{}
	srv := smtp.NewServer(s)
	srv.Domain = "sink.test"
	srv.MaxMessageBytes = 100 << 20
	srv.EnableDSN = true
	srv.EnableSMTPUTF8 = true
	srv.ReadTimeout = 30 * time.Second
	srv.WriteTimeout = 30 * time.Second
	srv.ErrorLog = nopLogger{}
	if edit != nil {
		edit(srv)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("sink listen: %v", err)
	}
	s.Addr = l.Addr().String()
	s.Port = l.Addr().(*net.TCPAddr).Port
	var sl net.Listener = countingListener{Listener: l, s: s}
	if len(hide) > 0 {
		sl = hidingListener{Listener: sl, hide: hide}
	}
	s.srv = srv
	go func() { _ = srv.Serve(sl) }()
	t.Cleanup(func() { _ = srv.Close() })
	return s
}

// Close stops the sink: its listener and every open connection are
// closed, as when a remote server restarts. A new sink may then listen on
// the same Addr (StartSinkOn).
func (s *Sink) Close() { _ = s.srv.Close() }

// Connections is the number of TCP connections the sink accepted.
func (s *Sink) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// Live is the number of the sink's connections still open: a connection
// counts until the server closed it (after QUIT, or when the client went
// away).
func (s *Sink) Live() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.live
}

// countingListener counts the connections it yields, and those of them
// not yet closed.
type countingListener struct {
	net.Listener
	s *Sink
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.s.mu.Lock()
	l.s.accepted++
	l.s.live++
	l.s.mu.Unlock()
	return &countedConn{Conn: c, s: l.s}, nil
}

type countedConn struct {
	net.Conn
	s    *Sink
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		c.s.live--
		c.s.mu.Unlock()
	})
	return c.Conn.Close()
}

// hidingListener yields connections whose writes lose the EHLO lines of
// the keywords in hide.
type hidingListener struct {
	net.Listener
	hide []string
}

func (l hidingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &hidingConn{Conn: c, hide: l.hide}, nil
}

type hidingConn struct {
	net.Conn
	hide []string
}

// Write drops "250-KEYWORD" lines; go-smtp flushes each reply line on
// its own, so a line never spans two writes.
func (c *hidingConn) Write(p []byte) (int, error) {
	out := p
	for _, kw := range c.hide {
		out = bytes.ReplaceAll(out, []byte("250-"+kw+"\r\n"), nil)
	}
	if _, err := c.Conn.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

type nopLogger struct{}

func (nopLogger) Printf(string, ...any) {}
func (nopLogger) Println(...any)        {}

// Mails returns a copy of what was received.
func (s *Sink) Mails() []Mail {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Mail(nil), s.mails...)
}

// Count is the number of messages received.
func (s *Sink) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.mails)
}

// Transactions is the number of DATA commands seen, accepted or not.
func (s *Sink) Transactions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.txns
}

// NewSession implements smtp.Backend.
func (s *Sink) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &sinkSession{s: s, helo: c.Hostname()}, nil
}

type sinkSession struct {
	s    *Sink
	helo string
	user string
	m    Mail
}

// AuthMechanisms implements smtp.AuthSession: PLAIN when Users is set.
func (ss *sinkSession) AuthMechanisms() []string {
	if ss.s.Users == nil {
		return nil
	}
	return []string{sasl.Plain}
}

// Auth implements smtp.AuthSession.
func (ss *sinkSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if want, ok := ss.s.Users[user]; !ok || want != pass {
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
		}
		ss.user = user
		return nil
	}), nil
}

func (ss *sinkSession) Mail(from string, opts *smtp.MailOptions) error {
	ss.s.mu.Lock()
	f := ss.s.MailFunc
	ss.s.mu.Unlock()
	if f != nil {
		if err := f(from); err != nil {
			return err
		}
	}
	ss.m = Mail{From: from, Helo: ss.helo, User: ss.user}
	if opts != nil {
		ss.m.MailOpts = *opts
	}
	return nil
}

func (ss *sinkSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	// RcptFunc is read under the lock, as DataFunc is: tests set it once
	// the server runs, and wait on the sink (Count) before it matters.
	ss.s.mu.Lock()
	f := ss.s.RcptFunc
	ss.s.mu.Unlock()
	if f != nil {
		if err := f(to); err != nil {
			return err
		}
	}
	ss.m.To = append(ss.m.To, to)
	if opts != nil {
		ss.m.RcptOpts = append(ss.m.RcptOpts, *opts)
	} else {
		ss.m.RcptOpts = append(ss.m.RcptOpts, smtp.RcptOptions{})
	}
	return nil
}

func (ss *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	ss.m.Data = b
	ss.s.mu.Lock()
	ss.s.txns++
	n := ss.s.txns
	f := ss.s.DataFunc
	ss.s.mu.Unlock()
	if f != nil {
		if err := f(n, &ss.m); err != nil {
			var se *smtp.SMTPError
			if !errors.As(err, &se) {
				panic("testutil: DataFunc must return *smtp.SMTPError")
			}
			return err
		}
	}
	ss.s.mu.Lock()
	ss.s.mails = append(ss.s.mails, ss.m)
	ss.s.mu.Unlock()
	return nil
}

func (ss *sinkSession) Reset()        { ss.m = Mail{Helo: ss.helo} }
func (ss *sinkSession) Logout() error { return nil }

// SelfSigned is a certificate for names (DNS names, or IP addresses),
// valid for an hour and signed by itself: a server's certificate that a
// client verifies only when it is given it as a root.
func SelfSigned(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
