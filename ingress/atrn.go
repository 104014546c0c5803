package ingress

import (
	"context"
	"errors"

	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/dsn"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/notify"
	"github.com/mailroot/mailroot/internal/smtpclient"
)

// ATRN (RFC 2645, On-Demand Mail Relay): an authenticated client asks for
// the held mail of its domains ("ATRN" for all it may dequeue, or "ATRN
// d1,d2"); Mailroot answers
//
//	250 2.0.0 OK now reversing the connection
//	450 4.7.1 ATRN request refused         (a domain the user may not dequeue)
//	451 4.3.0 Unable to process ATRN request now   (another session has the domains)
//	453 4.7.0 You have no mail
//	530 5.7.0 Authentication required
//
// and after 250 turns the connection around: the client becomes the SMTP
// server (it greets with 220) and Mailroot delivers the messages waiting on
// mail.hold.<tok>, pulled from the durable consumer hold_<tok>, with
// internal/smtpclient on the same connection. Each message is acked only after
// the peer's 250 for it; recipients it refuses for now go back to hold,
// refused ones to Badmail; a broken connection returns everything not yet
// acknowledged to the hold queue, so nothing is lost. One ATRN session per
// domain cluster-wide is enforced by a lock in the mta-sessions bucket
// (lock.atrn.<tok>, 10 minutes, refreshed while the session runs).

const (
	atrnLockTTL     = 10 * time.Minute
	atrnLockRefresh = 3 * time.Minute
	// atrnRetryDelay is how long a message the peer could not take now
	// stays out of ATRN sessions.
	atrnRetryDelay = 5 * time.Minute
)

type atrnLock struct {
	domain, tok, key string
	rev              uint64
}

func (ss *session) atrn(arg string) {
	if ss.user == nil {
		ss.reply(530, "5.7.0", "Authentication required")
		return
	}
	u := ss.user
	var domains []string
	if arg == "" {
		for _, d := range u.ATRN {
			domains = append(domains, envelope.NormalizeDomain(d))
		}
	} else {
		for _, d := range strings.Split(arg, ",") {
			d = envelope.NormalizeDomain(strings.TrimSpace(d))
			if d == "" || strings.ContainsAny(d, "@ []") {
				ss.reply(501, "5.5.4", "Syntax: ATRN [domain[,domain]...]")
				return
			}
			if !u.MayDequeue(d) {
				ss.log.Warn("ATRN refused: domain not allowed for user", "user", u.Name, "domain", d)
				ss.reply(450, "4.7.1", "ATRN request refused")
				return
			}
			domains = append(domains, d)
		}
	}
	if len(domains) == 0 {
		ss.reply(450, "4.7.1", "ATRN request refused: no domains to dequeue")
		return
	}
	svc := ss.s
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var locks []*atrnLock
	held := 0
	for _, d := range domains {
		tok := bus.Token(d)
		l := &atrnLock{domain: d, tok: tok, key: bus.ATRNLockPrefix + tok}
		rev, err := bus.Lock(ctx, svc.js, bus.BucketSessions, l.key, []byte(svc.sessions.key(ss.id)), atrnLockTTL)
		if err != nil {
			if !errors.Is(err, bus.ErrLocked) {
				ss.log.Error("ATRN lock failed", "domain", d, "err", err)
			} else {
				ss.log.Info("ATRN domain busy in another session", "domain", d)
			}
			continue
		}
		l.rev = rev
		locks = append(locks, l)
		n, err := bus.HeldCount(ctx, svc.js, tok)
		if err != nil {
			ss.log.Error("ATRN count failed", "domain", d, "err", err)
		}
		held += n
	}
	defer func() {
		uctx, ucancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer ucancel()
		for _, l := range locks {
			_ = bus.Unlock(uctx, svc.js, bus.BucketSessions, l.key, l.rev)
		}
	}()
	if len(locks) == 0 {
		ss.reply(451, "4.3.0", "Unable to process ATRN request now")
		return
	}
	if held == 0 {
		ss.reply(453, "4.7.0", "You have no mail")
		return
	}
	ss.reply(250, "2.0.0", "OK now reversing the connection")
	ss.log.Info("ATRN: connection turned", "user", u.Name, "domains", domains, "held", held)
	if !ss.flush() {
		return
	}
	ss.runATRN(locks)
	ss.quit = true
}

