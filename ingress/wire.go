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
)

// wire is the client connection as go-smtp sees it. go-smtp (v0.25.1)
// parses ESMTP well but lacks what Mailroot needs around it, so wire sits
// between the TCP connection and go-smtp — a small wrapper instead of a
// fork — and:
//
//   - does TLS itself, implicit (port 465, RFC 8314) and STARTTLS
//     (RFC 3207), so that everything below runs above TLS: go-smtp never
//     sees TLS (its TLSConfig is nil), the session asks wire for the state;
//     plaintext pipelined after STARTTLS is discarded (CVE-2011-0411);
//   - reads the client one line at a time and hands go-smtp only
//     well-formed commands it implements; answers ETRN (RFC 1985), ATRN
//     (RFC 2645, turning the connection around), STARTTLS and unknown
//     commands itself; stamps the default domain on "RCPT TO:<postmaster>"
//     (RFC 5321 §4.5.1) and on a sender without a domain (as IIS did);
//   - refuses bare LF and bare CR in commands and DATA as Postfix 3.9's
//     smtpd_forbid_bare_newline = reject does, or normalises them for the
//     site's bare_newline_normalize networks; DATA is canonicalised so that
//     only CRLF.CRLF after a CRLF ends it (SMTP smuggling);
//   - watches go-smtp's replies: replaces go-smtp's own texts with ours
//     (replies.go), adds the EHLO keywords go-smtp cannot know
//     (STARTTLS, REQUIRETLS, ETRN, ATRN), writes the site's banner, enters
//     DATA mode on 354, counts rejected commands (max_bad_commands) and
//     closes the connection after any 421;
//   - bounds each request, as Postfix's smtpd_per_request_deadline and
//     smtpd_min_data_rate do: a command line must arrive whole within the
//     site's timeout from when wire starts reading it (not from the last
//     byte: a client trickling a byte every few seconds cannot hold a
//     connection slot); message content (DATA, a BDAT chunk) starts with
//     the same deadline, and every n bytes received push it back by
//     n/minDataRate seconds, never beyond timeout from now. A client that
//     keeps to minDataRate never times out however large its message, one
//     that stalls or trickles is cut off (421 4.4.2) after at most timeout.
//     A deadline per DATA line would let a client hold the connection for
//     as long as max_message_size lasts at a line per timeout.
//
// Read and Write run on the connection's go-smtp goroutine; Close and the
// TLS state may be used from others.
type wire struct {
	site  *site
	raw   net.Conn
	ip    netip.Addr
	id    string
	since time.Time
	log   *slog.Logger

	connMu sync.Mutex
	c      net.Conn // raw, or the TLS connection over it
	tlsSt  atomic.Pointer[tls.ConnectionState]

	br   *bufio.Reader // reads the connection through meter
	sess *session

	// deadline is the read deadline of the request being read.
	deadline time.Time

	// Read side.
	out           []byte
	mode          int
	bdatLeft      int64
	dataPrevCRLF  bool
	dataLineStart bool
	lastCmd       string
	saslNext      bool
	greeted       bool
	needHelo      bool
	bad           int
	normalize     bool
	clientName    string

	// Shared with the session's DATA/BDAT reader goroutine.
	bare       atomic.Uint32 // bareLF | bareCR seen in the current message
	bdatPrevCR atomic.Bool
	binary     atomic.Bool // BODY=BINARYMIME: BDAT content is not checked
	closeAfter atomic.Bool // close once the next final reply is written

	// Write side.
	wbuf       []byte
	pending    []byte // lines of an unfinished multi-line reply
	bannerDone bool
	ehloFirst  bool

	hsOnce    sync.Once
	hsErr     error
	eof       atomic.Bool
	closeOnce sync.Once
	onClose   func()
}

const (
	modeCommand = iota
	modeData
	modeBDAT
)

const (
	bareLF = 1 << iota
	bareCR
)

