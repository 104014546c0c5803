package smtpclient

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/dsn"
	"github.com/mailroot/mailroot/internal/envelope"
)

// ErrTLSFailed means the STARTTLS handshake failed; the caller may retry
// the host over a fresh plain-text connection.
var ErrTLSFailed = errors.New("smtpclient: STARTTLS handshake failed")

// ErrStale means a session taken from a Pool was closed by the remote
// while it was idle: its first command (MAIL) got no reply or a 421.
// Nothing of the message was answered, so the caller retries it on a
// fresh connection, and the failure counts for nothing.
var ErrStale = errors.New("smtpclient: cached connection closed by the remote")

// Options configure a session.
type Options struct {
	// Hostname is said in EHLO/HELO.
	Hostname string
	// CommandTimeout bounds each command; the end of the message gets
	// twice as long (RFC 5321 §4.5.3.2.6: 10 minutes after the final dot,
	// 5 for a command).
	CommandTimeout time.Duration
	// ConnectTimeout bounds Dial's connect.
	ConnectTimeout time.Duration
	// Plain skips STARTTLS (a retry after a failed handshake).
	Plain bool
	// ImplicitTLS starts TLS as soon as the connection is made (port 465,
	// RFC 8314) instead of by STARTTLS.
	ImplicitTLS bool
	// Auth, when set, logs in after EHLO (a smart host's submission
	// service), only over TLS whose certificate verified unless
	// AuthInsecure.
	Auth         *Auth
	AuthInsecure bool
	// Roots verify the server's certificate (nil: the system's roots).
	// A certificate that fails does not stop the session: the caller
	// decides by Verified whether its mail may use it.
	Roots *x509.CertPool
	// Verify, when set, replaces the check of the server's certificate
	// against Roots for the host name (WebPKI, RFC 7817 §3): it returns ""
	// when the session is verified, else why not (DANE, RFC 7672, checks
	// TLSA records instead). Verifier names the check; it becomes the
	// session's Dest.Verifier, so a Pool never hands a session verified
	// one way to mail that needs another. Both empty: WebPKI.
	Verify   func(host string, st tls.ConnectionState) string
	Verifier string
}

// Auth is a login for AUTH PLAIN, or AUTH LOGIN when PLAIN is not
// offered.
type Auth struct {
	User, Password string
}

// ErrAuth marks the failure of a login: the server refused it, or the
// session was not safe to send the password over.
var ErrAuth = errors.New("smtpclient: login failed")

// Client is one SMTP session, past EHLO (and STARTTLS when offered).
// go-smtp's client runs EHLO and QUIT and keeps the EHLO keywords; the
// transaction (RSET, MAIL, RCPT, DATA and the content, BDAT) is written
// here on the same connection and its replies read by text, pipelined
// when the server offers PIPELINING (see exchange). go-smtp's reader only
// ever reads the one reply to a command of its own, so the two readers
// never hold each other's bytes.
//
// A session that Dial opened can serve several messages, one after the
// other, through a Pool; the keywords of its EHLO reply stay those of the
// connection, so every Send decides BODY=, SIZE, DSN, REQUIRETLS and
// SMTPUTF8 by what this server said on this connection.
type Client struct {
	c       *smtp.Client
	conn    net.Conn // the session's connection, TLS or not
	tcp     net.Conn // the connection underneath: closing it interrupts the session
	text    *textproto.Reader
	remote  string
	tlsDesc string
	isTLS   bool
	// verified tells whether the server's certificate chains to the roots
	// and names the host; verifyErr says why not.
	verified  bool
	verifyErr string
	timeout   time.Duration

	// dest is where Dial connected and as whom; zero for New's sessions,
	// which are never cached.
	dest Dest
	// born is when the connection was made; txns counts the MAIL commands
	// sent on it.
	born time.Time
	txns int
	// broken is set once the session cannot be trusted with another
	// message: a reply not read, a 421, a network or protocol error.
	broken bool
	// pooled is true from a Pool's Get until the first command: a
	// connection the remote closed while it was idle fails there
	// (ErrStale).
	pooled bool
	// stop releases the hook that closes tcp when the caller's context
	// ends; nil when there is none.
	stop func() bool
	// bw buffers the message content on its way out (data).
	bw *bufio.Writer
}