// runATRN delivers the held mail of the locked domains over the turned
// connection.
func (ss *session) runATRN(locks []*atrnLock) {
	svc := ss.s
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Keep the locks while the session runs.
	go func() {
		t := time.NewTicker(atrnLockRefresh)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				for _, l := range locks {
					if rev, err := bus.PutTTL(ctx, svc.js, bus.BucketSessions, l.key, []byte(svc.sessions.key(ss.id)), atrnLockTTL, int64(l.rev)); err == nil {
						l.rev = rev
					}
				}
			}
		}
	}()
	_ = ss.conn().SetDeadline(time.Time{})
	_, isTLS := ss.tlsState()
	c, herr := smtpclient.New(bufConn{Conn: ss.conn(), r: ss.br}, ss.peerName(), isTLS, smtpclient.Options{
		Hostname:       ss.sp.cfg.Hostname,
		CommandTimeout: ss.sp.cfg.Timeout.D(),
	})
	if herr != nil {
		ss.log.Info("ATRN: peer did not greet", "err", herr)
		return
	}
	delivered := 0
	for _, l := range locks {
		n, ok := ss.drainHeld(ctx, c, l)
		delivered += n
		if !ok {
			ss.log.Info("ATRN: connection lost", "delivered", delivered)
			return
		}
	}
	c.Quit()
	ss.log.Info("ATRN: session done", "delivered", delivered)
}

// drainHeld sends one domain's held messages; ok is false when the
// connection broke.
func (ss *session) drainHeld(ctx context.Context, c *smtpclient.Client, l *atrnLock) (delivered int, ok bool) {
	svc := ss.s
	cons, err := bus.EnsureHoldConsumer(ctx, svc.js, l.tok, svc.conf().NATS.Replicas)
	if err != nil {
		ss.log.Error("ATRN: hold consumer", "domain", l.domain, "err", err)
		return 0, true
	}
	tried := map[string]bool{}
	for {
		batch, err := cons.Fetch(10, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			ss.log.Error("ATRN: fetch", "domain", l.domain, "err", err)
			return delivered, true
		}
		got := 0
		broken := false
		for m := range batch.Messages() {
			got++
			if broken {
				_ = m.Nak()
				continue
			}
			if qid := m.Headers().Get(envelope.HdrQueueID); tried[qid] {
				// Came back in this session (some recipients deferred).
				_ = m.NakWithDelay(atrnRetryDelay)
				continue
			} else {
				tried[qid] = true
			}
			sent, connOK := ss.sendHeld(ctx, c, l, m)
			if sent {
				delivered++
			}
			broken = !connOK
		}
		if broken {
			return delivered, false
		}
		if got == 0 {
			return delivered, true
		}
	}
}

// sendHeld runs one SMTP transaction for a held message and settles it.
func (ss *session) sendHeld(ctx context.Context, c *smtpclient.Client, l *atrnLock, m jetstream.Msg) (sent, connOK bool) {
	svc := ss.s
	env, err := envelope.Decode(m.Headers())
	if err != nil {
		if merr := bus.MoveToBad(ctx, svc.Room, m, "ATRN: "+err.Error()); merr != nil {
			_ = m.NakWithDelay(time.Minute)
		}
		return false, true
	}
	log := ss.log.With("qid", env.QueueID, "domain", l.domain)
	stop := bus.KeepAlive(m, 30*time.Second)
	defer stop()
	body, err := svc.bodies.Open(ctx, env, m.Data())
	if err != nil {
		log.Error("ATRN: body unavailable", "err", err)
		_ = m.NakWithDelay(atrnRetryDelay)
		return false, true
	}
	defer body.Close()

	if env.RequireTLS {
		if _, isTLS := ss.tlsState(); !isTLS {
			log.Info("ATRN: REQUIRETLS message kept held on a plaintext connection")
			_ = m.NakWithDelay(atrnRetryDelay)
			return false, true
		}
	}
	res, herr := c.Send(ctx, env, func(context.Context) (io.ReadCloser, *smtpclient.Error) { return io.NopCloser(body), nil })
	if herr != nil {
		res = smtpclient.All(len(env.Rcpts), herr)
	}
	var accepted, temp, perm []envelope.Rcpt
	var last *smtpclient.Error
	for i, e := range res.Errs {
		switch {
		case e == nil:
			accepted = append(accepted, env.Rcpts[i])
		case e.Broken:
			// No answer: the message stays held as it is.
			log.Info("ATRN: transfer interrupted, message stays held", "err", e)
			_ = m.Nak()
			return false, false
		case e.Permanent:
			perm, last = append(perm, env.Rcpts[i]), e
		default:
			temp, last = append(temp, env.Rcpts[i]), e
		}
	}
	return len(accepted) > 0, ss.settleHeld(ctx, log, m, env, l, accepted, temp, perm, last)
}

// peerName names the ATRN client for reports, "[ip]".
func (ss *session) peerName() string {
	if ip := ss.ip; ip.IsValid() {
		return "[" + ip.String() + "]"
	}
	return "the ATRN client"
}

