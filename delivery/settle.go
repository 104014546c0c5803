package delivery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/dsn"
	"github.com/mailroot/mailroot/internal/envelope"
)

// outcome is the result of one delivery attempt, remote or local, for
// settle to act on.
type outcome struct {
	env  *envelope.Envelope
	tok  string
	data []byte // the message's payload (inline body or nothing)
	// target is the subject a retry schedule fires into: mail.out.<tok>
	// or mail.drop.
	target string
	// local is true for the Drop directory: local_expire and
	// local_delay_notice apply, and success is final delivery.
	local bool
	// errs has one entry per recipient of env: nil for delivered.
	errs []*Error
	// remote and reply name the server that accepted the message and its
	// answer to the end of DATA, for success notices.
	remote, reply string
	// relayed is true when the accepting server does not send
	// notifications itself (no DSN): NOTIFY=SUCCESS is answered by us.
	relayed bool
	// tls is the TLS of the session that delivered, took how long the
	// attempt lasted, file the Drop file written: for the events.
	tls  string
	took time.Duration
	// policy and tlsFailure are the attempt's TLS policy and what a
	// testing policy would have refused (result).
	policy, tlsFailure string
	file               string
}

// failure is a group of recipients that failed permanently with one error.
type failure struct {
	rcpts []envelope.Rcpt
	err   *Error
}

// addFailure adds r to the group with the same error text, or a new one.
func addFailure(fs []failure, r envelope.Rcpt, e *Error) []failure {
	for i := range fs {
		if fs[i].err.Error() == e.Error() {
			fs[i].rcpts = append(fs[i].rcpts, r)
			return fs
		}
	}
	return append(fs, failure{rcpts: []envelope.Rcpt{r}, err: e})
}

