package ingress

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/metrics"
	"github.com/mailroot/mailroot/internal/users"
)

// session is one SMTP connection, from accept to close: Mailroot's SMTP
// server (RFC 5321, with the extensions ehloKeywords lists). serve runs one
// loop per connection: it reads a command line, handles it, and writes the
// reply; the policy each command applies (relay, limits, AUTH, storing) is
// plain code in session.go, auth.go, etrn.go and atrn.go.
//
//   - TLS: implicit (port 465, RFC 8314) before the greeting, or STARTTLS
//     (RFC 3207); plaintext pipelined after STARTTLS is discarded
//     (CVE-2011-0411) and the client must EHLO again.
//   - Pipelining (RFC 2920): replies are buffered and written when the
//     loop is about to wait for the client (meter), so a pipelined group
//     is answered with one write.
//   - Line ends: a bare LF or bare CR in a command or in DATA is refused
//     as Postfix 3.9's smtpd_forbid_bare_newline = reject does, or
//     normalised for the site's bare_newline_normalize networks; only
//     CRLF.CRLF after a CRLF ends DATA (SMTP smuggling, see data.go).
//   - Deadlines per request, as Postfix's smtpd_per_request_deadline and
//     smtpd_min_data_rate: a command line must arrive whole within the
//     site's timeout from when the loop starts reading it; message content
//     (DATA, a BDAT chunk) starts with the same deadline, and every n bytes
//     received push it back by n/minDataRate seconds, never beyond timeout
//     from now. A client that keeps to minDataRate never times out however
//     large its message, one that stalls or trickles is cut off (421 4.4.2).
//   - Rejected commands count toward max_bad_commands (not DATA, BDAT,
//     AUTH, HELP, EXPN, QUIT); a 421 closes the connection.
//
// Only the connection's goroutine uses a session, except close and the
// TLS connection swap (connMu), which shutdown uses from another.
type session struct {
	s    *Service
	site *site
	// sp and scfg are the site's policy and the service's configuration
	// as they were when the client connected: a live change applies to
	// the sessions that follow.
	sp    *sitePolicy
	scfg  *config.Config
	raw   net.Conn
	ip    netip.Addr
	id    string
	since time.Time
	log   *slog.Logger

	connMu sync.Mutex
	c      net.Conn // raw, or the TLS connection over it
	tlsSt  *tls.ConnectionState

	br        *bufio.Reader // reads c through meter
	wbuf      []byte        // replies not yet written
	deadline  time.Time     // of the request being read
	inContent bool          // reading message content (meter credits it)
	idle      atomic.Bool   // waiting for a command with nothing buffered
	pending   string        // a command read inside BDAT, handled next
	quit      bool          // close once the replies are written
	counts    bool          // a 5xx reply to the current command is a bad command
	bad       int
	normalize bool

	helo       string // the EHLO/HELO argument, "" before it
	needHelo   bool   // after STARTTLS, until the new EHLO
	relay      bool   // the client is in relay_networks
	user       *users.User
	clientName string // checked reverse DNS name (reverse_dns)
	nameErr    error  // why clientName could not be looked up
	lookupBy   time.Time
	refused    bool // greeted with 554 (connctl.go): only QUIT is served

	// The mail transaction.
	inTx  bool
	from  string
	mail  mailParams
	rcpts []envelope.Rcpt
	bare  uint32 // bareLF | bareCR seen in the current message

	messages int
	bytes    int64

	tx txState // the transaction log's counts (txlog.go)

	closeOnce sync.Once
	onClose   func()
}

const (
	bareLF = 1 << iota
	bareCR
)

// minDataRate is the slowest message content is accepted at, in bytes a
// second: each byte received extends the deadline of the content by
// 1/minDataRate s (Postfix's smtpd_min_data_rate, with its default).
const minDataRate = 500

// errClosed ends the loop: the client went away or the connection is to
// be closed.
var errClosed = errors.New("ingress: connection closed")

