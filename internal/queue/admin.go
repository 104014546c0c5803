package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/dsn"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/notify"
)

// DefaultWait is how long an action waits for a delivery attempt in
// progress when Admin.Wait is zero.
const DefaultWait = 2 * time.Minute

// Admin performs the administrator's actions on one server's queue.
type Admin struct {
	// JS is the JetStream context of the server.
	JS jetstream.JetStream
	// Room publishes the successors (Room.Forward: durable before an
	// action says it is done).
	Room *bus.Room
	// Notify sends the reports of Bounce (notify.NewNotifier; its Room
	// should be Room). Only Bounce needs it.
	Notify *notify.Notifier
	// Who is the administrator, for the events ("alice (nats ops)").
	Who string
	// Wait bounds how long an action waits for a delivery attempt of the
	// part to end (DefaultWait when zero).
	Wait time.Duration
	// Waiting, when set, is told once per part that the action waits
	// for an attempt in progress (why: who holds the lease).
	Waiting func(qid string, why error)

	bodies *bus.Bodies
}

func (a *Admin) openBodies(ctx context.Context) (*bus.Bodies, error) {
	if a.bodies == nil {
		b, err := bus.OpenBodies(ctx, a.JS)
		if err != nil {
			return nil, err
		}
		a.bodies = b
	}
	return a.bodies, nil
}

// action is one of the actions on parts: ok says whether it applies to a
// part in the state of its subject (or why not), do performs it on the
// part, under the part's lease.
type action struct {
	name string
	ok   func(e *Entry) error
	do   func(ctx context.Context, e *Entry) (Result, error)
}

// run applies act to every part sel selects.
func (a *Admin) run(ctx context.Context, sel Selection, act action) ([]Result, error) {
	if _, err := bus.EnsureSessions(ctx, a.JS, 0); err != nil {
		return nil, err
	}
	entries, err := Scan(ctx, a.JS)
	if err != nil {
		return nil, err
	}
	var out []Result
	seen := map[string]bool{}
	for _, e := range entries {
		if !sel.match(e) {
			continue
		}
		seen[e.QueueID] = true
		if err := act.ok(e); err != nil {
			out = append(out, Result{QueueID: e.QueueID, Subject: e.Subject, Err: err})
			continue
		}
		r, err := a.leased(ctx, e, act)
		r.QueueID, r.Subject = e.QueueID, e.Subject
		r.Err = err
		out = append(out, r)
	}
	for _, id := range sel.IDs {
		if !seen[id] {
			out = append(out, Result{QueueID: id, Err: fmt.Errorf("%w: %s", ErrNoSuchMessage, id)})
		}
	}
	return out, nil
}

// leased takes e's lease (waiting up to Wait for a delivery attempt to
// end), finds what is left of e and applies act to it.
func (a *Admin) leased(ctx context.Context, e *Entry, act action) (Result, error) {
	wait := a.Wait
	if wait <= 0 {
		wait = DefaultWait
	}
	key := bus.LeaseKey(e.QueueID, e.Tok)
	deadline := time.Now().Add(wait)
	var lease *bus.Lease
	for {
		l, err := bus.TakeLease(ctx, a.JS, key, bus.LeaseHolder("admin "+a.Who), 0)
		if err == nil {
			lease = l
			break
		}
		if !errors.Is(err, bus.ErrLocked) {
			return Result{}, err
		}
		if told := a.Waiting; told != nil {
			a.Waiting = nil
			told(e.QueueID, err)
			defer func() { a.Waiting = told }()
		}
		if time.Now().After(deadline) {
			return Result{}, fmt.Errorf("%w (%v); nothing done, try again", ErrBusy, err)
		}
		select {
		case <-ctx.Done():
			return Result{}, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	// A removal leaves the lease as its tombstone: a worker that pulled
	// the message before it drops it (bus.Lease.Tombstone).
	removed := uint64(0)
	defer func() {
		if removed != 0 {
			lease.Tombstone(context.WithoutCancel(ctx), removed, a.Who)
		} else {
			lease.Release(context.WithoutCancel(ctx))
		}
	}()
	for range 5 {
		cur, err := a.current(ctx, e)
		if err != nil {
			return Result{}, err
		}
		if cur == nil {
			return Result{}, fmt.Errorf("%w: %s left the queue meanwhile (delivered or settled)", ErrNoSuchMessage, e.QueueID)
		}
		if err := act.ok(cur); err != nil {
			return Result{}, err
		}
		r, err := act.do(ctx, cur)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // moved on meanwhile (a schedule fired): look again
		}
		if r.removed {
			removed = cur.Seq
		}
		return r, err
	}
	return Result{}, fmt.Errorf("%s %s: the message keeps moving; try again", act.name, e.QueueID)
}

// current is what is left of e's part now: e itself if still stored,
// else the part of the same queue id and token on another subject (the
// retry schedule an attempt left), nil when none.
func (a *Admin) current(ctx context.Context, e *Entry) (*Entry, error) {
	s, err := a.JS.Stream(ctx, bus.StreamMail)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", bus.StreamMail, err)
	}
	m, err := s.GetMsg(ctx, e.Seq)
	if err == nil && m.Subject == e.Subject {
		return entryOf(m), nil
	}
	if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("read %s at %d: %w", bus.StreamMail, e.Seq, err)
	}
	all, err := Scan(ctx, a.JS)
	if err != nil {
		return nil, err
	}
	for _, c := range all {
		if c.QueueID == e.QueueID && c.Tok == e.Tok {
			return c, nil
		}
	}
	return nil, nil
}

