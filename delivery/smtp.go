package delivery

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/dsn"
	"github.com/mailroot/mailroot/internal/envelope"
)

// maxConnects bounds the connections one delivery attempt makes (over all
// MX hosts and their addresses).
const maxConnects = 10

// result is the outcome of one delivery attempt.
type result struct {
	// errs has one entry per recipient of the envelope, in order: nil for a
	// recipient the remote accepted, else why it failed.
	errs []*Error
	// remote names the host that gave the answers, "name[ip]".
	remote string
	// tls describes the session's TLS, "" for plain text.
	tls string
	// dsn is true when the remote advertised DSN (RFC 3461): it takes over
	// success notifications for the recipients it accepted.
	dsn bool
	// reply is the remote's answer to the end of DATA, e.g.
	// "250 2.0.0 OK queued as X".
	reply string
}

// all sets every recipient's result to e.
func all(n int, e *Error) result {
	r := result{errs: make([]*Error, n), remote: e.Remote}
	for i := range r.errs {
		r.errs[i] = e
	}
	return r
}

// bodyFunc opens the message body; it may be called once per connection.
type bodyFunc func(ctx context.Context) (io.ReadCloser, error)

// deliver makes one delivery attempt for env: resolve, then try the hosts
// in order until one gives definitive per-recipient answers.
func (s *Service) deliver(ctx context.Context, env *envelope.Envelope, domain string, body bodyFunc) result {
	n := len(env.Rcpts)
	targets, rerr := s.resolve(ctx, domain)
	if rerr != nil {
		return all(n, rerr)
	}
	var lastTemp, lastPerm *Error
	note := func(e *Error) {
		if e.Permanent {
			lastPerm = e
		} else {
			lastTemp = e
		}
	}
	var loop *Error
	connects := 0
	d, _ := s.cfg.Domain(domain)
	requireTLS := d.RequireTLS
targets:
	for _, t := range targets {
		if connects >= maxConnects || ctx.Err() != nil {
			break
		}
		addrs := t.addrs
		if addrs == nil {
			var err error
			addrs, err = s.dns.addrs(ctx, t.host)
			switch {
			case isNegative(err):
				note(tempErr("4.4.4", "", err, "mail host %s has no address", t.host))
				continue
			case err != nil:
				note(tempErr("4.4.3", "", err, "dns: %v", err))
				continue
			}
		}
		for _, ip := range addrs {
			if why := s.self.is(ctx, ip, t.port); why != "" {
				// This host and every less preferred one would be
				// ourselves again (RFC 5321 §5.1).
				loop = loopErr(domain, t, ip, why)
				break targets
			}
			if connects >= maxConnects || ctx.Err() != nil {
				break
			}
			connects++
			res, herr := s.tryHost(ctx, t, ip, env, body, false, requireTLS)
			if herr == nil {
				return res
			}
			s.log.Debug("host failed", "qid", env.QueueID, "remote", herr.Remote, "err", herr.Error())
			note(herr)
		}
	}
	switch {
	case ctx.Err() != nil:
		return all(n, tempErr("4.4.2", "", ctx.Err(), "delivery interrupted: %v", ctx.Err()))
	case lastTemp != nil:
		return all(n, lastTemp)
	case lastPerm != nil:
		return all(n, lastPerm)
	case loop != nil:
		return all(n, loop)
	default:
		return all(n, tempErr("4.4.1", "", nil, "no mail host could be reached for %s", domain))
	}
}

// loopErr is the permanent failure of mail whose destination is this
// server: it names the domain, the host and the address that points back.
func loopErr(domain string, t target, ip netip.Addr, why string) *Error {
	host := t.kind + " " + t.host
	if t.kind == "address literal" {
		return permErr("5.4.6", "", "mail for %s loops back to myself: the address literal %s is %s", domain, domain, why)
	}
	return permErr("5.4.6", "", "mail for %s loops back to myself: %s has address %s, %s", domain, host, ip, why)
}

// errTLSFailed means the STARTTLS handshake failed; the caller retries the
// host over a fresh plain-text connection.
var errTLSFailed = errors.New("delivery: STARTTLS handshake failed")