func newSession(st *site, sp *sitePolicy, raw net.Conn, ip netip.Addr, id string) *session {
	ss := &session{s: st.svc, site: st, sp: sp, scfg: st.svc.conf(), raw: raw, c: raw, ip: ip, id: id, since: time.Now(),
		log:   st.svc.log.With("site", st.cfg.Name, "client", ip.String(), "cid", id),
		relay: sp.mayRelay(ip)}
	ss.br = bufio.NewReaderSize(meter{ss, raw}, 8<<10)
	ss.normalize = sp.cfg.BareNewline == "normalize" || containsIP(sp.normNets, ip)
	return ss
}

func (ss *session) conn() net.Conn {
	ss.connMu.Lock()
	defer ss.connMu.Unlock()
	return ss.c
}

// tlsState returns the TLS state once TLS is up.
func (ss *session) tlsState() (tls.ConnectionState, bool) {
	if ss.tlsSt != nil {
		return *ss.tlsSt, true
	}
	return tls.ConnectionState{}, false
}

// serve runs the connection to its end.
func (ss *session) serve() {
	defer ss.close()
	defer func() {
		if r := recover(); r != nil {
			ss.log.Error("panic in SMTP session", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			ss.reply(421, "4.3.0", ss.sp.cfg.Hostname+" Internal error, closing connection")
			ss.flush()
		}
	}()
	if ss.sp.cfg.ImplicitTLS {
		tc := tls.Server(ss.raw, ss.site.tlsConfig)
		_ = ss.raw.SetDeadline(time.Now().Add(ss.sp.cfg.Timeout.D()))
		if err := tc.Handshake(); err != nil {
			ss.log.Info("TLS handshake failed", "err", err)
			return
		}
		_ = ss.raw.SetDeadline(time.Time{})
		ss.setTLS(tc)
	}
	ss.reverseDNS()
	if r := ss.screen(); r != nil {
		ss.replyWith(r)
	} else {
		ss.reply(220, "", ss.sp.cfg.Hostname+" "+ss.sp.cfg.Banner)
	}
	for !ss.quit {
		line := ss.pending
		ss.pending = ""
		if line == "" {
			var err error
			if line, err = ss.readCommand(); err != nil {
				break
			}
		}
		ss.handle(line)
	}
	ss.flush()
}

// handle runs one command.
func (ss *session) handle(line string) {
	verb, arg, _ := strings.Cut(line, " ")
	verb = strings.ToUpper(verb)
	arg = strings.TrimSpace(arg)
	if ss.site.txlog != nil {
		defer ss.logCommand(verb, arg, len(line), time.Now(), ss.tx.replied)
	}
	ss.counts = countsAsBad(verb)
	defer func() { ss.counts = false }()
	if ss.refused && verb != "QUIT" {
		ss.counts = true // max_bad_commands ends it
		ss.reply(503, "5.7.1", "Connection refused, send QUIT")
		return
	}
	if !ss.inSequence(verb) {
		return
	}
	switch verb {
	case "EHLO", "HELO":
		ss.hello(verb, arg)
	case "MAIL":
		ss.mailCmd(arg)
	case "RCPT":
		ss.rcptCmd(arg)
	case "DATA":
		ss.dataCmd(arg)
	case "BDAT":
		ss.bdatCmd(arg)
	case "RSET":
		ss.resetTx()
		ss.reply(250, "2.0.0", "Reset OK")
	case "NOOP":
		ss.reply(250, "2.0.0", "OK")
	case "QUIT":
		ss.reply(221, "2.0.0", ss.sp.cfg.Hostname+" Closing connection")
		ss.quit = true
	case "VRFY":
		ss.reply(252, "2.5.0", "Cannot verify the address; send mail and it will be tried")
	case "HELP":
		ss.reply(502, "5.5.1", "No help available")
	case "EXPN":
		ss.reply(502, "5.5.1", "EXPN not available")
	case "AUTH":
		ss.authCmd(arg)
	case "STARTTLS":
		ss.startTLS(arg)
	case "ETRN":
		ss.etrn(arg)
	case "ATRN":
		ss.atrn(arg)
	default:
		ss.reply(500, "5.5.2", "Syntax error, command unrecognized")
	}
}

// rule is what a command needs before it runs (RFC 5321 §4.1.4 and the
// extensions' own rules): to be offered on this site, a greeting, no mail
// transaction in progress.
type rule struct {
	offered   func(*session) bool // nil: always
	greeted   bool
	outsideTx bool
}

var rules = map[string]rule{
	"MAIL":     {greeted: true, outsideTx: true},
	"AUTH":     {offered: func(ss *session) bool { return ss.sp.cfg.Auth != config.AuthOff }, greeted: true, outsideTx: true},
	"STARTTLS": {offered: func(ss *session) bool { return ss.site.tlsConfig != nil && ss.sp.cfg.StartTLS }, outsideTx: true},
	"ETRN":     {offered: func(ss *session) bool { return ss.sp.cfg.ETRN }, greeted: true, outsideTx: true},
	"ATRN":     {offered: func(ss *session) bool { return ss.sp.cfg.ATRN }, greeted: true, outsideTx: true},
}

// inSequence applies the command's rule, and after STARTTLS the need for
// a new EHLO; false when it answered the command.
func (ss *session) inSequence(verb string) bool {
	switch verb {
	case "EHLO", "HELO", "QUIT", "NOOP", "RSET":
		return true
	}
	r, known := rules[verb]
	switch {
	case known && r.offered != nil && !r.offered(ss):
		ss.reply(502, "5.5.1", verb+" not available")
	case ss.needHelo || (r.greeted && ss.helo == ""):
		ss.reply(503, "5.5.1", "Send EHLO first")
	case r.outsideTx && ss.inTx:
		ss.reply(503, "5.5.1", verb+" not allowed during a mail transaction")
	default:
		return true
	}
	return false
}

// countsAsBad tells which rejected commands count toward max_bad_commands:
// not the message content (DATA, BDAT), not AUTH (it has its own limit).
func countsAsBad(verb string) bool {
	switch verb {
	case "DATA", "BDAT", "AUTH", "HELP", "EXPN", "QUIT":
		return false
	}
	return true
}

// hello answers EHLO and HELO (RFC 5321 §4.1.1.1): a new greeting resets
// the transaction.
func (ss *session) hello(verb, arg string) {
	if strings.ContainsFunc(arg, isControl) {
		ss.reply(501, "5.5.2", "Syntax error: control character in the "+verb+" argument")
		return
	}
	name, _, _ := strings.Cut(arg, " ")
	if name == "" {
		ss.reply(501, "5.5.2", "Syntax: "+verb+" <hostname>")
		return
	}
	ss.resetTx()
	ss.helo, ss.needHelo = name, false
	ss.s.sessions.update(ss.id, func(i *sessionInfo) { i.Helo = name })
	if verb == "HELO" {
		ss.reply(250, "2.0.0", ss.sp.cfg.Hostname)
		return
	}
	ss.replyLines(250, append([]string{ss.sp.cfg.Hostname}, ss.ehloKeywords()...))
}

// ehloKeywords are the extensions this site offers on this connection now.
func (ss *session) ehloKeywords() []string {
	cfg := ss.sp.cfg
	_, isTLS := ss.tlsState()
	kw := []string{"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING", "BINARYMIME", "SMTPUTF8", "DSN"}
	if cfg.MaxMessageSize > 0 {
		kw = append(kw, "SIZE "+strconv.FormatInt(cfg.MaxMessageSize, 10))
	} else {
		kw = append(kw, "SIZE")
	}
	if cfg.MaxRecipients > 0 {
		kw = append(kw, "LIMITS RCPTMAX="+strconv.Itoa(cfg.MaxRecipients))
	}
	if ss.site.tlsConfig != nil && cfg.StartTLS && !isTLS {
		kw = append(kw, "STARTTLS")
	}
	if isTLS {
		kw = append(kw, "REQUIRETLS")
	}
	if ss.authOffered() {
		kw = append(kw, "AUTH PLAIN LOGIN")
	}
	if cfg.ETRN {
		kw = append(kw, "ETRN")
	}
	if cfg.ATRN && (isTLS || cfg.AllowInsecureAuth) {
		kw = append(kw, "ATRN")
	}
	return kw
}

// mailCmd is MAIL FROM (RFC 5321 §4.1.1.2, parameters in params.go).
func (ss *session) mailCmd(arg string) {
	rest, ok := cutPrefixFold(arg, "FROM:")
	if !ok {
		ss.reply(501, "5.5.2", "Syntax: MAIL FROM:<address>")
		return
	}
	from, params, ok := parsePath(strings.TrimSpace(rest), true)
	if !ok {
		ss.reply(501, "5.5.2", "Syntax: MAIL FROM:<address>")
		return
	}
	if from != "" && !strings.Contains(from, "@") {
		// A sender without a domain gets the default domain (IIS).
		from += "@" + ss.scfg.DefaultDomainName()
	}
	p, rep := parseMailParams(params, ss.sp.cfg.MaxMessageSize)
	if rep == nil {
		rep = ss.Mail(from, p)
	}
	ss.replyOr(rep, 250, "2.1.0", "Sender OK")
}

// rcptCmd is RCPT TO (RFC 5321 §4.1.1.3).
func (ss *session) rcptCmd(arg string) {
	if !ss.inTx {
		ss.reply(502, "5.5.1", "Send MAIL first")
		return
	}
	rest, ok := cutPrefixFold(arg, "TO:")
	if !ok {
		ss.reply(501, "5.5.2", "Syntax: RCPT TO:<address>")
		return
	}
	rest = strings.TrimSpace(rest)
	if p, ok := cutPrefixFold(rest, "<postmaster>"); ok {
		// RFC 5321 §4.5.1: postmaster without a domain is ours.
		rest = "<postmaster@" + ss.scfg.DefaultDomainName() + ">" + p
	}
	to, params, ok := parsePath(rest, false)
	if !ok || !strings.Contains(to, "@") {
		ss.reply(501, "5.5.2", "Syntax: RCPT TO:<address>")
		return
	}
	if max := ss.sp.cfg.MaxRecipients; max > 0 && len(ss.rcpts) >= max {
		ss.reply(452, "4.5.3", "Too many recipients")
		return
	}
	p, rep := parseRcptParams(params)
	if rep == nil {
		rep = ss.Rcpt(to, p)
	}
	ss.replyOr(rep, 250, "2.1.5", "Recipient OK")
}

// resetTx forgets the mail transaction (RSET, a new EHLO, after DATA).
func (ss *session) resetTx() {
	ss.inTx = false
	ss.from = ""
	ss.mail = mailParams{}
	ss.rcpts = nil
	ss.bare = 0
}

// startTLS answers STARTTLS (RFC 3207) and upgrades the connection.
func (ss *session) startTLS(arg string) {
	_, isTLS := ss.tlsState()
	switch {
	case isTLS:
		ss.reply(503, "5.5.1", "TLS already active")
		return
	case arg != "":
		ss.reply(501, "5.5.4", "Syntax error (no parameters allowed)")
		return
	case ss.user != nil:
		ss.reply(503, "5.5.1", "STARTTLS not allowed after AUTH")
		return
	}
	ss.reply(220, "2.0.0", "Ready to start TLS")
	if !ss.flush() {
		return
	}
	tc := tls.Server(ss.raw, ss.site.tlsConfig)
	_ = ss.raw.SetDeadline(time.Now().Add(ss.sp.cfg.Timeout.D()))
	ctx, cancel := context.WithTimeout(context.Background(), ss.sp.cfg.Timeout.D())
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		ss.log.Info("STARTTLS handshake failed", "err", err)
		ss.quit = true
		return
	}
	_ = ss.raw.SetDeadline(time.Time{})
	ss.setTLS(tc)
	// RFC 3207 §4.2: everything known before TLS is forgotten; the client
	// must start over with EHLO.
	ss.resetTx()
	ss.helo, ss.needHelo = "", true
}