// remove deletes the stored part e (jetstream.ErrMsgNotFound when it is
// gone meanwhile).
func (a *Admin) remove(ctx context.Context, e *Entry) error {
	s, err := a.JS.Stream(ctx, bus.StreamMail)
	if err != nil {
		return err
	}
	if err := s.DeleteMsg(ctx, e.Seq); err != nil {
		if errors.Is(err, jetstream.ErrMsgNotFound) || errors.Is(err, jetstream.ErrMsgDeleteUnsuccessful) {
			// Gone meanwhile (the server says "no message found"):
			// leased looks again.
			return jetstream.ErrMsgNotFound
		}
		return fmt.Errorf("delete %s at %d: %w", bus.StreamMail, e.Seq, err)
	}
	return nil
}

// releaseBody drops e's reference to its Object Store body.
func (a *Admin) releaseBody(ctx context.Context, e *Entry) {
	if e.Env == nil || e.Env.Body != envelope.BodyObject {
		return
	}
	if b, err := a.openBodies(ctx); err == nil {
		_ = b.Release(ctx, e.Env)
	}
}

// emit stores an event of the action on e before the action returns.
func (a *Admin) emit(ctx context.Context, e *Entry, ev bus.Event) error {
	ev.QueueID, ev.Admin, ev.Subject = e.QueueID, a.Who, e.Subject
	ev.Time = time.Now().UTC()
	if e.Env != nil {
		ev.Domain = envelope.NormalizeDomain(e.Env.Domain)
		if ev.Domain == "" {
			ev.Domain = bus.DomainOf(e.Env.Addrs())
		}
		if len(ev.Rcpts) == 0 {
			ev.Rcpts = e.Env.Addrs()
		}
		ev.Sender = e.Env.From
	}
	return bus.EmitSync(ctx, a.JS, ev)
}

// copyMsg is e's stored message on subj, without its Nats-* headers (a
// retry schedule's among them).
func copyMsg(e *Entry, subj string) *nats.Msg {
	m := &nats.Msg{Subject: subj, Header: nats.Header{}, Data: e.Data}
	for k, vs := range e.Header {
		if len(k) >= 5 && k[:5] == "Nats-" {
			continue
		}
		m.Header[k] = append([]string(nil), vs...)
	}
	return m
}

// queued: parts an action may take off the queue (not mail.in, being
// routed, nor mail.bad, which `mailroot badmail` handles).
func queued(e *Entry) error {
	switch {
	case e.Subject == bus.SubjIn:
		return fmt.Errorf("%w: %s is being routed (mail.in); try again in a moment", ErrState, e.QueueID)
	case e.Subject == bus.SubjBad:
		return fmt.Errorf("%w: %s is on its way to Badmail (mail.bad); see mailroot badmail", ErrState, e.QueueID)
	case e.Tok == "":
		return fmt.Errorf("%w: %s on %s", ErrState, e.QueueID, e.Subject)
	}
	return nil
}

// Delete removes the selected parts for good (postsuper -d): the remote
// never gets them, nobody is told but the event log.
func (a *Admin) Delete(ctx context.Context, sel Selection) ([]Result, error) {
	return a.run(ctx, sel, action{name: "delete", ok: queued, do: func(ctx context.Context, e *Entry) (Result, error) {
		if err := a.remove(ctx, e); err != nil {
			return Result{}, err
		}
		a.releaseBody(ctx, e)
		return Result{Done: "deleted", removed: true}, a.emit(ctx, e, bus.Event{Type: bus.EventDeleted})
	}})
}