// dataChunk is how much canonical DATA one Read prepares at most.
const dataChunk = 32 << 10

// minDataRate is the slowest message content is accepted at, in bytes a
// second: each byte received extends the deadline of the content by
// 1/minDataRate s (Postfix's smtpd_min_data_rate, with its default).
const minDataRate = 500

func newWire(st *site, raw net.Conn, ip netip.Addr, id string) *wire {
	w := &wire{site: st, raw: raw, c: raw, ip: ip, id: id, since: time.Now(),
		log: st.svc.log.With("site", st.cfg.Name, "client", ip.String(), "cid", id)}
	w.br = bufio.NewReaderSize(meter{w, raw}, 8<<10)
	w.normalize = st.cfg.BareNewline == "normalize" || containsIP(st.normNets, ip)
	return w
}

func (w *wire) conn() net.Conn {
	w.connMu.Lock()
	defer w.connMu.Unlock()
	return w.c
}

// tlsState returns the TLS state once TLS is up.
func (w *wire) tlsState() (tls.ConnectionState, bool) {
	if p := w.tlsSt.Load(); p != nil {
		return *p, true
	}
	return tls.ConnectionState{}, false
}

func (w *wire) setTLS(tc *tls.Conn) {
	st := tc.ConnectionState()
	w.connMu.Lock()
	w.c = tc
	w.connMu.Unlock()
	w.tlsSt.Store(&st)
	// Anything buffered was read before the handshake: plaintext that a
	// man in the middle may have injected after STARTTLS. It is dropped.
	if n := w.br.Buffered(); n > 0 {
		w.log.Warn("plaintext after STARTTLS discarded", "bytes", n)
	}
	w.br = bufio.NewReaderSize(meter{w, tc}, 8<<10)
	w.site.svc.sessions.update(w.id, func(i *sessionInfo) { i.TLS = tlsString(st.Version, st.CipherSuite) })
}

// handshake runs the implicit TLS handshake once, before the greeting.
func (w *wire) handshake() error {
	if !w.site.cfg.ImplicitTLS {
		return nil
	}
	w.hsOnce.Do(func() {
		tc := tls.Server(w.raw, w.site.tlsConfig)
		_ = w.raw.SetDeadline(time.Now().Add(w.site.cfg.Timeout.D()))
		if err := tc.Handshake(); err != nil {
			w.hsErr = err
			w.log.Info("TLS handshake failed", "err", err)
			w.abort()
			return
		}
		_ = w.raw.SetDeadline(time.Time{})
		w.setTLS(tc)
	})
	return w.hsErr
}

// Read gives go-smtp the next command line, canonical DATA, or BDAT bytes.
func (w *wire) Read(p []byte) (n int, err error) {
	defer func() {
		if r := recover(); r != nil {
			w.log.Error("panic in SMTP connection", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			w.abort()
			n, err = 0, io.EOF
		}
	}()
	if w.handshake() != nil {
		return 0, io.EOF
	}
	for len(w.out) == 0 {
		if w.eof.Load() {
			return 0, io.EOF
		}
		switch w.mode {
		case modeBDAT:
			return w.readBDAT(p)
		case modeData:
			err = w.fillData()
		default:
			err = w.fillCommand()
		}
		if err != nil {
			return 0, err
		}
	}
	n = copy(p, w.out)
	w.out = w.out[n:]
	return n, nil
}

// startRequest gives the request about to be read (a command line, the
// content of DATA or of a BDAT chunk) its deadline: timeout from now.
func (w *wire) startRequest() {
	w.deadline = time.Now().Add(w.site.cfg.Timeout.D())
	_ = w.conn().SetReadDeadline(w.deadline)
}

// meter is what wire's bufio.Reader reads: the connection (plaintext, above
// TLS), crediting the bytes of message content to the request deadline.
type meter struct {
	w *wire
	r io.Reader
}

func (m meter) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	if w := m.w; n > 0 && w.mode != modeCommand {
		limit := time.Now().Add(w.site.cfg.Timeout.D())
		w.deadline = w.deadline.Add(time.Duration(n) * time.Second / minDataRate)
		if w.deadline.After(limit) {
			w.deadline = limit
		}
		_ = w.conn().SetReadDeadline(w.deadline)
	}
	return n, err
}

