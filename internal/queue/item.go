package queue

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/envelope"
)

// Queue states, from the subject a message part is on.
const (
	StateActive   = "active"   // mail.in, mail.out.*, mail.drop: being routed or delivered
	StateDeferred = "deferred" // mail.defer.*: a retry schedule waiting for its time
	StateHeld     = "held"     // mail.hold.*, mail.adminhold.*: waiting for ETRN/ATRN or an administrator
	StateBad      = "bad"      // mail.bad: on its way to Badmail/
)

// States are the queue states, in the order a listing shows them.
var States = []string{StateActive, StateDeferred, StateHeld, StateBad}

// State is the queue state of a part stored on subj.
func State(subj string) string {
	switch {
	case strings.HasPrefix(subj, bus.SubjDeferPrefix):
		return StateDeferred
	case strings.HasPrefix(subj, bus.SubjHoldPrefix), AdminHeld(subj):
		return StateHeld
	case subj == bus.SubjBad:
		return StateBad
	}
	return StateActive
}

// Item is one message part of the MAIL stream as `mailroot queue list
// -json` prints it (one JSON object per line) and the admin console
// shows it.
type Item struct {
	ID          string     `json:"id"`
	Seq         uint64     `json:"seq"`
	Subject     string     `json:"subject"`
	State       string     `json:"state"`
	Size        int64      `json:"size"`
	Arrival     time.Time  `json:"arrival"`
	Sender      string     `json:"sender"`
	Recipients  []string   `json:"recipients"`
	Domain      string     `json:"domain,omitempty"`
	Attempt     int        `json:"attempt"`
	LastError   string     `json:"last_error,omitempty"`
	LastAttempt *time.Time `json:"last_attempt,omitempty"`
	NextAttempt *time.Time `json:"next_attempt,omitempty"`
	Expires     *time.Time `json:"expires,omitempty"`
	// Malformed is the envelope's decode error, for a message no actor
	// can read (the rest is then what the raw headers say).
	Malformed string `json:"malformed,omitempty"`

	// Env is the envelope (nil when Malformed); Header and Data are the
	// stored message.
	Env    *envelope.Envelope `json:"-"`
	Header nats.Header        `json:"-"`
	Data   []byte             `json:"-"`
}

// List describes every part of the MAIL stream (Scan), in stream order.
func List(ctx context.Context, js jetstream.JetStream) ([]*Item, error) {
	all, err := Scan(ctx, js)
	if err != nil {
		return nil, err
	}
	out := make([]*Item, 0, len(all))
	for _, e := range all {
		out = append(out, Describe(e))
	}
	return out, nil
}

// Describe describes one stored part.
func Describe(m *Entry) *Item {
	e := &Item{Seq: m.Seq, Subject: m.Subject, State: State(m.Subject), Header: m.Header, Data: m.Data, Arrival: m.Time}
	env, err := envelope.Decode(m.Header)
	if err != nil {
		e.Malformed = err.Error()
		e.ID = m.Header.Get(envelope.HdrQueueID)
		e.Size = int64(len(m.Data))
		return e
	}
	e.Env = env
	e.ID, e.Sender, e.Recipients, e.Domain = env.QueueID, env.From, env.Addrs(), env.Domain
	e.Attempt, e.LastError = env.Attempt, env.LastError
	if !env.ReceivedAt.IsZero() {
		e.Arrival = env.ReceivedAt
	}
	e.Size = env.BodySize
	if e.Size == 0 {
		e.Size = int64(len(m.Data))
	}
	e.LastAttempt = optTime(env.LastAttemptAt)
	e.Expires = optTime(env.ExpiresAt)
	if e.State == StateDeferred {
		e.NextAttempt = ScheduleTime(m.Header.Get(jetstream.ScheduleHeader))
	}
	return e
}

func optTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// ScheduleTime reads a Nats-Schedule header of a one-shot schedule
// ("@at 2006-01-02T15:04:05Z", as delivery writes them); nil for any other.
func ScheduleTime(v string) *time.Time {
	at, ok := strings.CutPrefix(v, "@at ")
	if !ok {
		return nil
	}
	t, err := time.Parse(time.RFC3339, strings.TrimSpace(at))
	if err != nil {
		return nil
	}
	return &t
}

// Domains are the destination domains of a part (normalised, each once):
// its routed domain, and its recipients' (a part on mail.in has no
// routed domain yet).
func (e *Item) Domains() []string {
	var out []string
	add := func(d string) {
		if d = envelope.NormalizeDomain(d); d != "" && !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	add(e.Domain)
	for _, r := range e.Recipients {
		add(envelope.Domain(r))
	}
	return out
}

// Body copies the message of e to w, from the stored data or the Object
// Store (mail-bodies).
func (e *Item) Body(ctx context.Context, js jetstream.JetStream, w io.Writer) error {
	if e.Env == nil {
		_, err := w.Write(e.Data) // malformed: what is there is all there is
		return err
	}
	r := io.NopCloser(bytes.NewReader(e.Data))
	if e.Env.Body == envelope.BodyObject {
		b, err := bus.OpenBodies(ctx, js)
		if err != nil {
			return err
		}
		if r, err = b.Open(ctx, e.Env, e.Data); err != nil {
			return err
		}
	}
	defer r.Close()
	if _, err := io.Copy(w, r); err != nil {
		return fmt.Errorf("read message %s: %w", e.ID, err)
	}
	return nil
}

// MaxHeaderSection bounds the header section Headers reads.
const MaxHeaderSection = 1 << 20

// Headers copies the header section of e's message (up to the empty
// line, at most MaxHeaderSection bytes of the message) to w, each line
// after indent: the body is never read further.
func (e *Item) Headers(ctx context.Context, js jetstream.JetStream, w io.Writer, indent string) error {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(e.Body(ctx, js, pw)) }()
	defer pr.Close()
	br := bufio.NewReader(io.LimitReader(pr, MaxHeaderSection))
	for {
		line, err := br.ReadString('\n')
		text := strings.TrimRight(line, "\r\n")
		if line != "" && text == "" {
			return nil
		}
		if line != "" {
			fmt.Fprintf(w, "%s%s\n", indent, text)
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