// Hold puts the selected parts on hold (postsuper -h): moved to
// mail.adminhold.<origin>.<tok>.<qid>, where no actor reads them, until
// Release. Held mail does not expire while held.
func (a *Admin) Hold(ctx context.Context, sel Selection) ([]Result, error) {
	ok := func(e *Entry) error {
		if AdminHeld(e.Subject) {
			return fmt.Errorf("%w: %s is on hold already", ErrState, e.QueueID)
		}
		if e.Env == nil {
			return fmt.Errorf("%w: %s has a malformed envelope", ErrState, e.QueueID)
		}
		return queued(e)
	}
	return a.run(ctx, sel, action{name: "hold", ok: ok, do: func(ctx context.Context, e *Entry) (Result, error) {
		subj := SubjAdminHoldPrefix + origin(e.Subject) + "." + e.Tok + "." + e.QueueID
		if _, err := a.Room.Forward(ctx, copyMsg(e, subj), envelope.AdminHoldID(e.QueueID, e.Tok, e.Seq)); err != nil {
			return Result{}, err
		}
		if err := a.remove(ctx, e); err != nil {
			return Result{}, err
		}
		return Result{Done: "held", removed: true}, a.emit(ctx, e, bus.Event{Type: bus.EventAdminHeld})
	}})
}

// Release sends the selected admin-held parts back where they were held
// from (postsuper -H): deferred and active mail to mail.out.<tok> (an
// attempt now), ETRN-held mail to mail.hold.<tok>, local mail to
// mail.drop.
func (a *Admin) Release(ctx context.Context, sel Selection) ([]Result, error) {
	ok := func(e *Entry) error {
		if !AdminHeld(e.Subject) {
			return fmt.Errorf("%w: %s is not on hold (%s)", ErrState, e.QueueID, e.Subject)
		}
		return nil
	}
	return a.run(ctx, sel, action{name: "release", ok: ok, do: func(ctx context.Context, e *Entry) (Result, error) {
		to := bus.Out(e.Tok)
		switch o, _, _ := cut(e.Subject); o {
		case "hold":
			to = bus.Hold(e.Tok)
		case "drop":
			to = bus.SubjDrop
		}
		if _, err := a.Room.Forward(ctx, copyMsg(e, to), envelope.AdminReleaseID(e.QueueID, e.Tok, e.Seq)); err != nil {
			return Result{}, err
		}
		if err := a.remove(ctx, e); err != nil {
			return Result{}, err
		}
		return Result{Done: "released to " + to}, a.emit(ctx, e, bus.Event{Type: bus.EventAdminReleased, Reason: "to " + to})
	}})
}

// cut splits an admin-hold subject into origin, token and queue id.
func cut(subj string) (origin, tok, qid string) {
	rest := subj[len(SubjAdminHoldPrefix):]
	var ok bool
	origin, rest, ok = stringsCut(rest)
	if !ok {
		return "", "", ""
	}
	tok, qid, _ = stringsCut(rest)
	return origin, tok, qid
}