// readErr maps a failed read of the client: a timeout goes to go-smtp (it
// answers 421 4.4.2); anything else ends the session quietly.
func (w *wire) readErr(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() && !w.eof.Load() {
		return err
	}
	w.eof.Store(true)
	return io.EOF
}

// readLine reads one line (with its LF) of at most max bytes; a longer one
// is consumed and reported as tooLong.
func (w *wire) readLine(max int) (line []byte, tooLong bool, err error) {
	for {
		frag, err := w.br.ReadSlice('\n')
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

// goSMTPVerbs are the commands handed to go-smtp.
var goSMTPVerbs = map[string]bool{
	"HELO": true, "EHLO": true, "MAIL": true, "RCPT": true, "DATA": true, "BDAT": true,
	"RSET": true, "NOOP": true, "QUIT": true, "VRFY": true, "AUTH": true, "HELP": true, "EXPN": true,
}

func (w *wire) fillCommand() error {
	// Every line its own deadline: go-smtp sets one only for the lines it
	// asks for, not for those wire answers itself, and none is left after
	// a STARTTLS handshake.
	w.startRequest()
	line, tooLong, err := w.readLine(w.site.cfg.MaxLineLength)
	if err != nil {
		return w.readErr(err)
	}
	if tooLong {
		w.replyBad("500 5.5.2 Line too long")
		return nil
	}
	content, lfBare := line, false
	switch {
	case bytes.HasSuffix(line, []byte("\r\n")):
		content = line[:len(line)-2]
	default:
		content, lfBare = line[:len(line)-1], true
	}
	w.trace("C: " + w.redacted(content))
	crBare := bytes.IndexByte(content, '\r') >= 0
	if (lfBare || crBare) && !w.normalize {
		what := "<LF>"
		if crBare {
			what = "<CR>"
		}
		w.log.Warn("bare newline in command, disconnecting", "bare", what)
		w.reply("550 5.5.2 Error: bare " + what + " received")
		w.abort()
		return io.EOF
	}
	if crBare {
		w.replyBad("501 5.5.2 Syntax error: bare <CR> in command")
		return nil
	}
	if w.saslNext {
		// A SASL response line for go-smtp's AUTH exchange.
		w.saslNext = false
		w.out = append(append(w.out[:0], content...), '\r', '\n')
		return nil
	}
	cmd := string(content)
	verb, arg, _ := strings.Cut(cmd, " ")
	verb = strings.ToUpper(verb)
	arg = strings.TrimSpace(arg)
	if w.needHelo && verb != "EHLO" && verb != "HELO" && verb != "QUIT" && verb != "NOOP" && verb != "RSET" {
		w.replyBad("503 5.5.1 Send EHLO first")
		return nil
	}
	switch verb {
	case "STARTTLS":
		return w.startTLS(arg)
	case "ETRN":
		w.etrn(arg)
		return nil
	case "ATRN":
		return w.atrn(arg)
	}
	if !goSMTPVerbs[verb] {
		w.replyBad("500 5.5.2 Syntax error, command unrecognized")
		return nil
	}
	switch verb {
	case "EHLO", "HELO":
		// go-smtp hands the argument to the Session (and logs): a control
		// character (NUL, ESC, …) is refused before it gets there.
		if strings.ContainsFunc(arg, isControl) {
			w.replyBad("501 5.5.2 Syntax error: control character in the " + verb + " argument")
			return nil
		}
		w.ehloFirst = verb == "EHLO"
	case "MAIL":
		w.bare.Store(0)
		w.bdatPrevCR.Store(false)
		w.binary.Store(strings.Contains(strings.ToUpper(arg), "BODY=BINARYMIME"))
		arg = w.stampSender(arg)
	case "RCPT":
		arg = w.stampPostmaster(arg)
	case "BDAT":
		size, ok := parseBDAT(arg)
		if !ok {
			w.replyBad("501 5.5.4 Syntax: BDAT <size> [LAST]")
			return nil
		}
		w.bdatLeft = size
		if size > 0 {
			w.mode = modeBDAT
			w.startRequest()
		}
	}
	w.lastCmd = verb
	w.out = append(w.out[:0], verb...)
	if arg != "" {
		w.out = append(append(w.out, ' '), arg...)
	}
	w.out = append(w.out, '\r', '\n')
	return nil
}

// parseBDAT checks "size [LAST]" exactly as go-smtp will, so that both agree
// on whether the chunk that follows is read.
func parseBDAT(arg string) (int64, bool) {
	f := strings.Fields(arg)
	if len(f) == 0 || len(f) > 2 || (len(f) == 2 && !strings.EqualFold(f[1], "LAST")) {
		return 0, false
	}
	n, err := strconv.ParseUint(f[0], 10, 32)
	if err != nil {
		return 0, false
	}
	return int64(n), true
}

// stampSender adds the default domain to "FROM:<name>" (IIS behaviour).
func (w *wire) stampSender(arg string) string {
	rest, ok := cutPrefixFold(arg, "FROM:")
	if !ok {
		return arg
	}
	rest = strings.TrimSpace(rest)
	if !strings.HasPrefix(rest, "<") {
		return arg
	}
	end := strings.IndexByte(rest, '>')
	if end < 2 {
		return arg
	}
	path := rest[1:end]
	if strings.ContainsAny(path, "@\" :") {
		return arg
	}
	return "FROM:<" + path + "@" + w.site.svc.cfg.DefaultDomainName() + ">" + rest[end+1:]
}

// stampPostmaster turns "TO:<postmaster>" into "TO:<postmaster@default>".
func (w *wire) stampPostmaster(arg string) string {
	rest, ok := cutPrefixFold(arg, "TO:")
	if !ok {
		return arg
	}
	rest = strings.TrimSpace(rest)
	if p, ok := cutPrefixFold(rest, "<postmaster>"); ok {
		return "TO:<postmaster@" + w.site.svc.cfg.DefaultDomainName() + ">" + p
	}
	return arg
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return s, false
	}
	return s[len(prefix):], true
}

// fillData prepares the next piece of DATA in canonical form: every line
// ends in CRLF, and only a "." line after a genuine CRLF, itself ended by
// CRLF, ends the message. A bare LF or CR is a line end, noted in bare;
// a "." line made with one is content (sent on dot-stuffed), so a message
// can never end where another server would see the end (SMTP smuggling).
func (w *wire) fillData() error {
	out := w.out[:0]
	for len(out) < dataChunk {
		if w.br.Buffered() == 0 {
			if _, err := w.br.Peek(1); err != nil {
				return w.readErr(err)
			}
		}
		b, _ := w.br.Peek(w.br.Buffered())
		if w.dataLineStart && b[0] == '.' {
			p, err := w.br.Peek(2)
			if err != nil {
				return w.readErr(err)
			}
			switch p[1] {
			case '\n':
				_, _ = w.br.Discard(2)
				out = append(out, "..\r\n"...)
				w.bare.Or(bareLF)
				w.dataPrevCRLF = false
				continue
			case '\r':
				p, err = w.br.Peek(3)
				if err != nil {
					return w.readErr(err)
				}
				if p[2] == '\n' {
					_, _ = w.br.Discard(3)
					if w.dataPrevCRLF {
						out = append(out, ".\r\n"...)
						w.mode = modeCommand
						w.out = out
						return nil
					}
					out = append(out, "..\r\n"...)
					w.dataPrevCRLF = true
					continue
				}
				_, _ = w.br.Discard(2)
				out = append(out, "..\r\n"...)
				w.bare.Or(bareCR)
				w.dataPrevCRLF = false
				continue
			default:
				_, _ = w.br.Discard(1)
				out = append(out, '.')
				w.dataLineStart = false
				continue
			}
		}
		i := bytes.IndexAny(b, "\r\n")
		if i < 0 {
			n := min(len(b), dataChunk-len(out))
			out = append(out, b[:n]...)
			_, _ = w.br.Discard(n)
			w.dataLineStart = false
			continue
		}
		out = append(out, b[:i]...)
		_, _ = w.br.Discard(i)
		w.dataLineStart = true
		if b[i] == '\n' {
			_, _ = w.br.Discard(1)
			out = append(out, '\r', '\n')
			w.bare.Or(bareLF)
			w.dataPrevCRLF = false
			continue
		}
		p, err := w.br.Peek(2)
		if err != nil {
			return w.readErr(err)
		}
		out = append(out, '\r', '\n')
		if p[1] == '\n' {
			_, _ = w.br.Discard(2)
			w.dataPrevCRLF = true
			continue
		}
		_, _ = w.br.Discard(1)
		w.bare.Or(bareCR)
		w.dataPrevCRLF = false
	}
	w.out = out
	return nil
}

// readBDAT passes a BDAT chunk through unchanged (its length is fixed);
// outside BINARYMIME bare CR and LF are noted for the session to refuse.
func (w *wire) readBDAT(p []byte) (int, error) {
	if int64(len(p)) > w.bdatLeft {
		p = p[:w.bdatLeft]
	}
	n, err := w.br.Read(p)
	w.bdatLeft -= int64(n)
	if !w.binary.Load() {
		prevCR := w.bdatPrevCR.Load()
		for _, c := range p[:n] {
			switch {
			case prevCR && c != '\n':
				w.bare.Or(bareCR)
			case c == '\n' && !prevCR:
				w.bare.Or(bareLF)
			}
			prevCR = c == '\r'
		}
		w.bdatPrevCR.Store(prevCR)
	}
	if w.bdatLeft == 0 {
		w.mode = modeCommand
	}
	if n == 0 && err != nil {
		return 0, w.readErr(err)
	}
	return n, nil
}

// bareNewline reports the bare line ends of the current message: "" when
// none or when this client's are normalised.
func (w *wire) bareNewline() string {
	f := w.bare.Load()
	if !w.binary.Load() && w.bdatPrevCR.Load() {
		f |= bareCR
	}
	switch {
	case f == 0 || w.normalize:
		return ""
	case f&bareLF != 0:
		return "<LF>"
	default:
		return "<CR>"
	}
}

// Write passes go-smtp's replies to the client, adjusted (see wire).
func (w *wire) Write(p []byte) (int, error) {
	if err := w.handshake(); err != nil {
		return 0, err
	}
	w.wbuf = append(w.wbuf, p...)
	// The lines of a multi-line reply (EHLO) go out in one write.
	out := w.pending
	w.pending = nil
	closeNow, final := false, false
	for {
		i := bytes.IndexByte(w.wbuf, '\n')
		if i < 0 {
			break
		}
		line := w.wbuf[:i+1]
		final = len(line) < 4 || line[3] != '-'
		var c bool
		out, c = w.filterReply(out, line)
		closeNow = closeNow || c
		w.wbuf = w.wbuf[i+1:]
	}
	if len(w.wbuf) == 0 {
		w.wbuf = nil
	}
	if !final && !closeNow {
		w.pending = out
		return len(p), nil
	}
	var err error
	if len(out) > 0 {
		w.trace("S: " + string(out))
		_, err = w.conn().Write(out)
	}
	if closeNow {
		w.abort()
	}
	return len(p), err
}

// filterReply handles one reply line of go-smtp and reports whether the
// connection is to be closed after it.
func (w *wire) filterReply(out, line []byte) ([]byte, bool) {
	code := 0
	if len(line) >= 4 {
		code, _ = strconv.Atoi(string(line[:3]))
	}
	final := len(line) < 4 || line[3] != '-'
	if !w.bannerDone {
		w.bannerDone = true
		if code == 220 {
			w.reverseDNS()
			return append(out, fmt.Sprintf("220 %s %s\r\n", w.site.cfg.Hostname, w.site.cfg.Banner)...), false
		}
	}
	out = append(out, plainReply(line, w.site.cfg.Hostname)...)
	if w.ehloFirst {
		w.ehloFirst = false
		if code == 250 && !final {
			for _, kw := range w.extraKeywords() {
				out = append(out, "250-"+kw+"\r\n"...)
			}
		}
	}
	if !final {
		return out, false
	}
	switch {
	case code == 250 && (w.lastCmd == "EHLO" || w.lastCmd == "HELO"):
		w.greeted, w.needHelo = true, false
		w.lastCmd = ""
		if ss := w.sess; ss != nil {
			helo := ss.conn.Hostname()
			w.site.svc.sessions.update(w.id, func(i *sessionInfo) { i.Helo = helo })
		}
	case code == 354 && w.lastCmd == "DATA":
		w.mode, w.dataPrevCRLF, w.dataLineStart = modeData, true, true
		w.startRequest()
	case code == 334:
		w.saslNext = true
	}
	if code == 421 || w.closeAfter.Load() {
		return out, true
	}
	if code >= 500 && countsAsBad(w.lastCmd) {
		return w.countBad(out)
	}
	return out, false
}

// countsAsBad tells which rejected commands count toward max_bad_commands:
// not the message content (DATA, BDAT), not AUTH (it has its own limit).
func countsAsBad(cmd string) bool {
	switch cmd {
	case "DATA", "BDAT", "AUTH", "HELP", "EXPN", "QUIT":
		return false
	}
	return true
}

func (w *wire) countBad(out []byte) ([]byte, bool) {
	w.bad++
	if w.bad < w.site.cfg.MaxBadCommands {
		return out, false
	}
	w.log.Warn("too many bad commands, disconnecting", "bad_commands", w.bad)
	return append(out, "421 4.7.0 "+w.site.cfg.Hostname+" Too many errors, closing connection\r\n"...), true
}

// extraKeywords are the EHLO keywords go-smtp cannot know about.
func (w *wire) extraKeywords() []string {
	var kw []string
	_, isTLS := w.tlsState()
	if w.site.tlsConfig != nil && w.site.cfg.StartTLS && !isTLS {
		kw = append(kw, "STARTTLS")
	}
	if isTLS {
		kw = append(kw, "REQUIRETLS")
	}
	if w.site.cfg.ETRN {
		kw = append(kw, "ETRN")
	}
	if w.site.cfg.ATRN && (isTLS || w.site.cfg.AllowInsecureAuth) {
		kw = append(kw, "ATRN")
	}
	return kw
}

// reply writes one reply line of ours.
func (w *wire) reply(line string) {
	_ = w.conn().SetWriteDeadline(time.Now().Add(w.site.cfg.Timeout.D()))
	out := append(w.pending, line+"\r\n"...)
	w.pending = nil
	w.trace("S: " + string(out))
	if _, err := w.conn().Write(out); err != nil {
		w.abort()
	}
	if strings.HasPrefix(line, "421") {
		w.abort()
	}
}

// replyBad writes a rejection of ours and counts it as a bad command.
func (w *wire) replyBad(line string) {
	out, closeNow := w.countBad(append(w.pending, line+"\r\n"...))
	w.pending = nil
	_ = w.conn().SetWriteDeadline(time.Now().Add(w.site.cfg.Timeout.D()))
	w.trace("S: " + string(out))
	if _, err := w.conn().Write(out); err != nil || closeNow {
		w.abort()
	}
}

// trace logs one line of the SMTP transcript at config.LevelTrace. The
// message content (DATA, BDAT) never passes here; AUTH payloads are
// redacted by redacted.
func (w *wire) trace(line string) {
	if w.log.Enabled(context.Background(), config.LevelTrace) {
		w.log.Log(context.Background(), config.LevelTrace, "smtp", "line", strings.TrimRight(line, "\r\n"))
	}
}

// redacted is a command line as the transcript shows it: a SASL response
// line, and the initial response of AUTH, are replaced by "***".
func (w *wire) redacted(line []byte) string {
	if w.saslNext {
		return "***"
	}
	verb, arg, _ := strings.Cut(string(line), " ")
	if !strings.EqualFold(verb, "AUTH") {
		return string(line)
	}
	if mech, _, ok := strings.Cut(strings.TrimSpace(arg), " "); ok {
		return verb + " " + mech + " ***"
	}
	return string(line)
}

// abort closes the connection at once; go-smtp sees the end of input.
func (w *wire) abort() {
	w.eof.Store(true)
	_ = w.Close()
}

// Close closes the connection (once) and forgets the session.
func (w *wire) Close() error {
	var err error
	w.closeOnce.Do(func() {
		w.eof.Store(true)
		c := w.conn()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		err = c.Close()
		if c != w.raw {
			_ = w.raw.Close()
		}
		if w.onClose != nil {
			w.onClose()
		}
	})
	return err
}

// LocalAddr implements net.Conn.
func (w *wire) LocalAddr() net.Addr { return w.raw.LocalAddr() }

// RemoteAddr implements net.Conn.
func (w *wire) RemoteAddr() net.Addr { return w.raw.RemoteAddr() }

// SetDeadline implements net.Conn.
func (w *wire) SetDeadline(t time.Time) error { return w.conn().SetDeadline(t) }

// SetReadDeadline implements net.Conn.
func (w *wire) SetReadDeadline(t time.Time) error { return w.conn().SetReadDeadline(t) }

// SetWriteDeadline implements net.Conn.
func (w *wire) SetWriteDeadline(t time.Time) error { return w.conn().SetWriteDeadline(t) }

// startTLS answers STARTTLS (RFC 3207) and upgrades the connection.
func (w *wire) startTLS(arg string) error {
	_, isTLS := w.tlsState()
	switch {
	case w.site.tlsConfig == nil || !w.site.cfg.StartTLS:
		w.replyBad("502 5.5.1 STARTTLS not available")
	case isTLS:
		w.replyBad("503 5.5.1 TLS already active")
	case arg != "":
		w.replyBad("501 5.5.4 Syntax error (no parameters allowed)")
	case w.sess != nil && w.sess.user != nil:
		w.replyBad("503 5.5.1 STARTTLS not allowed after AUTH")
	case w.sess != nil && w.sess.inTx:
		w.replyBad("503 5.5.1 STARTTLS not allowed during a mail transaction")
	default:
		w.reply("220 2.0.0 Ready to start TLS")
		tc := tls.Server(w.raw, w.site.tlsConfig)
		_ = w.raw.SetDeadline(time.Now().Add(w.site.cfg.Timeout.D()))
		ctx, cancel := context.WithTimeout(context.Background(), w.site.cfg.Timeout.D())
		defer cancel()
		if err := tc.HandshakeContext(ctx); err != nil {
			w.log.Info("STARTTLS handshake failed", "err", err)
			w.abort()
			return io.EOF
		}
		_ = w.raw.SetDeadline(time.Time{})
		w.setTLS(tc)
		// RFC 3207 §4.2: the client must start over with EHLO.
		w.greeted, w.needHelo = false, true
	}
	return nil
}

// bufConn is a connection whose reads start with what a bufio.Reader
// already holds (the ATRN client takes the connection over).
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

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