// tryHost runs one SMTP transaction with t at ip. A nil *Error means the
// result holds definitive per-recipient answers; otherwise the host failed
// as a whole (connection, greeting, EHLO, 4xx to MAIL, ...) and the next
// one should be tried.
//
// With requireTLS (the domain's require_tls) a host that does not offer
// STARTTLS, or whose handshake fails, is a temporary failure, as Postfix's
// "encrypt" security level: the mail waits rather than travel in clear.
func (s *Service) tryHost(ctx context.Context, t target, ip netip.Addr, env *envelope.Envelope, body bodyFunc, plain, requireTLS bool) (result, *Error) {
	remote := remoteName(t.host, ip)
	c, tlsDesc, herr := s.open(ctx, t, ip, remote, plain)
	if herr != nil && errors.Is(herr.Err, errTLSFailed) && !requireTLS {
		s.log.Info("STARTTLS failed, retrying in plain text", "qid", env.QueueID, "remote", remote, "err", herr.Err)
		return s.tryHost(ctx, t, ip, env, body, true, false)
	}
	if herr != nil {
		return result{}, herr
	}
	defer c.Close()
	if requireTLS && tlsDesc == "" {
		_ = c.Quit()
		return result{}, &Error{Enhanced: "4.7.10", Message: fmt.Sprintf("TLS is required for %s, but %s did not offer STARTTLS", env.Domain, remote), Remote: remote}
	}
	res, herr := s.transact(ctx, c, env, remote, tlsDesc != "", body)
	if herr != nil {
		return result{}, herr
	}
	res.remote, res.tls = remote, tlsDesc
	_ = c.Quit()
	return res, nil
}

// open connects, reads the greeting, says EHLO and upgrades to TLS when
// offered, and returns a go-smtp client that has said EHLO (again) as
// cfg.Hostname. go-smtp v0.25 has no StartTLS on an open client, and its
// NewClientStartTLS would say "EHLO localhost" first, so the plain-text
// start of the session is done here and the client is handed the
// connection with the greeting already read.
func (s *Service) open(ctx context.Context, t target, ip netip.Addr, remote string, plain bool) (*smtp.Client, string, *Error) {
	addr := net.JoinHostPort(ip.String(), strconv.Itoa(t.port))
	dctx, cancel := context.WithTimeout(ctx, s.cfg.Delivery.ConnectTimeout.D())
	raw, err := s.Dial(dctx, "tcp", addr)
	cancel()
	if err != nil {
		return nil, "", tempErr("4.4.1", remote, err, "connect: %v", err)
	}
	// Shutdown or cancellation closes the connection, which ends any
	// blocked read or write at once.
	stop := context.AfterFunc(ctx, func() { _ = raw.Close() })
	fail := func(e *Error) (*smtp.Client, string, *Error) {
		stop()
		_ = raw.Close()
		return nil, "", e
	}
	cmdTimeout := s.cfg.Delivery.CommandTimeout.D()
	tp := textproto.NewConn(raw)
	step := func(expect int, format string, args ...any) (string, error) {
		_ = raw.SetDeadline(time.Now().Add(cmdTimeout))
		defer func() { _ = raw.SetDeadline(time.Time{}) }()
		if format != "" {
			if err := tp.PrintfLine(format, args...); err != nil {
				return "", err
			}
		}
		_, msg, err := tp.ReadResponse(expect)
		return msg, err
	}
	asErr := func(err error, during string) *Error {
		var pe *textproto.Error
		if errors.As(err, &pe) {
			return parseReply(pe.Code, pe.Msg, remote)
		}
		return tempErr("4.4.2", remote, err, "%s: %v", during, err)
	}

	if _, err := step(220, ""); err != nil {
		return fail(asErr(err, "greeting"))
	}
	conn, tlsDesc := raw, ""
	msg, err := step(250, "EHLO %s", s.cfg.Hostname)
	var pe *textproto.Error
	switch {
	case errors.As(err, &pe) && (pe.Code == 500 || pe.Code == 502):
		// No ESMTP: the go-smtp client falls back to HELO below.
	case err != nil:
		return fail(asErr(err, "EHLO"))
	case !plain && hasExtension(msg, "STARTTLS"):
		if _, err := step(220, "STARTTLS"); err != nil {
			if !errors.As(err, &pe) {
				return fail(asErr(err, "STARTTLS"))
			}
			// Refused: the session goes on in plain text.
			break
		}
		if tp.R.Buffered() > 0 {
			// Data sent before the handshake could be injected
			// plain-text commands (CVE-2011-0411 style): don't use it.
			return fail(&Error{Enhanced: "4.7.0", Message: "STARTTLS: data before TLS handshake", Remote: remote, Err: errTLSFailed})
		}
		// Opportunistic TLS (RFC 3207) without DANE or MTA-STS: the
		// certificate is not verified, since refusing an unverifiable one
		// would only push the mail to plain text. This protects against
		// passive eavesdropping, not an active attacker.
		tc := tls.Client(raw, &tls.Config{
			ServerName:         sniName(t.host),
			InsecureSkipVerify: true, //nolint:gosec // opportunistic TLS, see above
			MinVersion:         tls.VersionTLS12,
		})
		_ = raw.SetDeadline(time.Now().Add(cmdTimeout))
		if err := tc.HandshakeContext(ctx); err != nil {
			return fail(&Error{Enhanced: "4.7.0", Message: "STARTTLS: " + oneLine(err.Error()), Remote: remote, Err: errTLSFailed})
		}
		_ = raw.SetDeadline(time.Time{})
		st := tc.ConnectionState()
		conn, tlsDesc = tc, tls.VersionName(st.Version)+" "+tls.CipherSuiteName(st.CipherSuite)
	}
	// Hand over to go-smtp: it reads a greeting first, so give it one,
	// followed by anything still buffered from the plain-text phase.
	pending := []byte("220 " + t.host + " ESMTP\r\n")
	if conn == raw && tp.R.Buffered() > 0 {
		b, _ := tp.R.Peek(tp.R.Buffered())
		pending = append(pending, b...)
	}
	c := smtp.NewClient(&greetedConn{Conn: conn, pending: pending, stop: stop})
	c.CommandTimeout = cmdTimeout
	// RFC 5321 §4.5.3.2.6 allows 10 minutes after the final dot, twice
	// the 5 minutes of a command.
	c.SubmissionTimeout = 2 * cmdTimeout
	if err := c.Hello(s.cfg.Hostname); err != nil {
		_ = c.Close()
		return nil, "", replyErr(err, remote, "EHLO")
	}
	return c, tlsDesc, nil
}