// Remote names the server, "name[ip]".
func (c *Client) Remote() string { return c.remote }

// TLS describes the session's TLS, "" for plain text: version, cipher
// suite, and whether the certificate was verified ("TLS 1.3
// TLS_AES_128_GCM_SHA256 verified", or "... unverified: <why>").
func (c *Client) TLS() string {
	switch {
	case !c.isTLS || c.tlsDesc == "":
		return c.tlsDesc
	case c.verified:
		return c.tlsDesc + " verified"
	default:
		return c.tlsDesc + " unverified: " + c.verifyErr
	}
}

// Verified reports whether the session is TLS with a certificate that
// chains to the roots and names the host it was dialled as.
func (c *Client) Verified() bool { return c.isTLS && c.verified }

// VerifyError says why the certificate was not verified ("" when it was,
// or for plain text).
func (c *Client) VerifyError() string { return c.verifyErr }

// Quit says QUIT and closes the connection.
func (c *Client) Quit() { _ = c.c.Quit(); c.Close() }

// Close closes the connection without QUIT.
func (c *Client) Close() {
	c.release()
	_ = c.c.Close()
}

// quitWithin says QUIT, waiting at most d for the reply, and closes the
// connection: how a Pool ends the sessions it no longer keeps.
func (c *Client) quitWithin(d time.Duration) {
	if !c.broken {
		_, _ = c.raw(221, d, []byte("QUIT\r\n"))
	}
	c.Close()
}

// bind makes the end of ctx close the connection, as Dial's ctx does.
func (c *Client) bind(ctx context.Context) {
	c.release()
	tcp := c.tcp
	c.stop = context.AfterFunc(ctx, func() { _ = tcp.Close() })
}

// release undoes bind; false means the context ended first and the
// connection is closed (or closing).
func (c *Client) release() bool {
	if c.stop == nil {
		return true
	}
	ok := c.stop()
	c.stop = nil
	return ok
}

// New starts a session on conn, whose peer has yet to send its greeting
// (ATRN hands over its turned connection). isTLS tells whether conn is
// already encrypted. Such a session is never cached by a Pool.
func New(conn net.Conn, remote string, isTLS bool, o Options) (*Client, *Error) {
	c, e := hello(conn, remote, "", isTLS, o)
	if c != nil {
		c.tcp = conn
	}
	return c, e
}

func hello(conn net.Conn, remote, tlsDesc string, isTLS bool, o Options) (*Client, *Error) {
	sc := smtp.NewClient(conn)
	sc.CommandTimeout = o.CommandTimeout
	sc.SubmissionTimeout = 2 * o.CommandTimeout
	if err := sc.Hello(o.Hostname); err != nil {
		_ = sc.Close()
		return nil, ReplyErr(err, remote, "EHLO")
	}
	return &Client{c: sc, conn: conn, text: textproto.NewReader(bufio.NewReader(conn)), remote: remote,
		tlsDesc: tlsDesc, isTLS: isTLS, timeout: o.CommandTimeout, born: time.Now()}, nil
}