// settle finishes one attempt (docs/DESIGN.md §4):
//
//   - recipients that failed for good, or whose message expired, get a
//     non-delivery report (one per attempt, all of them in it); mail from
//     the null sender cannot be answered and goes to Badmail instead (a
//     failed report is a double bounce);
//   - delivered recipients that asked for NOTIFY=SUCCESS get a notice when
//     the message was relayed to a server without DSN or written to Drop;
//   - recipients still pending get, once, a delay notice after
//     delay_notice, and are republished as a retry schedule at the next
//     step of the ladder;
//   - the message is acked only after all of that is stored, and its
//     Object Store body released if nothing refers to it any more.
//
// Every successor has a deterministic Nats-Msg-Id, so a crash anywhere in
// here repeats work that JetStream deduplicates.
func (s *Service) settle(ctx context.Context, m jetstream.Msg, log *slog.Logger, o outcome) {
	// From here on the message is settled even if shutdown began: ctx is
	// the worker's handler context, which lasts the grace period past the
	// shutdown. A settlement cut short there is not acked, so the message
	// is delivered again (and its successors, published with the same
	// ids, stored once).
	ctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	env := o.env
	now := s.Now()
	attempt := env.Attempt + 1
	expires := s.expiry(env, o.local, now)

	var delivered, temp []envelope.Rcpt
	var tempErrs []*Error
	var perm []failure
	for i, e := range o.errs {
		switch {
		case e == nil:
			delivered = append(delivered, env.Rcpts[i])
		case e.Permanent:
			perm = addFailure(perm, env.Rcpts[i], e)
		default:
			temp = append(temp, env.Rcpts[i])
			tempErrs = append(tempErrs, e)
		}
	}
	var expired []envelope.Rcpt
	if len(temp) > 0 && !now.Before(expires) {
		expired = temp
		for i, r := range temp {
			perm = addFailure(perm, r, &Error{
				Permanent: true,
				Enhanced:  "4.4.7",
				Message:   fmt.Sprintf("message expired after %d attempts: %s", attempt, tempErrs[i].Error()),
				Err:       tempErrs[i],
			})
		}
		temp, tempErrs = nil, nil
	}

	// Successors that refer to the body: the retry schedule and, for the
	// null sender, the Badmail copies. Reports carry their own copy.
	successors := 0
	if len(temp) > 0 {
		successors++
	}
	if env.From == "" {
		successors += len(perm)
	}
	fail := func(what string, err error) {
		log.Error(what+" failed, will retry", "err", err)
		_ = m.NakWithDelay(time.Minute)
	}
	if successors > 1 {
		if err := s.bodies.Retain(ctx, env, successors-1); err != nil {
			fail("retain body", err)
			return
		}
	}
	// notify publishes one notification about env (id is its
	// Nats-Msg-Id) and returns the report's queue id ("" when none was
	// asked for); false means it failed and the message was given back.
	notify := func(kind dsn.Kind, id string, st []dsn.Status, until time.Time) (string, bool) {
		qid, err := s.notify.Send(ctx, dsn.Notice{
			Kind: kind, ID: id,
			Env: envAt(env, attempt), Data: o.data, Rcpts: st, LastAttempt: now, RetryUntil: until,
		})
		if err != nil {
			fail(kind.String()+" notification", err)
			return "", false
		}
		if qid == "" {
			if kind == dsn.Failure {
				log.Info("no failure notification: the recipients asked for none (NOTIFY)", "attempt", attempt)
			}
		} else {
			log.Info(kind.String()+" notification queued", "dsn_qid", qid, "to", env.From, "attempt", attempt)
		}
		return qid, true
	}
	// events are emitted once every successor is stored, before the ack:
	// a redelivery emits the same ids again (EventMsgID).
	var events []bus.Event

	if len(expired) > 0 {
		// Before the bounced (or badmail) event that it causes.
		events = append(events, bus.Event{Type: bus.EventExpired, Rcpts: bus.Addrs(expired), Attempt: attempt,
			Reason: fmt.Sprintf("queued since %s, expired at %s", env.ReceivedAt.UTC().Format(time.RFC3339), expires.UTC().Format(time.RFC3339))})
	}
	if len(perm) > 0 {
		if env.From == "" {
			for i, f := range perm {
				id := envelope.BadID(env.QueueID, o.tok, attempt, i)
				if err := s.permanentFailure(ctx, env, o.data, f, attempt, now, id, m.Subject()); err != nil {
					fail("publish to badmail", err)
					return
				}
				log.Warn("delivery failed permanently, null sender: to badmail", "rcpts", describe(f.rcpts), "remote", f.err.Remote, "attempt", attempt, "reason", f.err.Error())
			}
		} else {
			var st []dsn.Status
			for _, f := range perm {
				for _, r := range f.rcpts {
					st = append(st, statusOf(r, dsn.ActionFailed, f.err))
				}
				log.Warn("delivery failed permanently", "rcpts", describe(f.rcpts), "remote", remoteOf(f.err), "attempt", attempt, "reason", f.err.Error())
			}
			// The original of what failed is kept for a while, for
			// `mailroot redrive` (bus.StreamFailed).
			var failed []envelope.Rcpt
			for _, f := range perm {
				failed = append(failed, f.rcpts...)
			}
			kept, err := bus.KeepFailed(ctx, s.Room, s.bodies, env, o.data, failed, o.tok, "a", uint64(attempt))
			if err != nil {
				fail("keep failed copy", err)
				return
			}
			report, ok := notify(dsn.Failure, envelope.FailureDSNID(env.QueueID, o.tok, attempt), st, time.Time{})
			if !ok {
				return
			}
			ev := bounced(env, perm, attempt, report)
			ev.Kept = kept
			events = append(events, ev)
		}
	}

	if len(delivered) > 0 && env.From != "" && (o.local || o.relayed) {
		action, reply := dsn.ActionRelayed, o.reply
		if o.local {
			action, reply = dsn.ActionDelivered, ""
		}
		var st []dsn.Status
		for _, r := range delivered {
			st = append(st, dsn.Status{Rcpt: r, Action: action, Status: "2.0.0", Remote: o.remote, Reply: reply})
		}
		if _, ok := notify(dsn.Success, envelope.SuccessDSNID(env.QueueID, o.tok, attempt), st, time.Time{}); !ok {
			return
		}
	}

	delayNotified := env.DelayNotified
	if len(temp) > 0 && s.delayDue(env, o.local, now) {
		var st []dsn.Status
		for i, r := range temp {
			st = append(st, statusOf(r, dsn.ActionDelayed, tempErrs[i]))
		}
		if _, ok := notify(dsn.Delay, envelope.DelayDSNID(env.QueueID, o.tok), st, expires); !ok {
			return
		}
		delayNotified = true
	}

	if len(temp) > 0 {
		at, err := s.reschedule(ctx, o, temp, tempErrs[0], attempt, now, expires, delayNotified)
		if err != nil {
			fail("publish retry schedule", err)
			return
		}
		log.Info("delivery deferred", "rcpts", describe(temp), "remote", tempErrs[0].Remote, "attempt", attempt, "next", at, "err", tempErrs[0].Error())
		ev := bus.Event{Type: bus.EventDeferred, Rcpts: bus.Addrs(temp), Reply: tempErrs[0].Error(), Attempt: attempt}
		ev.MX, ev.MXIP = splitRemote(tempErrs[0].Remote)
		if at.After(now) {
			ev.NextAttempt = at.UTC()
		}
		events = append(events, ev)
	}
	if len(delivered) > 0 {
		events = append(events, s.deliveredEvents(o, delivered, attempt)...)
	}
	for _, ev := range events {
		ev.Time, ev.QueueID, ev.Domain = now.UTC(), env.QueueID, envelope.NormalizeDomain(env.Domain)
		if ev.Domain == "" {
			ev.Domain = bus.DomainOf(bus.Addrs(env.Rcpts))
		}
		if ev.Sender == "" {
			ev.Sender = env.From
		}
		bus.Emit(s.js, ev)
	}
	if err := m.DoubleAck(ctx); err != nil {
		// Redelivery is safe: the successors are deduplicated by id and
		// the crash-window guard drops the copy.
		log.Warn("ack failed", "err", err)
		return
	}
	s.m.Delivered.Add(float64(len(delivered)))
	if len(delivered) > 0 && !env.ReceivedAt.IsZero() {
		lat := max(now.Sub(env.ReceivedAt), 0).Seconds()
		for range delivered {
			s.m.DeliveryLatency.Observe(lat)
		}
	}
	s.m.Deferred.Add(float64(len(temp)))
	for _, f := range perm {
		s.m.Bounced.Add(float64(len(f.rcpts)))
	}
	if len(delivered) > 0 && !o.local {
		args := []any{"remote", o.remote, "rcpts", describe(delivered), "attempt", attempt, "tls", o.tls, "tls_policy", o.policy}
		if o.tlsFailure != "" {
			args = append(args, "tls_failure", o.tlsFailure)
		}
		log.Info("delivered", args...)
	}
	if successors == 0 {
		if err := s.bodies.Release(ctx, env); err != nil {
			log.Warn("release body failed", "err", err)
		}
	}
}

