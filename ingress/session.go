package ingress

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/dsn"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/metrics"
)

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// Mail starts a transaction (RFC 5321 §4.1.1.2) after the site's checks.
func (ss *session) Mail(from string, opts mailParams) *reply {
	cfg := ss.sp.cfg
	if cfg.Auth == config.AuthRequired && ss.user == nil {
		ss.site.m.Refused(metrics.RefusedAuthRequired)
		return rep(530, "5.7.0", "Authentication required")
	}
	if cfg.MaxMessagesPerConnection > 0 && ss.messages >= cfg.MaxMessagesPerConnection {
		ss.s.log.Info("messages per connection limit reached", "site", cfg.Name, "client", ss.ip.String(), "messages", ss.messages)
		return rep(421, "4.7.0", cfg.Hostname+" Too many messages in this session, reconnect to send more")
	}
	if cfg.MaxSessionSize > 0 && ss.bytes >= cfg.MaxSessionSize {
		ss.s.log.Info("session size limit reached", "site", cfg.Name, "client", ss.ip.String(), "bytes", ss.bytes)
		return rep(421, "4.7.0", cfg.Hostname+" Session size limit reached, reconnect to send more")
	}
	if _, isTLS := ss.tlsState(); opts.RequireTLS && !isTLS {
		return rep(530, "5.7.10", "REQUIRETLS needs a TLS connection")
	}
	if from != "" {
		if !isASCII(from) && !opts.UTF8 {
			return rep(553, "5.6.7", "Non-ASCII address needs SMTPUTF8")
		}
		if !validPath(from) {
			return rep(501, "5.1.7", "Bad sender address syntax")
		}
		if cfg.SenderLoginMatch && ss.user != nil && !ss.user.MaySendAs(from) {
			ss.s.log.Info("sender not owned by user", "site", cfg.Name, "client", ss.ip.String(), "user", ss.user.Name, "from", from)
			return rep(553, "5.7.1", "Sender address not owned by user "+ss.user.Name)
		}
	}
	if err := ss.s.Room.Check(context.Background(), opts.Size); err != nil {
		return ss.storeErr("", err)
	}
	ss.from = from
	ss.mail = opts
	ss.rcpts = ss.rcpts[:0]
	ss.inTx = true
	return nil
}

// validPath reports whether addr may be the address of MAIL FROM or RCPT
// TO: a mailbox whose domain is a domain name (envelope.CheckAddress: no
// empty label, no stray character), in valid UTF-8, and without a final
// dot: RFC 5321's Domain has none, though the envelope tolerates it.
func validPath(addr string) bool {
	if envelope.CheckAddress(addr) != nil || !utf8.ValidString(addr) {
		return false
	}
	_, domain, _ := envelope.Split(addr)
	return !strings.HasSuffix(domain, ".")
}

// Rcpt adds a recipient: local, alias and held domains from anyone, any
// other domain only from relay_networks or an authenticated user.
func (ss *session) Rcpt(to string, opts rcptParams) *reply {
	cfg := ss.scfg
	if !isASCII(to) && !ss.mail.UTF8 {
		return rep(553, "5.6.7", "Non-ASCII address needs SMTPUTF8")
	}
	if !validPath(to) {
		return rep(501, "5.1.3", "Bad recipient address syntax")
	}
	local, dom, _ := envelope.Split(to)
	domain := envelope.NormalizeDomain(dom)
	d, configured := cfg.Domain(domain)
	alias := configured && d.Type == config.DomainAlias
	held := configured && d.Type == config.DomainRemote && d.Hold
	inbound := held || ((cfg.IsLocal(domain) || alias) && (ss.sp.local == nil || ss.sp.local[domain]))
	trusted := ss.relay || ss.user != nil
	if !inbound && !trusted {
		ss.s.log.Info("relay denied", "site", ss.sp.cfg.Name, "client", ss.ip.String(), "rcpt", to)
		ss.site.m.Refused(metrics.RefusedRelay)
		return rep(550, "5.7.1", "Unable to relay for "+to)
	}
	if !trusted && strings.ContainsAny(strings.Trim(local, `"`), "%@!") {
		// Routing in disguise for one of our domains: user%other@local,
		// "user@other"@local, other!user@local.
		ss.s.log.Info("relay denied (routed address)", "site", ss.sp.cfg.Name, "client", ss.ip.String(), "rcpt", to)
		ss.site.m.Refused(metrics.RefusedRelay)
		return rep(550, "5.7.1", "Unable to relay for "+to)
	}
	r := envelope.Rcpt{Addr: to, Notify: opts.Notify}
	if opts.ORcpt != "" {
		r.ORcpt = opts.ORcptType + ";" + dsn.EncodeXtext(opts.ORcpt)
	}
	if alias {
		// Alias domains are the default domain (IIS). The address as
		// given stays the original recipient for reports (RFC 3461 §4.2).
		r.Addr, _ = cfg.Unalias(to)
		if r.ORcpt == "" {
			r.ORcpt = "rfc822;" + dsn.EncodeXtext(to)
		}
	}
	if rep := ss.checkRcpt(r.Addr, to); rep != nil {
		return rep
	}
	ss.rcpts = append(ss.rcpts, r)
	return nil
}