// Dial connects to addr (host names the server for SNI), reads the
// greeting, says EHLO and upgrades to TLS when offered. go-smtp v0.25 has
// no StartTLS on an open client, and its NewClientStartTLS would say "EHLO
// localhost" first, so the plain-text start of the session is done here
// and go-smtp is handed the connection with the greeting already read.
// Cancelling ctx closes the connection.
func Dial(ctx context.Context, dial func(ctx context.Context, network, addr string) (net.Conn, error), addr, host, remote string, o Options) (*Client, *Error) {
	dctx, cancel := context.WithTimeout(ctx, o.ConnectTimeout)
	raw, err := dial(dctx, "tcp", addr)
	cancel()
	if err != nil {
		return nil, TempErr("4.4.1", remote, err, "connect: %v", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = raw.Close() })
	fail := func(e *Error) (*Client, *Error) {
		stop()
		_ = raw.Close()
		return nil, e
	}
	conn, tlsDesc, verifyErr := raw, "", ""
	handshake := func() *Error {
		// The handshake accepts any certificate, which is verified after
		// it: opportunistic TLS (RFC 3207) still protects against passive
		// eavesdropping when the certificate cannot be verified, and the
		// caller decides by Verified whether a message may use the
		// session (require_tls, REQUIRETLS, later MTA-STS and DANE).
		tc := tls.Client(raw, &tls.Config{
			ServerName:         sniName(host),
			InsecureSkipVerify: true, //nolint:gosec // verified below, see above
			MinVersion:         tls.VersionTLS12,
		})
		_ = raw.SetDeadline(time.Now().Add(o.CommandTimeout))
		if err := tc.HandshakeContext(ctx); err != nil {
			return &Error{Enhanced: "4.7.0", Message: "TLS handshake: " + OneLine(err.Error()), Remote: remote, Err: ErrTLSFailed}
		}
		_ = raw.SetDeadline(time.Time{})
		st := tc.ConnectionState()
		conn, tlsDesc = tc, tls.VersionName(st.Version)+" "+tls.CipherSuiteName(st.CipherSuite)
		if o.Verify != nil {
			verifyErr = o.Verify(host, st)
		} else {
			verifyErr = verifyPeer(st, host, o.Roots)
		}
		return nil
	}
	if o.ImplicitTLS {
		if e := handshake(); e != nil {
			return fail(e)
		}
	}
	tp := textproto.NewConn(conn)
	step := func(expect int, format string, args ...any) (string, error) {
		_ = raw.SetDeadline(time.Now().Add(o.CommandTimeout))
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
			return ParseReply(pe.Code, pe.Msg, remote)
		}
		return ReplyErr(err, remote, during)
	}

	if _, err := step(220, ""); err != nil {
		return fail(asErr(err, "greeting"))
	}
	msg, err := step(250, "EHLO %s", o.Hostname)
	var pe *textproto.Error
	switch {
	case errors.As(err, &pe) && (pe.Code == 500 || pe.Code == 502):
		// No ESMTP: the go-smtp client falls back to HELO below.
	case err != nil:
		return fail(asErr(err, "EHLO"))
	case !o.Plain && !o.ImplicitTLS && hasExtension(msg, "STARTTLS"):
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
			return fail(&Error{Enhanced: "4.7.0", Message: "STARTTLS: data before TLS handshake", Remote: remote, Err: ErrTLSFailed})
		}
		if e := handshake(); e != nil {
			e.Message = "STARTTLS: " + strings.TrimPrefix(e.Message, "TLS handshake: ")
			return fail(e)
		}
	}
	// Hand over to go-smtp: it reads a greeting first, so give it one,
	// followed by anything still buffered from the plain-text phase.
	pending := []byte("220 " + host + " ESMTP\r\n")
	if conn == raw && tp.R.Buffered() > 0 {
		b, _ := tp.R.Peek(tp.R.Buffered())
		pending = append(pending, b...)
	}
	c, e := hello(&greetedConn{Conn: conn, pending: pending}, remote, tlsDesc, tlsDesc != "", o)
	if e != nil {
		return fail(e)
	}
	c.verified, c.verifyErr = tlsDesc != "" && verifyErr == "", verifyErr
	if o.Auth != nil {
		if e := c.login(o); e != nil {
			c.Close()
			stop()
			return nil, e
		}
		c.dest.User = o.Auth.User
	}
	// The session stays bound to ctx until it is closed or a Pool takes
	// it (Put), which binds it to the context of each later user.
	c.tcp, c.stop = raw, stop
	c.dest.Addr, c.dest.Host, c.dest.Hostname, c.dest.Verifier = addr, host, o.Hostname, o.Verifier
	return c, nil
}

