package queue

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/envelope"
)

// Redrive types: which events select the mail sent again.
const (
	RedriveBounced = "bounced" // mail reported to its sender as undeliverable
	RedriveExpired = "expired" // of that, the mail whose queue lifetime ran out
	RedriveBadmail = "badmail" // mail moved to Badmail (the CLI requeues the Badmail files)
)

// RedriveFilter selects the events of Redrive.
type RedriveFilter struct {
	// Since and Until bound the events' time (both required).
	Since, Until time.Time
	// Domain, when set, keeps the events about that recipient domain.
	Domain string
	// Type is RedriveBounced (when empty) or RedriveExpired.
	Type string
}

// Events are the events f selects, in stored order: of type f.Type
// (bounced when empty), between Since and Until, about Domain.
func Events(ctx context.Context, a *Admin, f RedriveFilter) ([]bus.Event, error) {
	typ := f.Type
	if typ == "" {
		typ = RedriveBounced
	}
	var out []bus.Event
	err := bus.ReadEvents(ctx, a.JS, bus.EventFilter{Since: f.Since, Until: f.Until, Type: typ, Domain: f.Domain}, false, func(e bus.Event) error {
		if e.Time.Before(f.Since) || e.Time.After(f.Until) {
			return nil
		}
		out = append(out, e)
		return nil
	})
	return out, err
}

// Redrive sends again, as new messages on mail.in, exactly the mails
// whose bounced (or expired) events fall in f: each from the copy kept on
// MAIL_FAILED when it bounced (the recipients that failed, the message as
// queued). A copy no longer kept (older than bus.FailedRetention, or too
// large to keep) is a Result with an error. The new queue id is derived
// from the copy, so a redrive repeated within the dedup window (10 min)
// does not send twice. Each message sent is a redriven event.
func (a *Admin) Redrive(ctx context.Context, f RedriveFilter) ([]Result, error) {
	if f.Since.IsZero() || f.Until.IsZero() || !f.Until.After(f.Since) {
		return nil, fmt.Errorf("queue: redrive needs -since before -until")
	}
	var bounced []bus.Event
	switch f.Type {
	case "", RedriveBounced:
		evs, err := Events(ctx, a, RedriveFilter{Since: f.Since, Until: f.Until, Domain: f.Domain})
		if err != nil {
			return nil, err
		}
		bounced = evs
	case RedriveExpired:
		exp, err := Events(ctx, a, f)
		if err != nil {
			return nil, err
		}
		if len(exp) == 0 {
			return nil, nil
		}
		// Each expired event is followed, at the same moment, by the
		// bounced event that reported it (same queue id, domain and
		// attempt), which names the kept copy.
		all, err := Events(ctx, a, RedriveFilter{Since: f.Since, Until: f.Until.Add(time.Minute), Domain: f.Domain})
		if err != nil {
			return nil, err
		}
		want := map[string]bool{}
		for _, e := range exp {
			want[e.QueueID+" "+e.Domain+" "+fmt.Sprint(e.Attempt)] = true
		}
		for _, e := range all {
			if want[e.QueueID+" "+e.Domain+" "+fmt.Sprint(e.Attempt)] {
				bounced = append(bounced, e)
			}
		}
	default:
		return nil, fmt.Errorf("queue: redrive type %q is not %s or %s", f.Type, RedriveBounced, RedriveExpired)
	}
	var out []Result
	done := map[string]bool{}
	for _, e := range bounced {
		if e.Kept == "" {
			out = append(out, Result{QueueID: e.QueueID, Err: fmt.Errorf("%s (bounced %s): the original was not kept (larger than %d bytes, or bounced by a version without MAIL_FAILED)",
				e.QueueID, e.Time.UTC().Format(time.RFC3339), bus.FailedMaxMsg)})
			continue
		}
		if done[e.Kept] {
			continue
		}
		done[e.Kept] = true
		r := Result{QueueID: e.QueueID, Subject: e.Kept}
		env, data, err := bus.ReadFailed(ctx, a.JS, e.Kept)
		if err != nil {
			r.Err = fmt.Errorf("%s (bounced %s): the original is no longer kept (kept for %s): %w", e.QueueID, e.Time.UTC().Format(time.RFC3339), bus.FailedRetention, err)
			out = append(out, r)
			continue
		}
		tok := strings.SplitN(strings.TrimPrefix(e.Kept, bus.SubjFailedPrefix), ".", 2)[0]
		nq := envelope.RequeueQueueID(env.QueueID, tok, e.Kept)
		if err := a.resubmit(ctx, env, bytes.NewReader(data), nq); err != nil {
			r.Err = fmt.Errorf("%s: %w", e.QueueID, err)
			out = append(out, r)
			continue
		}
		r.NewQID, r.Done = nq, "sent again as "+nq
		r.Err = bus.EmitSync(ctx, a.JS, bus.Event{Type: bus.EventRedriven, QueueID: env.QueueID, Domain: e.Domain, Admin: a.Who,
			Time: time.Now().UTC(), NewQID: nq, Kept: e.Kept, Rcpts: env.Addrs(), Sender: env.From,
			Reason: "bounced " + e.Time.UTC().Format(time.RFC3339) + ": " + e.Reason})
		out = append(out, r)
	}
	return out, nil
}
