// Package ingress is Mailroot's SMTP server: the front door of the
// pipeline (DESIGN.md §4, "Ingress").
//
// A go-smtp session checks relay permission per RCPT (local domains from
// anyone; other domains only from relay_networks, otherwise
// "550 5.7.1 Unable to relay"), reads DATA within the size limit, prepends a
// Received: header and publishes the message to mail.in — inline when it is
// at most 64 KiB, through the mail-bodies Object Store otherwise — with the
// queue id as Nats-Msg-Id. It answers "250 2.0.0 OK queued as <qid>" only
// after JetStream acknowledged the envelope; a NATS failure is 451 4.3.0 and
// a full store 452 4.3.1 (RFC 5321 §6.1: a 250 is a promise).
package ingress

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
)

// Service is the SMTP server.
type Service struct {
	cfg    config.Config
	log    *slog.Logger
	js     jetstream.JetStream
	relay  []netip.Prefix
	bodies *bus.Bodies

	srv       *smtp.Server
	listeners []net.Listener
	ready     chan struct{}
	conns     atomic.Int64

	// Now is the clock (a test seam).
	Now func() time.Time
	// StoreTimeout bounds storing one message, retries through NATS leader
	// elections included; past it the client gets 451 4.3.0.
	StoreTimeout time.Duration
}

var _ smtp.Backend = (*Service)(nil)

// New binds the listen addresses, so that errors such as a port in use show
// at start and Addrs is known before Run.
func New(cfg config.Config, log *slog.Logger, js jetstream.JetStream) (*Service, error) {
	relay, err := cfg.Ingress.RelayPrefixes()
	if err != nil {
		return nil, fmt.Errorf("ingress: %w", err)
	}
	s := &Service{cfg: cfg, log: log.With("svc", "ingress"), js: js, relay: relay, ready: make(chan struct{}), Now: time.Now, StoreTimeout: 2 * bus.PublishTimeout}
	srv := smtp.NewServer(s)
	srv.Domain = cfg.Hostname
	srv.MaxMessageBytes = cfg.Ingress.MaxMessageSize
	srv.MaxRecipients = cfg.Ingress.MaxRecipients
	srv.ReadTimeout = cfg.Ingress.Timeout.D()
	srv.WriteTimeout = cfg.Ingress.Timeout.D()
	srv.ErrorLog = slog.NewLogLogger(s.log.Handler(), slog.LevelError)
	s.srv = srv
	for _, addr := range cfg.Ingress.Listen {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			s.closeListeners()
			return nil, fmt.Errorf("ingress: listen %s: %w", addr, err)
		}
		s.listeners = append(s.listeners, &limitListener{Listener: l, s: s})
	}
	return s, nil
}

// Addrs are the bound listen addresses.
func (s *Service) Addrs() []string {
	out := make([]string, len(s.listeners))
	for i, l := range s.listeners {
		out[i] = l.Addr().String()
	}
	return out
}

// Ready is closed once the stream exists and sessions are being served.
func (s *Service) Ready() <-chan struct{} { return s.ready }

func (s *Service) closeListeners() {
	for _, l := range s.listeners {
		_ = l.Close()
	}
}

// Run serves SMTP until ctx is done, then stops accepting and waits up to
// 30 s for sessions in DATA to get their answer.
func (s *Service) Run(ctx context.Context) error {
	if _, err := bus.Setup(ctx, s.js, s.cfg); err != nil {
		s.closeListeners()
		return err
	}
	b, err := bus.OpenBodies(ctx, s.js)
	if err != nil {
		s.closeListeners()
		return err
	}
	s.bodies = b
	close(s.ready)
	errc := make(chan error, len(s.listeners))
	for _, l := range s.listeners {
		s.log.Info("listening", "addr", l.Addr().String())
		go func() {
			if err := s.srv.Serve(l); err != nil && !errors.Is(err, smtp.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				errc <- err
			}
		}()
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		_ = s.srv.Close()
		return fmt.Errorf("ingress: serve: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		_ = s.srv.Close()
	}
	return nil
}

// NewSession implements smtp.Backend.
func (s *Service) NewSession(c *smtp.Conn) (smtp.Session, error) {
	ip := netip.Addr{}
	if ta, ok := c.Conn().RemoteAddr().(*net.TCPAddr); ok {
		ip, _ = netip.AddrFromSlice(ta.IP)
		ip = ip.Unmap()
	}
	return &session{s: s, conn: c, ip: ip, relay: s.mayRelay(ip)}, nil
}

func (s *Service) mayRelay(ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	for _, p := range s.relay {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// limitListener answers 421 when max_connections sessions are open.
type limitListener struct {
	net.Listener
	s *Service
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.s.conns.Add(1) > int64(l.s.cfg.Ingress.MaxConnections) {
			l.s.conns.Add(-1)
			_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			_, _ = io.WriteString(c, "421 4.7.0 "+l.s.cfg.Hostname+" Too many connections, try again later\r\n")
			_ = c.Close()
			l.s.log.Warn("connection refused: too many connections", "client", c.RemoteAddr().String())
			continue
		}
		return &countedConn{Conn: c, s: l.s}, nil
	}
}

type countedConn struct {
	net.Conn
	s    *Service
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.s.conns.Add(-1) })
	return c.Conn.Close()
}