// deliveredEvents are the events of the recipients o delivered: one
// delivered event each for remote delivery, one dropped event for the Drop
// directory.
func (s *Service) deliveredEvents(o outcome, delivered []envelope.Rcpt, attempt int) []bus.Event {
	if o.local {
		return []bus.Event{{Type: bus.EventDropped, Rcpts: bus.Addrs(delivered), File: o.file, Attempt: attempt}}
	}
	mx, ip := splitRemote(o.remote)
	out := make([]bus.Event, len(delivered))
	for i, r := range delivered {
		out[i] = bus.Event{Type: bus.EventDelivered, Rcpt: r.Addr, MX: mx, MXIP: ip, Reply: o.reply, TLS: o.tls,
			TLSPolicy: o.policy, TLSFailure: o.tlsFailure, DurationMS: o.took.Milliseconds(), Attempt: attempt}
	}
	return out
}

// bounced is the event of the recipients that failed for good in one
// attempt, reported to the sender in report.
func bounced(env *envelope.Envelope, perm []failure, attempt int, report string) bus.Event {
	ev := bus.Event{Type: bus.EventBounced, Attempt: attempt, ReportQID: report}
	var reasons []string
	for _, f := range perm {
		ev.Rcpts = append(ev.Rcpts, bus.Addrs(f.rcpts)...)
		reasons = append(reasons, f.err.Error())
	}
	ev.Reason = strings.Join(reasons, "; ")
	if mx := remoteOf(perm[0].err); mx != "" {
		ev.MX, ev.MXIP = splitRemote(mx)
	}
	return ev
}

