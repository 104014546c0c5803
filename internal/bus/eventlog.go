package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/envelope"
)

// EventFilter selects events of MAIL_EVENTS. Zero fields select all.
type EventFilter struct {
	// Since and Until bound the events' stored time.
	Since, Until time.Time
	// Type is one of EventTypes.
	Type string
	// Domain matches events about the domain: their subject's token, a
	// routed part, or a recipient in it.
	Domain string
	// QueueID matches one message's events (its parts' and reports'
	// events are those with the same qid, or with it as report_qid).
	QueueID string
}

// Subjects are the subject filters of f: the type's subjects, and with a
// domain only its token and "_" (the events of several domains).
func (f EventFilter) Subjects() []string {
	typ := "*"
	if f.Type != "" {
		typ = f.Type
	}
	if f.Domain == "" {
		return []string{SubjEventsPrefix + typ + ".>"}
	}
	return []string{SubjEventsPrefix + typ + "." + Token(f.Domain), SubjEventsPrefix + typ + "._"}
}

// Match reports whether e passes f's type, domain and queue id (the time
// is the consumer's business).
func (f EventFilter) Match(e Event) bool {
	if f.Type != "" && e.Type != f.Type {
		return false
	}
	if f.QueueID != "" && e.QueueID != f.QueueID && e.ReportQID != f.QueueID {
		return false
	}
	if f.Domain == "" {
		return true
	}
	d := envelope.NormalizeDomain(f.Domain)
	if e.Domain == d || slices.ContainsFunc(e.Parts, func(p RoutedPart) bool { return p.Domain == d }) {
		return true
	}
	inDomain := func(a string) bool { return envelope.NormalizeDomain(envelope.Domain(a)) == d }
	return (e.Rcpt != "" && inDomain(e.Rcpt)) || slices.ContainsFunc(e.Rcpts, inDomain)
}

// ErrBadEvent marks a stored event that is not an Event.
var ErrBadEvent = errors.New("bus: malformed event")

// ReadEvents calls fn with every event f selects, in the order they were
// stored, from f.Since on, through an ordered consumer (no state on the
// server). Without follow it returns at the end of the stream as it was
// when it started or at f.Until; with follow it waits for new events
// until ctx ends (or f.Until passes). An event that does not decode is
// given to fn with only its Type set to the subject's and Reason to the
// error, so that a reader sees it rather than losing it.
func ReadEvents(ctx context.Context, js jetstream.JetStream, f EventFilter, follow bool, fn func(Event) error) error {
	cc := jetstream.OrderedConsumerConfig{FilterSubjects: f.Subjects(), DeliverPolicy: jetstream.DeliverAllPolicy}
	if !f.Since.IsZero() {
		since := f.Since
		cc.DeliverPolicy, cc.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	cons, err := js.OrderedConsumer(ctx, StreamEvents, cc)
	if err != nil {
		return fmt.Errorf("bus: read %s: %w", StreamEvents, err)
	}
	var last uint64 // the stream's last sequence at the start: the end without follow
	if !follow {
		st, err := js.Stream(ctx, StreamEvents)
		if err != nil {
			return fmt.Errorf("bus: read %s: %w", StreamEvents, err)
		}
		last = st.CachedInfo().State.LastSeq
		info, err := cons.Info(ctx)
		if err != nil {
			return fmt.Errorf("bus: read %s: %w", StreamEvents, err)
		}
		if info.NumPending == 0 {
			return nil
		}
	}
	for {
		wait := time.Second
		if follow {
			wait = 5 * time.Second
		}
		m, err := cons.Next(jetstream.FetchMaxWait(wait))
		switch {
		case ctx.Err() != nil:
			if follow {
				return nil
			}
			return ctx.Err()
		case errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, context.DeadlineExceeded):
			if !follow {
				return nil // nothing more within the wait: the end
			}
			if !f.Until.IsZero() && time.Now().After(f.Until) {
				return nil
			}
			continue
		case err != nil:
			return fmt.Errorf("bus: read %s: %w", StreamEvents, err)
		}
		md, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("bus: read %s: %w", StreamEvents, err)
		}
		if !f.Until.IsZero() && md.Timestamp.After(f.Until) {
			return nil
		}
		var e Event
		jerr := json.Unmarshal(m.Data(), &e)
		if jerr != nil {
			e = Event{Type: m.Subject(), Time: md.Timestamp, Reason: fmt.Sprintf("%v: %v", ErrBadEvent, jerr)}
		}
		if jerr != nil || f.Match(e) {
			if err := fn(e); err != nil {
				return err
			}
		}
		if !follow && (md.NumPending == 0 || md.Sequence.Stream >= last) {
			return nil
		}
	}
}