// session is one SMTP connection's state.
type session struct {
	s     *Service
	conn  *smtp.Conn
	ip    netip.Addr
	relay bool

	from     string
	mailOpts smtp.MailOptions
	rcpts    []envelope.Rcpt
}

var _ smtp.Session = (*session)(nil)

func smtpErr(code int, ec smtp.EnhancedCode, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: ec, Message: msg}
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	if from != "" {
		if err := envelope.CheckAddress(from); err != nil {
			if _, d, _ := envelope.Split(from); d == "" && !strings.ContainsAny(from, "@\"") {
				// IIS stamps the default domain on a bare sender name.
				from = from + "@" + ss.defaultDomain()
			} else {
				return smtpErr(553, smtp.EnhancedCode{5, 1, 7}, "Bad sender address syntax")
			}
		}
	}
	if opts != nil {
		if opts.Size > ss.s.cfg.Ingress.MaxMessageSize {
			return smtpErr(552, smtp.EnhancedCode{5, 3, 4}, "Message size exceeds fixed maximum message size")
		}
		ss.mailOpts = *opts
	}
	ss.from = from
	ss.rcpts = ss.rcpts[:0]
	return nil
}

func (ss *session) defaultDomain() string {
	if len(ss.s.cfg.LocalDomains) > 0 {
		return ss.s.cfg.LocalDomains[0]
	}
	return ss.s.cfg.Hostname
}

func (ss *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if strings.EqualFold(to, "postmaster") {
		// RFC 5321 §4.5.1: postmaster without a domain must be accepted.
		to = "postmaster@" + ss.defaultDomain()
	}
	if err := envelope.CheckAddress(to); err != nil {
		return smtpErr(501, smtp.EnhancedCode{5, 1, 3}, "Bad recipient address syntax")
	}
	domain := envelope.Domain(to)
	if !ss.s.cfg.IsLocal(domain) && !ss.relay {
		ss.s.log.Info("relay denied", "client", ss.ip.String(), "rcpt", to)
		return smtpErr(550, smtp.EnhancedCode{5, 7, 1}, "Unable to relay for "+to)
	}
	if !ss.relay {
		// Mail for a local domain must not be a relay in disguise
		// (user%other@local, "user@other"@local).
		local, _, _ := envelope.Split(to)
		if strings.ContainsAny(local, "%@!") {
			return smtpErr(550, smtp.EnhancedCode{5, 7, 1}, "Unable to relay for "+to)
		}
	}
	r := envelope.Rcpt{Addr: to}
	if opts != nil {
		for _, n := range opts.Notify {
			r.Notify = append(r.Notify, string(n))
		}
		if opts.OriginalRecipient != "" {
			r.ORcpt = string(opts.OriginalRecipientType) + ";" + opts.OriginalRecipient
		}
	}
	ss.rcpts = append(ss.rcpts, r)
	return nil
}

func (ss *session) Reset() {
	ss.from = ""
	ss.mailOpts = smtp.MailOptions{}
	ss.rcpts = nil
}

func (ss *session) Logout() error { return nil }