// login says AUTH with o.Auth: PLAIN, or LOGIN when only that is
// offered. The password is sent only over TLS whose certificate verified,
// unless o.AuthInsecure. A failure is temporary (the login may be fixed,
// or the server back to normal), carries the server's reply, and wraps
// ErrAuth.
func (c *Client) login(o Options) *Error {
	refuse := func(why string) *Error {
		return &Error{Enhanced: "4.7.0", Message: why, Remote: c.remote, Err: ErrAuth}
	}
	switch {
	case !c.isTLS && !o.AuthInsecure:
		return refuse("not logging in to " + c.remote + " in plain text (it offered no TLS); smart_host_insecure = true allows it")
	case !c.verified && !o.AuthInsecure:
		return refuse("not logging in to " + c.remote + ": its certificate could not be verified: " + c.verifyErr + "; smart_host_insecure = true allows it")
	}
	ok, mechs := c.c.Extension("AUTH")
	if !ok {
		return refuse(c.remote + " does not offer AUTH, and a login is configured for it")
	}
	var client sasl.Client
	for _, m := range strings.Fields(strings.ToUpper(mechs)) {
		if m == sasl.Plain {
			client = sasl.NewPlainClient("", o.Auth.User, o.Auth.Password)
			break
		}
		if m == sasl.Login {
			client = sasl.NewLoginClient(o.Auth.User, o.Auth.Password)
		}
	}
	if client == nil {
		return refuse(c.remote + " offers AUTH " + mechs + ", neither PLAIN nor LOGIN")
	}
	if err := c.c.Auth(client); err != nil {
		// The server's reply is kept as it was (535 5.7.8 ...), yet the
		// mail waits: a refused login is the sender's configuration to
		// fix, or the smart host's hiccup, not the recipient's fault.
		e := ReplyErr(err, c.remote, "AUTH")
		e.Permanent = false
		e.Message = "login as " + o.Auth.User + " refused: " + e.Message
		e.Err = fmt.Errorf("%w: %w", ErrAuth, cmp.Or(e.Err, errors.New(e.Message)))
		return e
	}
	return nil
}

// Result is the outcome of a transaction the server answered.
type Result struct {
	// Errs has one entry per recipient of the envelope, in order: nil for
	// a recipient the server accepted, else why it failed.
	Errs []*Error
	// DSN is true when the server advertised DSN (RFC 3461): it takes
	// over success notifications for the recipients it accepted.
	DSN bool
	// Reply is the server's answer to the end of the message, e.g.
	// "250 2.0.0 OK queued as X".
	Reply string
}

// All is a Result with e for every one of n recipients.
func All(n int, e *Error) Result {
	r := Result{Errs: make([]*Error, n)}
	for i := range r.Errs {
		r.Errs[i] = e
	}
	return r
}

// fill sets e for every recipient still marked as accepted.
func (r Result) fill(e *Error) Result {
	for i := range r.Errs {
		if r.Errs[i] == nil {
			r.Errs[i] = e
		}
	}
	return r
}

// BodyFunc opens the message body, once the server accepted a recipient;
// its *Error is given to every accepted recipient.
type BodyFunc func(ctx context.Context) (io.ReadCloser, *Error)

// chunkSize is the size of a BDAT chunk.
const chunkSize = 1 << 20