// transact runs MAIL, RCPT for every recipient and DATA. A non-nil *Error
// is a host failure (try the next host); otherwise the result is
// definitive.
func (s *Service) transact(ctx context.Context, c *smtp.Client, env *envelope.Envelope, remote string, isTLS bool, body bodyFunc) (result, *Error) {
	n := len(env.Rcpts)
	res := result{errs: make([]*Error, n)}

	opts := &smtp.MailOptions{
		Body:       smtp.BodyType(env.BodyType),
		Size:       env.BodySize,
		Return:     smtp.DSNReturn(env.Ret),
		EnvelopeID: decodeXtext(env.EnvID),
	}
	if limit, ok := c.MaxMessageSize(); ok && limit > 0 && env.BodySize > int64(limit) {
		return all(n, permErr("5.3.4", remote, "message of %d bytes is larger than the remote's limit of %d", env.BodySize, limit)), nil
	}
	if env.SMTPUTF8 {
		if ok, _ := c.Extension("SMTPUTF8"); ok {
			opts.UTF8 = true
		} else if needsUTF8(env) {
			return result{}, permErr("5.6.7", remote, "remote does not support SMTPUTF8, needed for a non-ASCII address")
		}
	}
	if env.RequireTLS {
		if ok, _ := c.Extension("REQUIRETLS"); !ok || !isTLS {
			return result{}, permErr("5.7.30", remote, "REQUIRETLS needed but not offered over TLS")
		}
		opts.RequireTLS = true
	}
	if err := c.Mail(env.From, opts); err != nil {
		e := replyErr(err, remote, "MAIL FROM")
		if !e.Permanent {
			return result{}, e
		}
		return all(n, e), nil
	}
	accepted := 0
	for i, r := range env.Rcpts {
		if err := c.Rcpt(r.Addr, rcptOptions(r)); err != nil {
			var se *smtp.SMTPError
			if !errors.As(err, &se) {
				return result{}, replyErr(err, remote, "RCPT TO")
			}
			res.errs[i] = replyErr(err, remote, "RCPT TO")
			continue
		}
		accepted++
	}
	if accepted == 0 {
		return res, nil
	}
	rc, err := body(ctx)
	if err != nil {
		e := tempErr("4.3.0", "", err, "message body unavailable: %v", err)
		if errors.Is(err, jetstream.ErrObjectNotFound) {
			e = permErr("5.3.0", "", "message body lost: %v", err)
		}
		return fill(res, e), nil
	}
	defer rc.Close()
	w, err := c.Data()
	if err != nil {
		e := replyErr(err, remote, "DATA")
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			return result{}, e
		}
		return fill(res, e), nil
	}
	if _, err := io.Copy(w, rc); err != nil {
		return result{}, tempErr("4.4.2", remote, err, "sending message: %v", err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		// A reply to the final dot, or no reply at all: either way the
		// answer is final for this attempt; trying another host now
		// would risk a duplicate right away.
		return fill(res, replyErr(err, remote, "end of DATA")), nil
	}
	res.dsn, _ = c.Extension("DSN")
	res.reply = oneLine("250 " + resp.StatusText)
	return res, nil
}