// Data reads the message and stores it; the reply says whether it was.
func (ss *session) Data(r io.Reader) *reply {
	s := ss.s
	now := s.Now()
	qid := envelope.NewQueueID()
	env := &envelope.Envelope{
		QueueID:    qid,
		MsgID:      qid,
		From:       ss.from,
		Rcpts:      append([]envelope.Rcpt(nil), ss.rcpts...),
		BodyType:   ss.mail.Body,
		SMTPUTF8:   ss.mail.UTF8,
		Ret:        ss.mail.Ret,
		EnvID:      dsn.EncodeXtext(ss.mail.EnvID), // the envelope keeps xtext, as it travels
		RequireTLS: ss.mail.RequireTLS,
		Size:       ss.mail.Size,
		ReceivedAt: now,
		ExpiresAt:  now.Add(ss.scfg.Delivery.Expire.D()),
		ClientIP:   ss.ip.String(),
		Helo:       sanitize(ss.helo),
		Source:     "smtp",
		Site:       ss.sp.cfg.Name,
	}
	if ss.user != nil {
		env.AuthUser = ss.user.Name
	}
	if st, ok := ss.tlsState(); ok {
		env.TLS = tlsString(st.Version, st.CipherSuite)
	}
	received := ss.received(qid, now, env)

	// Read up to InlineMax+1 bytes to decide inline vs Object Store.
	// r buffers by itself (data.go); the message is kept in a pooled
	// buffer until it is stored.
	buf := msgBuffers.Get().(*bytes.Buffer)
	buf.Reset()
	defer msgBuffers.Put(buf)
	buf.Write(received)
	_, err := io.CopyN(buf, r, envelope.InlineMax+1-int64(len(received)))
	if err != nil && !errors.Is(err, io.EOF) {
		return rep(451, "4.3.0", "Error reading message data") // the reader says why
	}
	small := errors.Is(err, io.EOF)
	env.Hops = envelope.CountReceived(buf.Bytes())

	ctx, cancel := context.WithTimeout(context.Background(), s.StoreTimeout)
	defer cancel()
	size := int64(buf.Len())
	if !small {
		size = max(ss.mail.Size, size)
	}
	if err := s.Room.Check(ctx, size); err != nil {
		return ss.storeErr(qid, err)
	}
	var data []byte
	var verdict checked // the inbound checks' (checks.go)
	if small {
		if what := ss.bareNewline(); what != "" {
			return ss.refuseBare(qid, what)
		}
		data = buf.Bytes()
		if ss.checksApply() {
			if data, verdict = ss.checkInline(qid, len(received), data); verdict.reply != nil {
				return verdict.reply
			}
		}
		env.Body = envelope.BodyInline
		env.BodySize = int64(len(data))
	} else {
		// Stream the rest straight into the Object Store; the body is
		// never held in memory whole.
		cr := &countingReader{r: io.MultiReader(bytes.NewReader(buf.Bytes()), r)}
		name := ss.bodyName(qid)
		size, err := s.bodies.Put(ctx, name, cr)
		if cr.err != nil {
			// The client's data failed (too large, connection lost): the
			// Put aborted and purged its chunks.
			_ = s.bodies.Delete(ctx, name)
			return rep(451, "4.3.0", "Error reading message data")
		}
		if err != nil {
			return ss.storeErr(qid, err)
		}
		if what := ss.bareNewline(); what != "" {
			_ = s.bodies.Delete(ctx, name)
			return ss.refuseBare(qid, what)
		}
		if name != qid {
			if size, verdict, err = ss.checkStored(ctx, qid, received, buf.Bytes()[len(received):]); err != nil {
				_ = s.bodies.Delete(ctx, qid)
				return ss.storeErr(qid, err)
			} else if verdict.reply != nil {
				return verdict.reply
			}
		}
		env.Body = envelope.BodyObject
		env.BodySize = size
	}
	env.Reason = verdict.quarantine
	msg, err := env.Msg(verdict.subject(), data)
	if err != nil {
		s.log.Error("envelope rejected", "qid", qid, "err", err)
		return rep(451, "4.3.0", "Temporary local problem, try again later")
	}
	rcpts := bus.Addrs(env.Rcpts)
	events := []bus.Event{{Type: bus.EventReceived, Time: now.UTC(), QueueID: qid, Domain: bus.DomainOf(rcpts),
		Site: env.Site, ClientIP: env.ClientIP, ClientName: ss.clientName, Helo: env.Helo, AuthUser: env.AuthUser,
		TLS: env.TLS, Size: env.BodySize, RcptCount: len(rcpts), Sender: env.From, Rcpts: rcpts}}
	if _, err := s.Room.PublishEmit(ctx, msg, qid, events); err != nil {
		if env.Body == envelope.BodyObject {
			_ = s.bodies.Delete(context.Background(), qid)
		}
		return ss.storeErr(qid, err)
	}
	ss.messages++
	ss.tx.qid = qid
	ss.bytes += env.BodySize
	s.sessions.update(ss.id, func(i *sessionInfo) { i.Messages, i.Bytes = ss.messages, ss.bytes })
	s.log.Info("received", "qid", qid, "site", env.Site, "client", env.ClientIP, "user", env.AuthUser, "tls", env.TLS, "from", env.From, "rcpts", len(env.Rcpts), "size", env.BodySize)
	return rep(250, "2.0.0", "OK queued as "+qid)
}

