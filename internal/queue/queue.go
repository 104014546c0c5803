// Package queue holds the administrator's actions on the mail queue (the
// MAIL stream): delete, hold, release, requeue, bounce and redrive
// (docs/DESIGN.md §4 "Queue administration", README "The queue"). Each
// function takes a JetStream context and returns what it did, printing
// nothing, so that `mailroot queue` and an admin console share them.
//
// An action on a message part takes the part's lease (bus.TakeLease), the
// one a delivery worker takes for its attempt: it waits for an attempt in
// progress to end, then acts on what the attempt left (the part itself,
// its retry schedule, or nothing when it was delivered), so a message is
// never both delivered and reported deleted. Every action is an event,
// stored before the function returns (bus.EmitSync).
package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/envelope"
)

// SubjAdminHoldPrefix + <origin>.<tok>.<qid> holds a message part an
// administrator put on hold; origin is where release sends it (out, hold
// or drop). No consumer reads these subjects, so no actor touches such a
// part, and ETRN (which releases mail.hold.<tok>) does not release it.
const SubjAdminHoldPrefix = "mail.adminhold."

// Errors of the actions.
var (
	// ErrNoSuchMessage: no message in the queue has the id.
	ErrNoSuchMessage = errors.New("no such message")
	// ErrBusy: the part is being delivered and the attempt did not end
	// within Admin.Wait.
	ErrBusy = errors.New("being delivered now")
	// ErrState: the part is not in a state the action applies to.
	ErrState = errors.New("not in a state for this action")
)

// Entry is one message (part) of the MAIL stream.
type Entry struct {
	// QueueID is the message's queue id; Tok the part's domain token
	// ("" on mail.in and mail.bad).
	QueueID, Tok string
	// Subject and Seq are where the part is stored.
	Subject string
	Seq     uint64
	// Header and Data are the stored message; Env its envelope, nil when
	// it does not decode.
	Header nats.Header
	Data   []byte
	Env    *envelope.Envelope
	// Time is when the stream stored it.
	Time time.Time
}

// Origin is where an admin-held part goes back to on release: out, hold or
// drop, from the subject it was held from.
func origin(subj string) string {
	switch {
	case strings.HasPrefix(subj, bus.SubjHoldPrefix):
		return "hold"
	case subj == bus.SubjDrop:
		return "drop"
	}
	return "out"
}

// AdminHeld reports whether subj is an administrator's hold.
func AdminHeld(subj string) bool { return strings.HasPrefix(subj, SubjAdminHoldPrefix) }

// entryOf describes one stored message.
func entryOf(m *jetstream.RawStreamMsg) *Entry {
	e := &Entry{Subject: m.Subject, Seq: m.Sequence, Header: m.Header, Data: m.Data, Time: m.Time, QueueID: m.Header.Get(envelope.HdrQueueID)}
	if env, err := envelope.Decode(m.Header); err == nil {
		e.Env = env
	}
	switch s := m.Subject; {
	case strings.HasPrefix(s, bus.SubjOutPrefix):
		e.Tok = strings.TrimPrefix(s, bus.SubjOutPrefix)
	case strings.HasPrefix(s, bus.SubjHoldPrefix):
		e.Tok = strings.TrimPrefix(s, bus.SubjHoldPrefix)
	case strings.HasPrefix(s, bus.SubjDeferPrefix):
		e.Tok, _, _ = strings.Cut(strings.TrimPrefix(s, bus.SubjDeferPrefix), ".")
	case AdminHeld(s):
		parts := strings.Split(strings.TrimPrefix(s, SubjAdminHoldPrefix), ".")
		if len(parts) == 3 {
			e.Tok = parts[1]
		}
	case s == bus.SubjDrop && e.Env != nil:
		e.Tok = bus.Token(dropDomain(e.Env))
	}
	return e
}

// dropDomain is the domain of a mail.drop part, as the Drop writer sees it.
func dropDomain(env *envelope.Envelope) string {
	if d := envelope.NormalizeDomain(env.Domain); d != "" {
		return d
	}
	return envelope.Domain(env.Rcpts[0].Addr)
}

// Scan reads every message of the MAIL stream in stream order, up to the
// last sequence it had when the scan began (direct gets: never a
// consumer, which would take mail from the actors on a WorkQueue stream).
func Scan(ctx context.Context, js jetstream.JetStream) ([]*Entry, error) {
	s, err := js.Stream(ctx, bus.StreamMail)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", bus.StreamMail, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", bus.StreamMail, err)
	}
	var out []*Entry
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(bus.SubjAll))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read %s at %d: %w", bus.StreamMail, seq, err)
		}
		if m.Sequence > info.State.LastSeq {
			break
		}
		out = append(out, entryOf(m))
		seq = m.Sequence + 1
	}
	return out, nil
}

// Selection picks the parts an action applies to: the parts of the queue
// ids IDs, or every part for Domain, or (where the action allows) All.
type Selection struct {
	IDs    []string
	Domain string
	All    bool
}

func (s Selection) match(e *Entry) bool {
	switch {
	case s.All:
		return true
	case s.Domain != "":
		if e.Env == nil {
			return false
		}
		d := envelope.NormalizeDomain(s.Domain)
		if e.Tok != "" && e.Tok == bus.Token(d) {
			return true
		}
		return envelope.NormalizeDomain(e.Env.Domain) == d
	}
	for _, id := range s.IDs {
		if id == e.QueueID {
			return true
		}
	}
	return false
}

// Result is what an action did to one part (or, with Err
// ErrNoSuchMessage, that an id named none).
type Result struct {
	QueueID string
	// Subject is where the part was when the action began.
	Subject string
	// Done says what happened ("deleted", "held", "released", "requeued as
	// QID", "bounced, report QID"); Err why nothing happened.
	Done string
	Err  error
	// NewQID is the queue id of a requeued or redriven message.
	NewQID string

	removed bool // the part was taken off a subject delivery reads
}