// fill sets e for every recipient still marked as accepted.
func fill(res result, e *Error) result {
	for i := range res.errs {
		if res.errs[i] == nil {
			res.errs[i] = e
		}
	}
	return res
}

// rcptOptions maps the envelope's DSN parameters; go-smtp sends them only
// when the remote advertises DSN.
func rcptOptions(r envelope.Rcpt) *smtp.RcptOptions {
	o := &smtp.RcptOptions{}
	never := false
	for _, n := range r.Notify {
		never = never || n == "NEVER"
		o.Notify = append(o.Notify, smtp.DSNNotify(n))
	}
	if never && len(r.Notify) > 1 {
		o.Notify = nil // invalid combination, leave it out
	}
	if typ, val, ok := strings.Cut(r.ORcpt, ";"); ok {
		addr := decodeXtext(val)
		switch strings.ToLower(typ) {
		case "rfc822":
			if isPrintableASCII(addr) {
				o.OriginalRecipientType, o.OriginalRecipient = smtp.DSNAddressTypeRFC822, addr
			}
		case "utf-8":
			if a, ok := decodeUTF8Addr(val); ok {
				o.OriginalRecipientType, o.OriginalRecipient = smtp.DSNAddressTypeUTF8, a
			}
		}
	}
	return o
}

// decodeXtext and decodeUTF8Addr decode the DSN parameters' encodings
// (RFC 3461 xtext, RFC 6533 utf-8-addr-xtext).
var (
	decodeXtext    = dsn.DecodeXtext
	decodeUTF8Addr = dsn.DecodeUTF8Addr
)

func isPrintableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// needsUTF8 reports whether an envelope address is not ASCII, so the
// message cannot go to a server without SMTPUTF8.
func needsUTF8(env *envelope.Envelope) bool {
	if !isPrintableASCII(env.From) {
		return true
	}
	for _, r := range env.Rcpts {
		if !isPrintableASCII(r.Addr) {
			return true
		}
	}
	return false
}

// hasExtension looks for ext in an EHLO reply text (first line is the
// greeting, then one keyword line each).
func hasExtension(msg, ext string) bool {
	lines := strings.Split(msg, "\n")
	for _, l := range lines[1:] {
		kw, _, _ := strings.Cut(strings.TrimSpace(l), " ")
		if strings.EqualFold(kw, ext) {
			return true
		}
	}
	return false
}

// sniName is host for TLS SNI, or "" for an IP (SNI cannot carry one).
func sniName(host string) string {
	if _, err := netip.ParseAddr(host); err == nil {
		return ""
	}
	return host
}

// greetedConn replays pending bytes before reading from the connection,
// and releases the cancellation hook when closed.
type greetedConn struct {
	net.Conn
	pending []byte
	stop    func() bool
}

func (g *greetedConn) Read(p []byte) (int, error) {
	if len(g.pending) > 0 {
		n := copy(p, g.pending)
		g.pending = g.pending[n:]
		return n, nil
	}
	return g.Conn.Read(p)
}

func (g *greetedConn) Close() error {
	g.stop()
	return g.Conn.Close()
}

var _ net.Conn = (*greetedConn)(nil)

// describe renders the recipients for logs.
func describe(rs []envelope.Rcpt) string {
	a := make([]string, len(rs))
	for i, r := range rs {
		a[i] = r.Addr
	}
	return strings.Join(a, ",")
}