func (ss *session) setTLS(tc *tls.Conn) {
	st := tc.ConnectionState()
	ss.connMu.Lock()
	ss.c = tc
	ss.connMu.Unlock()
	ss.tlsSt = &st
	// Anything buffered was read before the handshake: plaintext that a
	// man in the middle may have injected after STARTTLS. It is dropped.
	if n := ss.br.Buffered(); n > 0 {
		ss.log.Warn("plaintext after STARTTLS discarded", "bytes", n)
	}
	ss.br = bufio.NewReaderSize(meter{ss, tc}, 8<<10)
	ss.s.sessions.update(ss.id, func(i *sessionInfo) { i.TLS = tlsString(st.Version, st.CipherSuite) })
}

// readCommand reads the next command line, applying the line policies
// (length, bare CR and LF). Lines it answers itself are not returned; an
// error means the connection is over (any last reply is buffered).
func (ss *session) readCommand() (string, error) {
	for {
		if ss.s.stopping.Load() {
			ss.reply(421, "4.3.2", ss.sp.cfg.Hostname+" Service shutting down, closing connection")
			return "", errClosed
		}
		ss.startRequest()
		ss.idle.Store(ss.br.Buffered() == 0)
		if ss.s.stopping.Load() {
			continue
		}
		line, tooLong, err := ss.readLine(ss.sp.cfg.MaxLineLength)
		ss.idle.Store(false)
		if err != nil {
			return "", ss.readFailed(err)
		}
		if tooLong {
			if !ss.replyBad(500, "5.5.2", "Line too long") {
				return "", errClosed
			}
			continue
		}
		content, lfBare := line, false
		if bytes.HasSuffix(line, []byte("\r\n")) {
			content = line[:len(line)-2]
		} else {
			content, lfBare = line[:len(line)-1], true
		}
		ss.trace("C: " + redacted(content))
		crBare := bytes.IndexByte(content, '\r') >= 0
		if (lfBare || crBare) && !ss.normalize {
			what := "<LF>"
			if crBare {
				what = "<CR>"
			}
			ss.log.Warn("bare newline in command, disconnecting", "bare", what)
			ss.reply(550, "5.5.2", "Error: bare "+what+" received")
			return "", errClosed
		}
		if crBare {
			if !ss.replyBad(501, "5.5.2", "Syntax error: bare <CR> in command") {
				return "", errClosed
			}
			continue
		}
		return string(content), nil
	}
}