// splitRemote splits "name[ip]" (remoteName) into the host and the
// address; "[ip]" has no host.
func splitRemote(remote string) (host, ip string) {
	host, rest, ok := strings.Cut(remote, "[")
	if !ok {
		return remote, ""
	}
	return host, strings.TrimSuffix(rest, "]")
}

// envAt is env as reported on after attempt number attempt.
func envAt(env *envelope.Envelope, attempt int) *envelope.Envelope {
	e := env.Clone()
	e.Attempt = attempt
	return e
}

// expiry is when env gives up: Mta-Expires-At for remote delivery (set at
// arrival from delivery.expire), arrival plus local_expire for the Drop
// directory.
func (s *Service) expiry(env *envelope.Envelope, local bool, now time.Time) time.Time {
	life := s.conf().Delivery.Expire.D()
	if local {
		life = s.conf().Delivery.LocalExpire.D()
		if !env.ReceivedAt.IsZero() {
			return env.ReceivedAt.Add(life)
		}
	}
	switch {
	case !env.ExpiresAt.IsZero():
		return env.ExpiresAt
	case !env.ReceivedAt.IsZero():
		return env.ReceivedAt.Add(life)
	default:
		return now.Add(life)
	}
}

// delayDue reports whether env's sender is due its one delay notice.
func (s *Service) delayDue(env *envelope.Envelope, local bool, now time.Time) bool {
	after := s.conf().Delivery.DelayNotice.D()
	if local {
		after = s.conf().Delivery.LocalDelayNotice.D()
	}
	return after > 0 && !env.DelayNotified && env.From != "" && !env.ReceivedAt.IsZero() && now.Sub(env.ReceivedAt) >= after
}

// statusOf describes one recipient's outcome for a notification.
func statusOf(r envelope.Rcpt, action string, e *Error) dsn.Status {
	st := dsn.Status{Rcpt: r, Action: action, Status: e.Enhanced, Remote: remoteOf(e), Detail: e.Error()}
	reply := e
	var inner *Error
	if e.Code == 0 && errors.As(e.Err, &inner) {
		reply = inner // expiry: the last answer is the diagnostic
	}
	if reply.Code != 0 {
		st.Reply = strconv.Itoa(reply.Code)
		if reply.Enhanced != "" {
			st.Reply += " " + reply.Enhanced
		}
		st.Reply += " " + reply.Message
	}
	if st.Status == "" {
		switch {
		case reply.Code >= 500:
			st.Status = "5.0.0"
		case reply.Code >= 400:
			st.Status = "4.0.0"
		case e.Permanent:
			st.Status = "5.0.0"
		default:
			st.Status = "4.0.0"
		}
	}
	return st
}

// remoteOf is the remote host of an error, or of the error it wraps.
func remoteOf(e *Error) string {
	if e.Remote != "" {
		return e.Remote
	}
	var inner *Error
	if errors.As(e.Err, &inner) {
		return inner.Remote
	}
	return ""
}