// Send runs one transaction for env: MAIL, RCPT for every recipient, then
// DATA, or BDAT for BODY=BINARYMIME. A non-nil *Error is a failure of the
// host as a whole for this message (no recipient was answered; with
// Broken set the connection is gone); otherwise the Result is definitive.
// A session stays usable for another Send after any Result.
//
// An 8BITMIME message to a server that does not offer 8BITMIME is
// refused with 5.6.3 (as mox does) rather than converted to
// quoted-printable as Postfix does: a conversion would rewrite MIME
// structure and break signatures; BINARYMIME without CHUNKING and
// BINARYMIME is refused likewise (RFC 3030 §3).
func (c *Client) Send(ctx context.Context, env *envelope.Envelope, body BodyFunc) (Result, *Error) {
	n := len(env.Rcpts)
	res := Result{Errs: make([]*Error, n)}
	remote := c.remote
	ext := func(name string) bool { ok, _ := c.c.Extension(name); return ok }

	if limit, ok := c.c.MaxMessageSize(); ok && limit > 0 && env.BodySize > int64(limit) {
		return All(n, PermErr("5.3.4", remote, "message of %d bytes is larger than the remote's limit of %d", env.BodySize, limit)), nil
	}
	bodyType := strings.ToUpper(env.BodyType)
	binary := bodyType == string(smtp.BodyBinaryMIME)
	switch {
	case binary && !(ext("CHUNKING") && ext("BINARYMIME")):
		return Result{}, PermErr("5.6.3", remote, "message is binary (BODY=BINARYMIME) and the remote does not offer BINARYMIME with CHUNKING")
	case bodyType == string(smtp.Body8BitMIME) && !ext("8BITMIME"):
		return Result{}, PermErr("5.6.3", remote, "message is 8-bit (BODY=8BITMIME) and the remote does not offer 8BITMIME; it is not converted")
	}
	params := []string{}
	if bodyType != "" && (ext("8BITMIME") || binary) {
		params = append(params, "BODY="+bodyType)
	}
	if ext("SIZE") && env.BodySize > 0 {
		params = append(params, fmt.Sprintf("SIZE=%d", env.BodySize))
	}
	if env.RequireTLS {
		if !ext("REQUIRETLS") || !c.isTLS {
			return Result{}, PermErr("5.7.30", remote, "REQUIRETLS needed but not offered over TLS")
		}
		params = append(params, "REQUIRETLS")
	}
	if env.SMTPUTF8 {
		if ext("SMTPUTF8") {
			params = append(params, "SMTPUTF8")
		} else if needsUTF8(env) {
			return Result{}, PermErr("5.6.7", remote, "remote does not support SMTPUTF8, needed for a non-ASCII address")
		}
	}
	if ext("DSN") {
		if r := strings.ToUpper(env.Ret); r == "FULL" || r == "HDRS" {
			params = append(params, "RET="+r)
		}
		// The envelope stores ENVID as xtext: decoded once, encoded once.
		if id := dsn.DecodeXtext(env.EnvID); id != "" && isPrintableASCII(id) {
			params = append(params, "ENVID="+dsn.EncodeXtext(id))
		}
	}
	if strings.ContainsAny(env.From, "\r\n") {
		return All(n, PermErr("5.1.7", remote, "bad sender address")), nil
	}
	cmd := "MAIL FROM:<" + env.From + ">"
	if len(params) > 0 {
		cmd += " " + strings.Join(params, " ")
	}
	pooled := c.pooled
	c.pooled = false
	c.txns++
	x := &exchange{c: c, pipe: ext("PIPELINING")}
	if pooled {
		// A session taken from a Pool starts with RSET, as Postfix does
		// when it reuses a cached session: it rolls back anything left
		// open and proves the connection alive before the message is
		// committed to it; pipelined, it costs no round trip.
		x.add("RSET", 250, min(c.timeout, rsetTimeout))
	}
	x.add(cmd, 250, c.timeout)
	bad := make([]bool, n)
	for i, r := range env.Rcpts {
		if bad[i] = strings.ContainsAny(r.Addr, "\r\n"); !bad[i] {
			x.add("RCPT TO:<"+r.Addr+">"+rcptParams(r, ext("DSN")), 250, c.timeout)
		}
	}
	if !binary {
		x.add("DATA", 354, c.timeout)
	}
	if pooled {
		if _, err := x.reply(); err != nil {
			// The remote closed the idle connection (or says it is about
			// to, or will not reset): nothing of this message was
			// answered, and the session is not used again.
			e := c.note(ReplyErr(err, remote, "RSET"))
			c.broken = true
			e.Err = fmt.Errorf("%w: %w", ErrStale, e.Err)
			return Result{}, e
		}
	}
	if _, err := x.reply(); err != nil {
		e := c.note(ReplyErr(err, remote, "MAIL FROM"))
		if e.Broken || !x.drain() || !e.Permanent {
			return Result{}, e
		}
		return All(n, e), nil
	}
	accepted := 0
	for i := range env.Rcpts {
		if bad[i] {
			res.Errs[i] = PermErr("5.1.3", remote, "bad recipient address")
			continue
		}
		if _, err := x.reply(); err != nil {
			e := c.note(ReplyErr(err, remote, "RCPT TO"))
			if e.Broken {
				return Result{}, e
			}
			res.Errs[i] = e
			continue
		}
		accepted++
	}
	var rc io.ReadCloser
	var berr *Error
	if accepted > 0 {
		if rc, berr = body(ctx); rc != nil {
			defer rc.Close()
		}
	}
	if (binary || !x.pipe) && (accepted == 0 || berr != nil) {
		// Nothing to send, and no DATA on the wire yet.
		c.reset()
		return res.fill(berr), nil
	}
	if binary {
		// BDAT follows.
	} else if _, err := x.reply(); err != nil {
		e := c.note(ReplyErr(err, remote, "DATA"))
		if e.Broken {
			return Result{}, e
		}
		c.reset()
		if accepted == 0 || berr != nil {
			return res.fill(berr), nil
		}
		return res.fill(e), nil
	} else if accepted == 0 || berr != nil {
		// 354 with no recipient accepted (a server outside RFC 2920
		// §3.1) or no body to send: only a dropped connection ends
		// the content without delivering an empty message.
		c.broken = true
		c.Close()
		if berr == nil {
			return res, nil
		}
		return res.fill(berr), nil
	}
	send := c.data
	if binary {
		send = c.bdat
	}
	reply, e, final := send(rc)
	switch {
	case e != nil && !final:
		return Result{}, e
	case e != nil:
		return res.fill(e), nil
	}
	res.DSN = ext("DSN")
	res.Reply = OneLine("250 " + reply)
	return res, nil
}