// readFailed answers a failed read: a timeout gets 421 4.4.2 (unless the
// service is stopping, which interrupts idle sessions), anything else ends
// the session quietly.
func (ss *session) readFailed(err error) error {
	var ne net.Error
	switch {
	case ss.s.stopping.Load() && !ss.inContent:
		ss.reply(421, "4.3.2", ss.sp.cfg.Hostname+" Service shutting down, closing connection")
	case errors.As(err, &ne) && ne.Timeout():
		ss.log.Info("client timed out", "content", ss.inContent)
		ss.site.m.Refused(metrics.RefusedTimeout)
		ss.reply(421, "4.4.2", ss.sp.cfg.Hostname+" Timeout, closing connection")
	}
	ss.quit = true
	return errClosed
}

// readLine reads one line (with its LF) of at most max bytes; a longer one
// is consumed and reported as tooLong.
func (ss *session) readLine(max int) (line []byte, tooLong bool, err error) {
	for {
		frag, err := ss.br.ReadSlice('\n')
		if len(line)+len(frag) > max+2 {
			tooLong = true
		}
		if !tooLong {
			line = append(line, frag...)
		}
		switch {
		case err == nil:
			return line, tooLong, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return line, tooLong, err
		}
	}
}

// startRequest gives the request about to be read (a command line, the
// content of DATA or of a BDAT chunk) its deadline: timeout from now.
func (ss *session) startRequest() {
	ss.deadline = time.Now().Add(ss.sp.cfg.Timeout.D())
	_ = ss.conn().SetReadDeadline(ss.deadline)
}