// msgBuffers hold messages while they are stored (up to InlineMax+1
// bytes each): one allocation per session instead of several per message.
var msgBuffers = sync.Pool{New: func() any { return bytes.NewBuffer(make([]byte, 0, 16<<10)) }}

// refuseBare answers a message with bare line ends (smtpd_forbid_bare_newline
// = reject) and closes the connection after the reply.
func (ss *session) refuseBare(qid, what string) *reply {
	ss.s.log.Warn("bare newline in message, refused and disconnecting", "qid", qid, "site", ss.sp.cfg.Name, "client", ss.ip.String(), "bare", what)
	ss.quit = true
	return rep(550, "5.5.2", "Error: bare "+what+" received")
}

func (ss *session) storeErr(qid string, err error) *reply {
	if errors.Is(err, bus.ErrStoreFull) {
		ss.site.m.Refused(metrics.RefusedNoRoom)
		ss.s.log.Warn("no room for new mail, refused", "qid", qid, "site", ss.sp.cfg.Name, "client", ss.ip.String(), "err", err)
		return rep(452, "4.3.1", "Insufficient system storage")
	}
	ss.s.log.Error("store failed, mail refused", "qid", qid, "err", err)
	return rep(451, "4.3.0", "Temporary local problem, try again later")
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

// received renders our Received: trace header (RFC 5321 §4.4): the client's
// EHLO name, its checked reverse DNS name when reverse_dns is on, the
// protocol (ESMTP, ESMTPS with TLS, ESMTPA/ESMTPSA after AUTH, RFC 3848)
// and the TLS version and cipher.
func (ss *session) received(qid string, now time.Time, env *envelope.Envelope) []byte {
	var b strings.Builder
	helo := env.Helo
	if helo == "" {
		helo = "unknown"
	}
	proto := "ESMTP"
	if env.TLS != "" {
		proto += "S"
	}
	if env.AuthUser != "" {
		proto += "A"
	}
	name := ""
	if ss.clientName != "" {
		name = ss.clientName + " "
	}
	fmt.Fprintf(&b, "Received: from %s (%s[%s])\r\n\tby %s (Mailroot) with %s id %s", helo, name, env.ClientIP, ss.sp.cfg.Hostname, proto, qid)
	if st, ok := ss.tlsState(); ok {
		fmt.Fprintf(&b, "\r\n\t(using %s with cipher %s)", tlsVersion(st.Version), tls.CipherSuiteName(st.CipherSuite))
	}
	if len(env.Rcpts) == 1 {
		fmt.Fprintf(&b, "\r\n\tfor <%s>", env.Rcpts[0].Addr)
	}
	fmt.Fprintf(&b, "; %s\r\n", now.Format(time.RFC1123Z))
	return []byte(b.String())
}

// sanitize drops the control characters of s.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if isControl(r) {
			return -1
		}
		return r
	}, s)
}

// isControl reports whether r is an ASCII control character.
func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// reverseDNS looks the client's name up (reverse_dns), forward-confirmed:
// the PTR name must resolve back to the address, else it is "unknown".
func (ss *session) reverseDNS() {
	if !ss.sp.cfg.ReverseDNS || !ss.ip.IsValid() {
		return
	}
	ctx, cancel := context.WithDeadline(context.Background(), ss.lookupDeadline())
	defer cancel()
	name, err := ss.s.Resolver.ConfirmedName(ctx, ss.ip)
	ss.nameErr = err
	if err != nil || name == "" {
		name = "unknown"
	}
	ss.clientName = sanitize(name)
	ss.s.sessions.update(ss.id, func(i *sessionInfo) { i.ClientName = ss.clientName })
}

// bareNewline reports the bare line ends of the current message: "" when
// none or when this client's are normalised.
func (ss *session) bareNewline() string {
	switch {
	case ss.bare == 0 || ss.normalize:
		return ""
	case ss.bare&bareLF != 0:
		return "<LF>"
	default:
		return "<CR>"
	}
}