// exchange runs the commands of one transaction: with PIPELINING (RFC
// 2920) every queued command goes out in one write before the first reply
// is read (RSET, MAIL, RCPT and DATA: one round trip), otherwise each
// command is written just before its reply is read, so that nothing is
// sent after a reply that should stop the transaction.
type exchange struct {
	c       *Client
	pipe    bool
	cmds    []string
	expects []int           // the reply code each command wants
	waits   []time.Duration // how long each reply may take
	written int             // commands on the wire
	read    int             // replies read
}

func (x *exchange) add(cmd string, expect int, wait time.Duration) {
	x.cmds = append(x.cmds, cmd)
	x.expects = append(x.expects, expect)
	x.waits = append(x.waits, wait)
}

// reply reads the reply to the next command, writing first what must be
// on the wire by then; a reply other than the one the command wants is an
// *smtp.SMTPError.
func (x *exchange) reply() (string, error) {
	upto := x.read + 1
	if x.pipe {
		upto = len(x.cmds)
	}
	if x.written < upto {
		var b []byte
		for _, cmd := range x.cmds[x.written:upto] {
			b = append(b, cmd...)
			b = append(b, '\r', '\n')
		}
		x.written = upto
		_ = x.c.conn.SetWriteDeadline(time.Now().Add(x.c.timeout))
		if _, err := x.c.conn.Write(b); err != nil {
			return "", err
		}
	}
	i := x.read
	x.read++
	return x.c.readReply(x.expects[i], x.waits[i])
}