// meter is what the session's bufio.Reader reads: the connection
// (plaintext, above TLS). Before it waits for the client it writes the
// replies buffered so far; it credits the bytes of message content to the
// request deadline.
type meter struct {
	ss *session
	r  io.Reader
}

func (m meter) Read(p []byte) (int, error) {
	ss := m.ss
	if len(ss.wbuf) > 0 && !ss.flush() {
		return 0, errClosed
	}
	n, err := m.r.Read(p)
	if n > 0 && ss.inContent {
		limit := time.Now().Add(ss.sp.cfg.Timeout.D())
		ss.deadline = ss.deadline.Add(time.Duration(n) * time.Second / minDataRate)
		if ss.deadline.After(limit) {
			ss.deadline = limit
		}
		_ = ss.conn().SetReadDeadline(ss.deadline)
	}
	return n, err
}

// reply buffers one reply line; enhanced is the RFC 3463 code or "".
func (ss *session) reply(code int, enhanced, text string) {
	if enhanced != "" {
		text = enhanced + " " + text
	}
	ss.replyLines(code, []string{text})
}

// replyLines buffers a reply of one or more lines. A 5xx reply to a
// command that counts is a bad command; the max_bad_commands-th closes the
// connection, as does any 421.
func (ss *session) replyLines(code int, lines []string) {
	c := strconv.Itoa(code)
	n := len(ss.wbuf)
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		ss.wbuf = append(append(append(append(ss.wbuf, c...), sep...), l...), '\r', '\n')
	}
	ss.tx.reply(code, len(ss.wbuf)-n)
	if code == 421 {
		ss.quit = true
	}
	if code >= 500 && ss.counts {
		ss.bad++
		if ss.bad >= ss.sp.cfg.MaxBadCommands && !ss.quit {
			ss.log.Warn("too many bad commands, disconnecting", "bad_commands", ss.bad)
			ss.site.m.Refused(metrics.RefusedBadCommands)
			ss.reply(421, "4.7.0", ss.sp.cfg.Hostname+" Too many errors, closing connection")
		}
	}
}