// permanentFailure publishes a copy of env with the recipients of f and the
// reason to mail.bad (msgID makes it idempotent): the end of the line for
// mail from the null sender, which cannot be bounced. The copy refers to
// the same body: the same inline data, or the same Object Store object,
// whose reference it now holds. An events.badmail entry records it.
func (s *Service) permanentFailure(ctx context.Context, env *envelope.Envelope, data []byte, f failure, attempt int, now time.Time, msgID, subject string) error {
	bad := env.Clone()
	bad.MsgID = msgID
	bad.Rcpts = f.rcpts
	bad.Attempt = attempt
	bad.LastAttemptAt = now
	bad.Remote = remoteOf(f.err)
	if env.Source == dsn.Source {
		bad.Reason = "double bounce: this delivery status notification could not be delivered: " + f.err.Error()
	} else {
		bad.Reason = "undeliverable mail from the null sender <>, which cannot be returned: " + f.err.Error()
	}
	if env.Body == envelope.BodyObject {
		data = nil
	}
	msg, err := bad.Msg(bus.SubjBad, data)
	if err != nil {
		return fmt.Errorf("badmail envelope: %w", err)
	}
	if _, err = s.Room.Forward(ctx, msg, msgID); err != nil {
		return err
	}
	bus.Emit(s.js, bus.Event{Type: bus.EventBadmail, QueueID: env.QueueID, Domain: envelope.NormalizeDomain(env.Domain),
		Rcpts: bus.Addrs(f.rcpts), Sender: env.From, Attempt: attempt, Reason: bad.Reason, Subject: subject})
	return nil
}

// reschedule publishes the pending recipients as a message schedule on
// mail.defer.<tok>.<qid> that fires into o.target at the next step of the
// retry ladder, and returns when it fires; for a held domain it puts them
// back on hold instead. The message is built from the
// envelope alone, so no Nats-* header of the fired schedule is carried
// over.
func (s *Service) reschedule(ctx context.Context, o outcome, rcpts []envelope.Rcpt, last *Error, attempt int, now, expires time.Time, delayNotified bool) (time.Time, error) {
	env := o.env
	next := env.Clone()
	next.MsgID = envelope.RetryID(env.QueueID, o.tok, attempt)
	next.Rcpts = rcpts
	next.Attempt = attempt
	next.LastError = last.Error()
	next.LastAttemptAt = now
	next.ExpiresAt = expires
	next.DelayNotified = delayNotified
	next.Remote = last.Remote
	next.Reason = ""
	data := o.data
	if env.Body == envelope.BodyObject {
		data = nil
	}
	if d, ok := s.conf().Domain(env.Domain); ok && d.Hold && !o.local {
		// A held domain's site is usually offline again: its mail goes
		// back to mail.hold.<tok> to wait for the next ETRN or ATRN
		// rather than onto the retry ladder.
		next.MsgID = envelope.HoldID(env.QueueID, o.tok, attempt)
		msg, err := next.Msg(bus.Hold(o.tok), data)
		if err != nil {
			return now, fmt.Errorf("hold envelope: %w", err)
		}
		_, err = s.Room.Forward(ctx, msg, next.MsgID)
		return now, err
	}
	at := retryAt(now, s.conf().Delivery.RetryDelay(attempt), expires, s.conf().Delivery.RetryJitter)
	msg, err := next.Msg(bus.Defer(o.tok, env.QueueID), data)
	if err != nil {
		return at, fmt.Errorf("retry envelope: %w", err)
	}
	_, err = s.Room.Forward(ctx, msg, next.MsgID,
		jetstream.WithScheduleAt(at), jetstream.WithScheduleTarget(o.target))
	return at, err
}

// retryAt is now+delay with ±jitter (a fraction of delay), no later than
// expires (one last try at expiry) and at least a second ahead. Schedules
// have whole-second resolution, so it is rounded up to the next second.
func retryAt(now time.Time, delay time.Duration, expires time.Time, jitter float64) time.Time {
	j := time.Duration((rand.Float64()*2 - 1) * jitter * float64(delay))
	at := now.Add(delay + j)
	if at.After(expires) {
		at = expires
	}
	if earliest := now.Add(time.Second); at.Before(earliest) {
		at = earliest
	}
	if t := at.Truncate(time.Second); !t.Equal(at) {
		at = t.Add(time.Second)
	}
	return at
}