// drain reads the replies of commands already written (pipelined after a
// refused MAIL), which are expected to fail; false if the connection broke
// meanwhile, or if a DATA was answered 354 anyway (the server now waits
// for content: only closing the connection ends that).
func (x *exchange) drain() bool {
	for x.read < x.written {
		want := x.expects[x.read]
		_, err := x.reply()
		if err == nil && want == 354 {
			x.c.broken = true
			return false
		}
		if err != nil && x.c.note(ReplyErr(err, x.c.remote, "pipelined command")).Broken {
			return false
		}
	}
	return true
}

// data sends the body dot-stuffed after DATA's 354, and reads the reply to
// its end. final is true when e is the answer for the accepted
// recipients: a reply, or no reply to the end of the message (trying
// another host then would risk a duplicate). A small message and its end
// go out in one write.
func (c *Client) data(rc io.Reader) (reply string, e *Error, final bool) {
	if c.bw == nil {
		c.bw = bufio.NewWriterSize(progressWriter{c.conn, c.timeout}, dataBuffer)
	}
	w := newDotWriter(c.bw)
	_, err := io.Copy(w, rc)
	if err == nil {
		err = w.Close() // the end marker, and the flush
	}
	if err != nil {
		c.bw.Reset(progressWriter{c.conn, c.timeout})
		return "", c.note(sendFailure(c.remote, err)), false
	}
	msg, err := c.readReply(250, 2*c.timeout)
	if err != nil {
		return "", c.note(ReplyErr(err, c.remote, "end of DATA")), true
	}
	return msg, nil, true
}

// dataBuffer is how much of the message is written at once.
const dataBuffer = 32 << 10

// progressWriter gives every write of the message its own deadline: a
// large message may take longer than one command timeout in all, but no
// write may stall for longer.
type progressWriter struct {
	conn    net.Conn
	timeout time.Duration
}

func (w progressWriter) Write(p []byte) (int, error) {
	_ = w.conn.SetWriteDeadline(time.Now().Add(w.timeout))
	return w.conn.Write(p)
}

// bdat sends the body byte for byte in BDAT chunks (RFC 3030), the last
// one marked LAST; final as for data.
func (c *Client) bdat(rc io.Reader) (reply string, e *Error, final bool) {
	br := bufio.NewReaderSize(rc, chunkSize)
	buf := make([]byte, chunkSize)
	for {
		n, err := io.ReadFull(br, buf)
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			c.broken = true // a BDAT chunk may be half written
			return "", sendFailure(c.remote, err), false
		}
		last := err != nil
		if !last {
			if _, perr := br.Peek(1); perr == io.EOF {
				last = true
			}
		}
		cmd := fmt.Sprintf("BDAT %d", n)
		timeout := c.timeout
		if last {
			cmd += " LAST"
			timeout = 2 * c.timeout
		}
		msg, rerr := c.raw(250, timeout, append([]byte(cmd+"\r\n"), buf[:n]...))
		if rerr != nil {
			e := c.note(ReplyErr(rerr, c.remote, "BDAT"))
			if !e.Broken {
				c.reset()
			}
			return "", e, last || !e.Broken
		}
		if last {
			return msg, nil, true
		}
	}
}

// sendFailure is a broken connection (or unreadable body) while sending
// the message.
func sendFailure(remote string, err error) *Error {
	e := TempErr("4.4.2", remote, err, "sending message: %v", err)
	e.Broken = true
	return e
}

// reset ends an open transaction with RSET; a failure marks the session
// broken, and shows on the next command.
func (c *Client) reset() {
	if _, err := c.raw(250, c.timeout, []byte("RSET\r\n")); err != nil {
		c.broken = true
	}
}

// note marks the session broken when e says the connection is gone or
// going (no reply, a network or protocol error, 421), and returns e.
func (c *Client) note(e *Error) *Error {
	if e.Broken || e.Code == 421 {
		c.broken = true
	}
	return e
}

