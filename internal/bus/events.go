package bus

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamEvents is the replayable delivery log: one JSON event per mail
// event on events.<type>, kept by age (docs/DESIGN.md §2).
const StreamEvents = "MAIL_EVENTS"

// Event types published on events.<type>.
const (
	EventBadmail = "badmail" // a message was moved to mail.bad
)

// EventsRetention is how long events are kept.
const EventsRetention = 30 * 24 * time.Hour

// EnsureEvents creates or updates the MAIL_EVENTS stream.
func EnsureEvents(ctx context.Context, js jetstream.JetStream, replicas int) error {
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamEvents,
		Description: "Mailroot mail events (received, delivered, bounced, badmail, …) for audit and replay",
		Subjects:    []string{"events.>"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
		MaxAge:      EventsRetention,
		Discard:     jetstream.DiscardOld,
	})
	if err != nil {
		return fmt.Errorf("bus: create stream %s: %w", StreamEvents, err)
	}
	return nil
}

// Event is one entry of the event log.
type Event struct {
	Type    string    `json:"type"`
	Time    time.Time `json:"time"`
	QueueID string    `json:"qid,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	Subject string    `json:"subject,omitempty"`
}

// Emit publishes an event without waiting for its acknowledgement: the
// event log must never hold up or fail mail handling. A lost event is
// also in the process log.
func Emit(js jetstream.JetStream, e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	b, err := json.Marshal(e)
	if err != nil {
		return
	}
	_, _ = js.PublishMsgAsync(&nats.Msg{Subject: "events." + e.Type, Data: b})
}