// settleHeld acks a held message after its outcome is stored: recipients
// deferred by the peer go back to mail.hold.<tok>, refused ones to
// mail.bad.
func (ss *session) settleHeld(ctx context.Context, log *slog.Logger, m jetstream.Msg, env *envelope.Envelope, l *atrnLock, delivered, temp, perm []envelope.Rcpt, last *smtpclient.Error) (connOK bool) {
	svc := ss.s
	if len(delivered) == 0 && len(perm) == 0 {
		// Nothing changed: leave it held as it is, out of this session.
		log.Info("ATRN: deferred by peer", "err", errString(last))
		_ = m.NakWithDelay(atrnRetryDelay)
		return true
	}
	var seq uint64
	if md, _ := m.Metadata(); md != nil {
		seq = md.Sequence.Stream
	}
	successors := 0
	if len(temp) > 0 {
		successors++
	}
	nullSender := env.From == ""
	if len(perm) > 0 && nullSender {
		successors++ // the Badmail copy refers to the body; a report has its own
	}
	data := m.Data()
	if env.Body == envelope.BodyObject {
		data = nil
		if err := svc.bodies.Retain(ctx, env, successors); err != nil {
			log.Error("ATRN: retain body", "err", err)
			_ = m.NakWithDelay(time.Minute)
			return true
		}
	}
	publish := func(subject, id string, rcpts []envelope.Rcpt, reason string) error {
		next := env.Clone()
		next.Rcpts = rcpts
		next.MsgID = id
		next.LastError = errString(last)
		next.Reason = reason
		msg, err := next.Msg(subject, data)
		if err != nil {
			return err
		}
		_, err = svc.Room.Forward(ctx, msg, next.MsgID)
		return err
	}
	if len(temp) > 0 {
		if err := publish(bus.Hold(l.tok), envelope.ATRNID(env.QueueID, l.tok, seq), temp, ""); err != nil {
			log.Error("ATRN: requeue deferred recipients", "err", err)
			_ = m.NakWithDelay(time.Minute)
			return true
		}
	}
	if len(perm) > 0 && nullSender {
		// Nobody to tell: Badmail, as for any failed null-sender mail.
		if err := publish(bus.SubjBad, envelope.ATRNBadID(env.QueueID, l.tok, seq), perm, "5.0.0 refused by the ATRN client: "+errString(last)); err != nil {
			log.Error("ATRN: move refused recipients to badmail", "err", err)
			_ = m.NakWithDelay(time.Minute)
			return true
		}
	}
	if len(perm) > 0 && !nullSender {
		// The sender gets a non-delivery report, as for any refusal.
		if err := ss.bounceRefused(ctx, env, m.Data(), l.tok, seq, perm, last); err != nil {
			log.Error("ATRN: report refused recipients", "err", err)
			_ = m.NakWithDelay(time.Minute)
			return true
		}
	}
	// The mail log: delivered over the turned connection, the peer being
	// the client that sent ATRN.
	tlsName := ""
	if st, ok := ss.tlsState(); ok {
		tlsName = tlsString(st.Version, st.CipherSuite)
	}
	for _, r := range delivered {
		bus.Emit(svc.js, bus.Event{Type: bus.EventDelivered, QueueID: env.QueueID, Domain: l.domain, Sender: env.From,
			Rcpt: r.Addr, MX: ss.clientName, MXIP: ss.ip.String(), TLS: tlsName, Attempt: env.Attempt + 1, Subject: m.Subject()})
	}
	if err := m.DoubleAck(ctx); err != nil {
		log.Warn("ATRN: ack failed", "err", err)
		return true
	}
	_ = svc.bodies.Release(ctx, env)
	log.Info("ATRN: delivered", "rcpts", len(delivered), "deferred", len(temp), "refused", len(perm))
	return true
}

// bounceRefused sends the sender an RFC 3464 report for recipients the
// ATRN client refused with a 5xx reply.
func (ss *session) bounceRefused(ctx context.Context, env *envelope.Envelope, data []byte, tok string, seq uint64, rcpts []envelope.Rcpt, last *smtpclient.Error) error {
	svc := ss.s
	status := "5.0.0"
	if last.Enhanced != "" {
		status = last.Enhanced
	}
	reply := status + " " + last.Message // as the client said it
	if last.Code != 0 {
		reply = strconv.Itoa(last.Code) + " " + reply
	}
	remote := ss.peerName()
	statuses := make([]dsn.Status, len(rcpts))
	for i, r := range rcpts {
		statuses[i] = dsn.Status{Rcpt: r, Action: dsn.ActionFailed, Status: status, Remote: remote, Reply: reply,
			Detail: reply + " (refused by " + remote + " over ATRN)"}
	}
	n := notify.NewNotifier(*svc.conf(), svc.js, svc.bodies)
	n.Room = svc.Room
	_, err := n.Send(ctx, dsn.Notice{
		Kind: dsn.Failure, ID: envelope.ATRNDSNID(env.QueueID, tok, seq), Env: env, Data: data,
		Rcpts: statuses, LastAttempt: time.Now(),
	})
	return err
}

func errString(err *smtpclient.Error) string {
	if err == nil {
		return ""
	}
	return sanitize(err.Error())
}