// Data reads the message and stores it; the reply says whether it was.
func (ss *session) Data(r io.Reader) error {
	s := ss.s
	now := s.Now()
	qid := envelope.NewQueueID()
	env := &envelope.Envelope{
		QueueID:    qid,
		MsgID:      qid,
		From:       ss.from,
		Rcpts:      append([]envelope.Rcpt(nil), ss.rcpts...),
		BodyType:   string(ss.mailOpts.Body),
		SMTPUTF8:   ss.mailOpts.UTF8,
		Ret:        string(ss.mailOpts.Return),
		EnvID:      ss.mailOpts.EnvelopeID,
		RequireTLS: ss.mailOpts.RequireTLS,
		Size:       ss.mailOpts.Size,
		ReceivedAt: now,
		ExpiresAt:  now.Add(s.cfg.Delivery.Expire.D()),
		ClientIP:   ss.ip.String(),
		Helo:       sanitize(ss.conn.Hostname()),
		Source:     "smtp",
	}
	if st, ok := ss.conn.TLSConnectionState(); ok {
		env.TLS = tlsString(st.Version, st.CipherSuite)
	}
	received := ss.received(qid, now, env)

	// Read up to InlineMax+1 bytes to decide inline vs Object Store.
	br := bufio.NewReaderSize(r, 32<<10)
	head := make([]byte, 0, 16<<10)
	head = append(head, received...)
	buf := bytes.NewBuffer(head)
	n, err := io.CopyN(buf, br, envelope.InlineMax+1-int64(len(received)))
	_ = n
	if err != nil && !errors.Is(err, io.EOF) {
		return readErr(err)
	}
	small := errors.Is(err, io.EOF)
	env.Hops = envelope.CountReceived(buf.Bytes())

	ctx, cancel := context.WithTimeout(context.Background(), s.StoreTimeout)
	defer cancel()
	var data []byte
	if small {
		data = buf.Bytes()
		env.Body = envelope.BodyInline
		env.BodySize = int64(len(data))
	} else {
		// Stream the rest straight into the Object Store; the body is
		// never held in memory whole.
		cr := &countingReader{r: io.MultiReader(bytes.NewReader(buf.Bytes()), br)}
		size, err := s.bodies.Put(ctx, qid, cr)
		if cr.err != nil {
			// The client's data failed (too large, connection lost): the
			// Put aborted and purged its chunks.
			_ = s.bodies.Delete(ctx, qid)
			return readErr(cr.err)
		}
		if err != nil {
			return ss.storeErr(qid, err)
		}
		env.Body = envelope.BodyObject
		env.BodySize = size
	}
	msg, err := env.Msg(bus.SubjIn, data)
	if err != nil {
		s.log.Error("envelope rejected", "qid", qid, "err", err)
		return smtpErr(451, smtp.EnhancedCode{4, 3, 0}, "Temporary local problem, try again later")
	}
	if _, err := bus.Publish(ctx, s.js, msg, qid); err != nil {
		if env.Body == envelope.BodyObject {
			_ = s.bodies.Delete(context.Background(), qid)
		}
		return ss.storeErr(qid, err)
	}
	s.log.Info("received", "qid", qid, "client", env.ClientIP, "from", env.From, "rcpts", len(env.Rcpts), "size", env.BodySize)
	return smtpErr(250, smtp.EnhancedCode{2, 0, 0}, "OK queued as "+qid)
}

func (ss *session) storeErr(qid string, err error) error {
	if errors.Is(err, bus.ErrStoreFull) {
		ss.s.log.Error("store full, mail refused", "qid", qid, "err", err)
		return smtpErr(452, smtp.EnhancedCode{4, 3, 1}, "Insufficient system storage")
	}
	ss.s.log.Error("store failed, mail refused", "qid", qid, "err", err)
	return smtpErr(451, smtp.EnhancedCode{4, 3, 0}, "Temporary local problem, try again later")
}

// readErr maps a failure reading DATA to a reply: go-smtp's size limit
// error is already an SMTPError (552 5.3.4).
func readErr(err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se
	}
	if errors.Is(err, smtp.ErrTooLongLine) {
		return smtpErr(500, smtp.EnhancedCode{5, 5, 2}, "Line too long")
	}
	return smtpErr(451, smtp.EnhancedCode{4, 3, 0}, "Error reading message data")
}

type countingReader struct {
	r   io.Reader
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		c.err = err
	}
	return n, err
}

// received renders our Received: trace header (RFC 5321 §4.4).
func (ss *session) received(qid string, now time.Time, env *envelope.Envelope) []byte {
	var b strings.Builder
	helo := env.Helo
	if helo == "" {
		helo = "unknown"
	}
	proto := "ESMTP"
	if env.TLS != "" {
		proto = "ESMTPS"
	}
	fmt.Fprintf(&b, "Received: from %s ([%s])\r\n\tby %s (Mailroot) with %s id %s", helo, env.ClientIP, ss.s.cfg.Hostname, proto, qid)
	if env.TLS != "" {
		fmt.Fprintf(&b, "\r\n\t(%s)", env.TLS)
	}
	if len(env.Rcpts) == 1 {
		fmt.Fprintf(&b, "\r\n\tfor <%s>", env.Rcpts[0].Addr)
	}
	fmt.Fprintf(&b, "; %s\r\n", now.Format(time.RFC1123Z))
	return []byte(b.String())
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
}