// replyBad buffers a refusal of a line that is no command at all, which
// counts as a bad command; false when that closes the connection.
func (ss *session) replyBad(code int, enhanced, text string) bool {
	counts := ss.counts
	ss.counts = true
	ss.reply(code, enhanced, text)
	ss.counts = counts
	return !ss.quit
}

// replyOr buffers r, the refusal of the policy code, or when it is nil
// the given reply.
func (ss *session) replyOr(r *reply, code int, enhanced, text string) {
	if r != nil {
		ss.replyWith(r)
		return
	}
	ss.reply(code, enhanced, text)
}

// replyWith buffers a reply made by the policy code.
func (ss *session) replyWith(r *reply) { ss.reply(r.Code, r.Enhanced, r.Text) }

// flush writes the buffered replies; false when the connection failed.
func (ss *session) flush() bool {
	if len(ss.wbuf) == 0 {
		return true
	}
	out := ss.wbuf
	ss.wbuf = ss.wbuf[:0]
	ss.trace("S: " + string(out))
	c := ss.conn()
	_ = c.SetWriteDeadline(time.Now().Add(ss.sp.cfg.Timeout.D()))
	if _, err := c.Write(out); err != nil {
		ss.quit = true
		return false
	}
	return true
}

// trace logs one line of the SMTP transcript at config.LevelTrace. The
// message content (DATA, BDAT) never passes here; AUTH payloads are
// redacted.
func (ss *session) trace(line string) {
	if ss.log.Enabled(context.Background(), config.LevelTrace) {
		ss.log.Log(context.Background(), config.LevelTrace, "smtp", "line", strings.TrimRight(line, "\r\n"))
	}
}

// redacted is a command line as the transcript shows it: the initial
// response of AUTH is replaced by "***" (SASL response lines are never
// traced, see auth.go).
func redacted(line []byte) string {
	verb, arg, _ := strings.Cut(string(line), " ")
	if !strings.EqualFold(verb, "AUTH") {
		return string(line)
	}
	if mech, _, ok := strings.Cut(strings.TrimSpace(arg), " "); ok {
		return verb + " " + mech + " ***"
	}
	return string(line)
}

// interrupt makes an idle session notice that the service is stopping.
func (ss *session) interrupt() {
	if ss.idle.Load() {
		_ = ss.conn().SetReadDeadline(time.Now())
	}
}

// close closes the connection (once) and forgets the session.
func (ss *session) close() {
	ss.closeOnce.Do(func() {
		c := ss.conn()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		_ = c.Close()
		if c != ss.raw {
			_ = ss.raw.Close()
		}
		if ss.onClose != nil {
			ss.onClose()
		}
	})
}

// bufConn is a connection whose reads start with what a bufio.Reader
// already holds (the ATRN client takes the connection over).
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return s, false
	}
	return s[len(prefix):], true
}

func containsIP(nets []netip.Prefix, ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	for _, p := range nets {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