// raw writes p and reads one reply, for the commands outside a
// transaction's exchange (BDAT, RSET, QUIT).
func (c *Client) raw(expect int, timeout time.Duration, p []byte) (string, error) {
	_ = c.conn.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := c.conn.Write(p); err != nil {
		return "", err
	}
	return c.readReply(expect, timeout)
}

// readReply reads one reply within timeout; a reply other than expect (0:
// any success) is an *smtp.SMTPError.
func (c *Client) readReply(expect int, timeout time.Duration) (string, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	defer func() { _ = c.conn.SetDeadline(time.Time{}) }()
	code, msg, err := c.text.ReadResponse(expect)
	var pe *textproto.Error
	if errors.As(err, &pe) {
		return "", &smtp.SMTPError{Code: code, EnhancedCode: enhancedOf(&msg), Message: msg}
	}
	return msg, err
}

// rcptParams are the DSN parameters of r's RCPT command (RFC 3461), sent
// only when the remote advertises DSN. The envelope keeps ORCPT as
// "type;" + xtext(address) (ingress and router encode the decoded address
// with dsn.EncodeXtext, whatever the type): it is decoded here and encoded
// for the wire, xtext for rfc822 and RFC 6533 utf-8-addr-xtext for utf-8
// (valid whether or not the remote offers SMTPUTF8), so it is encoded
// exactly once there.
func rcptParams(r envelope.Rcpt, dsnOK bool) string {
	if !dsnOK {
		return ""
	}
	var b strings.Builder
	never := false
	var notify []string
	for _, n := range r.Notify {
		n = strings.ToUpper(n)
		switch n {
		case "NEVER", "SUCCESS", "FAILURE", "DELAY":
			never = never || n == "NEVER"
			notify = append(notify, n)
		}
	}
	if len(notify) > 0 && !(never && len(notify) > 1) { // NEVER alone, or not at all
		b.WriteString(" NOTIFY=" + strings.Join(notify, ","))
	}
	if typ, val, ok := strings.Cut(r.ORcpt, ";"); ok {
		addr := dsn.DecodeXtext(val)
		switch strings.ToLower(typ) {
		case "rfc822":
			if isPrintableASCII(addr) {
				b.WriteString(" ORCPT=rfc822;" + dsn.EncodeXtext(addr))
			}
		case "utf-8":
			if utf8.ValidString(addr) && !strings.ContainsAny(addr, "\r\n") {
				b.WriteString(" ORCPT=utf-8;" + dsn.EncodeUTF8Addr(addr))
			}
		}
	}
	return b.String()
}

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

// verifyPeer checks the server's certificate chain against roots (nil:
// the system's) for host, the MX host name (RFC 7817 §3, as MTA-STS and
// require_tls mean it); "" when it holds, else why not.
func verifyPeer(st tls.ConnectionState, host string, roots *x509.CertPool) string {
	if len(st.PeerCertificates) == 0 {
		return "no certificate"
	}
	inter := x509.NewCertPool()
	for _, c := range st.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := st.PeerCertificates[0].Verify(x509.VerifyOptions{
		DNSName: strings.TrimSuffix(host, "."), Roots: roots, Intermediates: inter,
	})
	if err != nil {
		return OneLine(err.Error())
	}
	return ""
}

// sniName is host for TLS SNI, or "" for an IP (SNI cannot carry one).
func sniName(host string) string {
	if _, err := netip.ParseAddr(host); err == nil {
		return ""
	}
	return host
}

// greetedConn replays pending bytes before reading from the connection.
type greetedConn struct {
	net.Conn
	pending []byte
}

func (g *greetedConn) Read(p []byte) (int, error) {
	if len(g.pending) > 0 {
		n := copy(p, g.pending)
		g.pending = g.pending[n:]
		return n, nil
	}
	return g.Conn.Read(p)
}

var _ net.Conn = (*greetedConn)(nil)