func stringsCut(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == '.' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// Requeue routes the selected parts again from scratch (postsuper -r):
// each becomes a new message on mail.in (a new queue id, derived from the
// old one and the part's sequence; arrival now, attempts and errors
// cleared), and the part is removed. Mail sent on by a changed
// configuration (aliases, a smart host, a domain no longer held) takes
// the new way.
func (a *Admin) Requeue(ctx context.Context, sel Selection) ([]Result, error) {
	ok := func(e *Entry) error {
		if e.Env == nil {
			return fmt.Errorf("%w: %s has a malformed envelope", ErrState, e.QueueID)
		}
		return queued(e)
	}
	return a.run(ctx, sel, action{name: "requeue", ok: ok, do: func(ctx context.Context, e *Entry) (Result, error) {
		b, err := a.openBodies(ctx)
		if err != nil {
			return Result{}, err
		}
		body, err := b.Open(ctx, e.Env, e.Data)
		if err != nil {
			return Result{}, err
		}
		nq := envelope.RequeueQueueID(e.QueueID, e.Tok, bus.StreamMail+"."+strconv.FormatUint(e.Seq, 10))
		err = a.resubmit(ctx, e.Env, body, nq)
		_ = body.Close()
		if err != nil {
			return Result{}, err
		}
		if err := a.remove(ctx, e); err != nil {
			return Result{}, err
		}
		a.releaseBody(ctx, e)
		return Result{Done: "requeued as " + nq, NewQID: nq, removed: true}, a.emit(ctx, e, bus.Event{Type: bus.EventRequeued, NewQID: nq})
	}})
}

// resubmit publishes a new message nq on mail.in with env's sender and
// recipients and the body read from body: arrival now, no attempts.
func (a *Admin) resubmit(ctx context.Context, env *envelope.Envelope, body io.Reader, nq string) error {
	n := env.Clone()
	n.QueueID, n.MsgID = nq, nq
	n.Domain = ""
	n.Attempt, n.LastError, n.LastAttemptAt, n.DelayNotified = 0, "", time.Time{}, false
	n.Remote, n.Reason = "", ""
	n.ReceivedAt, n.ExpiresAt = time.Now().UTC(), time.Time{}
	data, err := io.ReadAll(io.LimitReader(body, envelope.InlineMax+1))
	if err != nil {
		return fmt.Errorf("read message %s: %w", env.QueueID, err)
	}
	if len(data) > envelope.InlineMax {
		b, err := a.openBodies(ctx)
		if err != nil {
			return err
		}
		size, err := b.Put(ctx, nq, io.MultiReader(bytes.NewReader(data), body))
		if err != nil {
			return err
		}
		n.Body, n.BodySize, data = envelope.BodyObject, size, nil
	} else {
		n.Body, n.BodySize = envelope.BodyInline, int64(len(data))
	}
	msg, err := n.Msg(bus.SubjIn, data)
	if err != nil {
		return fmt.Errorf("envelope %s: %w", nq, err)
	}
	_, err = a.Room.Forward(ctx, msg, nq)
	return err
}

// Bounce returns the selected parts to their senders now, with an RFC
// 3464 failure report (internal/notify), keeps the original on
// MAIL_FAILED for redrive, and removes the part. Mail from the null
// sender cannot be returned: delete it instead.
func (a *Admin) Bounce(ctx context.Context, sel Selection, why string) ([]Result, error) {
	if a.Notify == nil {
		return nil, errors.New("queue: bounce needs a notifier")
	}
	if why == "" {
		why = "returned to the sender by the postmaster"
	}
	ok := func(e *Entry) error {
		if e.Env == nil {
			return fmt.Errorf("%w: %s has a malformed envelope", ErrState, e.QueueID)
		}
		if e.Env.From == "" {
			return fmt.Errorf("%w: %s is from the null sender <> and cannot be returned; delete it instead", ErrState, e.QueueID)
		}
		return queued(e)
	}
	return a.run(ctx, sel, action{name: "bounce", ok: ok, do: func(ctx context.Context, e *Entry) (Result, error) {
		b, err := a.openBodies(ctx)
		if err != nil {
			return Result{}, err
		}
		// Every actor creates MAIL_FAILED at start (bus.EnsureStream);
		// an older deployment's server may not have it yet.
		if _, err := a.JS.Stream(ctx, bus.StreamFailed); errors.Is(err, jetstream.ErrStreamNotFound) {
			if err := bus.EnsureFailed(ctx, a.JS, 0, 0); err != nil {
				return Result{}, err
			}
		}
		now := time.Now()
		var st []dsn.Status
		for _, r := range e.Env.Rcpts {
			st = append(st, dsn.Status{Rcpt: r, Action: dsn.ActionFailed, Status: "5.0.0", Detail: why})
		}
		if a.Notify.Bodies == nil {
			a.Notify.Bodies = b
		}
		report, err := a.Notify.Send(ctx, dsn.Notice{Kind: dsn.Failure, ID: envelope.AdminBounceDSNID(e.QueueID, e.Tok, e.Seq),
			Env: e.Env, Data: e.Data, Rcpts: st, LastAttempt: now})
		if err != nil {
			return Result{}, fmt.Errorf("report: %w", err)
		}
		kept, err := bus.KeepFailed(ctx, a.Room, b, e.Env, e.Data, e.Env.Rcpts, e.Tok, "x", e.Seq)
		if err != nil {
			return Result{}, err
		}
		if err := a.remove(ctx, e); err != nil {
			return Result{}, err
		}
		a.releaseBody(ctx, e)
		done := "bounced, no report (NOTIFY)"
		if report != "" {
			done = "bounced, report " + report
		}
		return Result{Done: done, removed: true}, a.emit(ctx, e, bus.Event{Type: bus.EventBounced, ReportQID: report, Reason: why, Kept: kept, Attempt: e.Env.Attempt})
	}})
}

// Do runs the action named action (delete, hold, release, requeue,
// bounce, as `mailroot queue` names them) on sel: the one dispatch of the
// CLI and the admin console. reason is a bounce's.
func (a *Admin) Do(ctx context.Context, action string, sel Selection, reason string) ([]Result, error) {
	switch action {
	case "delete":
		return a.Delete(ctx, sel)
	case "hold":
		return a.Hold(ctx, sel)
	case "release":
		return a.Release(ctx, sel)
	case "requeue":
		return a.Requeue(ctx, sel)
	case "bounce":
		return a.Bounce(ctx, sel, reason)
	}
	return nil, fmt.Errorf("unknown queue action %q", action)
}
