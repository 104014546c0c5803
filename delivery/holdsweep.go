package delivery

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/dsn"
	"github.com/mailroot/mailroot/internal/envelope"
)

// DefaultHoldSweep is how often held mail is checked for expiry.
const DefaultHoldSweep = time.Hour

// maxSweep bounds the held messages one sweep looks at per domain.
const maxSweep = 100000

// sweepHeldLoop checks held mail for expiry every HoldSweep until ctx is
// done. Held mail waits for ETRN or ATRN, but not for ever: like any
// queued mail it expires (delivery.expire), and its sender is told
// (docs/DESIGN.md §4, held mail expires).
func (s *Service) sweepHeldLoop(ctx context.Context) {
	every := s.HoldSweep
	if every <= 0 {
		every = DefaultHoldSweep
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.sweepHeld(ctx)
		}
	}
}

// sweepHeld bounces every expired message on mail.hold.* (the null
// sender's to Badmail) and deletes it from the queue. Every delivery
// process sweeps; the reports' ids are idempotent, so two sweeps meeting
// on one message send one report.
func (s *Service) sweepHeld(ctx context.Context) {
	info, err := s.stream.Info(ctx, jetstream.WithSubjectFilter(bus.SubjHoldPrefix+">"))
	if err != nil {
		s.log.Warn("hold sweep: stream info failed", "err", err)
		return
	}
	for subj := range info.State.Subjects {
		tok := strings.TrimPrefix(subj, bus.SubjHoldPrefix)
		next := uint64(0)
		for range maxSweep {
			raw, err := s.stream.GetMsg(ctx, next, jetstream.WithGetMsgSubject(subj))
			if err != nil {
				if !errors.Is(err, jetstream.ErrMsgNotFound) && ctx.Err() == nil {
					s.log.Warn("hold sweep: read failed", "subject", subj, "err", err)
				}
				break
			}
			next = raw.Sequence + 1
			env, err := envelope.Decode(raw.Header)
			if err != nil {
				continue // a release hands it to delivery, which moves it to Badmail
			}
			now := s.Now()
			if now.Before(s.expiry(env, false, now)) {
				continue
			}
			if err := s.expireHeld(ctx, tok, raw, env, now); err != nil {
				s.log.Error("hold sweep: expiring held mail failed, will retry", "qid", env.QueueID, "err", err)
			}
		}
	}
}

// expireHeld reports an expired held message to its sender (or moves the
// null sender's to Badmail), then deletes it from the queue.
func (s *Service) expireHeld(ctx context.Context, tok string, raw *jetstream.RawStreamMsg, env *envelope.Envelope, now time.Time) error {
	log := s.log.With("qid", env.QueueID, "domain", env.Domain)
	e := &Error{Permanent: true, Enhanced: "4.4.7",
		Message: fmt.Sprintf("message expired while held for %s: the site did not collect it with ETRN or ATRN in time", env.Domain)}
	if env.LastError != "" {
		e.Message += " (last attempt: " + env.LastError + ")"
	}
	// Before the bounced or badmail event it causes; a sweep that fails
	// below emits it again with the same id.
	bus.Emit(s.js, bus.Event{Type: bus.EventExpired, Time: now.UTC(), QueueID: env.QueueID, Domain: env.Domain,
		Sender: env.From, Rcpts: bus.Addrs(env.Rcpts), Reason: e.Error(), Subject: raw.Subject})
	if env.From == "" {
		id := envelope.HoldBadID(env.QueueID, tok)
		if err := s.permanentFailure(ctx, env, raw.Data, failure{rcpts: env.Rcpts, err: e}, env.Attempt, now, id, raw.Subject); err != nil {
			return err
		}
		log.Warn("held mail expired, null sender: to badmail")
	} else {
		st := make([]dsn.Status, len(env.Rcpts))
		for i, r := range env.Rcpts {
			st[i] = statusOf(r, dsn.ActionFailed, e)
		}
		qid, err := s.notify.Send(ctx, dsn.Notice{
			Kind: dsn.Failure, ID: envelope.HoldDSNID(env.QueueID, tok),
			Env: env, Data: raw.Data, Rcpts: st, LastAttempt: env.LastAttemptAt,
		})
		if err != nil {
			return err
		}
		log.Warn("held mail expired", "dsn_qid", qid, "to", env.From)
		bus.Emit(s.js, bus.Event{Type: bus.EventBounced, Time: now.UTC(), QueueID: env.QueueID, Domain: env.Domain,
			Sender: env.From, Rcpts: bus.Addrs(env.Rcpts), ReportQID: qid, Reason: e.Error()})
	}
	if err := s.stream.DeleteMsg(ctx, raw.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("delete held message: %w", err)
	}
	if env.From != "" {
		// The report has its own copy; the Badmail copy keeps the body.
		if err := s.bodies.Release(ctx, env); err != nil {
			log.Warn("release body failed", "err", err)
		}
	}
	return nil
}
