package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Names of the JetStream objects Mailroot owns.
const (
	StreamMail   = "MAIL"
	BucketBodies = "mail-bodies"
	BucketRefs   = "mta-refs"
)

// Durable consumer names.
const (
	ConsumerRouter   = "router"
	ConsumerDelivery = "delivery"
	ConsumerDrop     = "drop"
	ConsumerBadmail  = "badmail"

	// ConsumerQuarantine writes mail.quarantine to the Quarantine directory.
	ConsumerQuarantine = "quarantine"
)

// MaxDeliver is the consumers' redelivery limit. Workers move a message to
// mail.bad themselves at MaxDeliver-1 deliveries: on a WorkQueue stream a
// message that reaches MaxDeliver would stay in the stream, unseen.
const MaxDeliver = 10

// Layout says how the stream and buckets are replicated and kept.
type Layout struct {
	// Replicas is 1 for an embedded or single server, 3 for a cluster.
	Replicas int
	// BodyTTL is the garbage backstop of the mail-bodies bucket: the
	// longest queue life plus two days.
	BodyTTL time.Duration
	// EventsMaxAge is how long MAIL_EVENTS keeps events (events.max_age).
	EventsMaxAge time.Duration
	// StoreLimit is the embedded server's store limit (nats.max_store),
	// 0 for none: events take at most EventsShare of it.
	StoreLimit int64
}

// StreamConfig returns the MAIL stream definition: a WorkQueue on mail.>
// with no limits at all (the server must never drop mail), a 10 minute
// dedup window and message schedules for retries.
func StreamConfig(replicas int) jetstream.StreamConfig {
	if replicas < 1 {
		replicas = 1
	}
	return jetstream.StreamConfig{
		Name:              StreamMail,
		Description:       "Mailroot queue: every accepted message until it is delivered, bounced or in Badmail",
		Subjects:          []string{SubjAll},
		Retention:         jetstream.WorkQueuePolicy,
		Storage:           jetstream.FileStorage,
		Replicas:          replicas,
		Discard:           jetstream.DiscardOld,
		MaxMsgs:           -1,
		MaxBytes:          -1,
		MaxAge:            0,
		MaxMsgSize:        1 << 20,
		Duplicates:        10 * time.Minute,
		AllowMsgSchedules: true,
		AllowDirect:       true,
	}
}

// consumerConfigs are the durable pull consumers of the MAIL stream.
var consumerConfigs = map[string]jetstream.ConsumerConfig{
	ConsumerRouter:   {Durable: ConsumerRouter, FilterSubject: SubjIn, AckWait: time.Minute, MaxAckPending: 1000},
	ConsumerDelivery: {Durable: ConsumerDelivery, FilterSubject: SubjOutAll, AckWait: 2 * time.Minute, MaxAckPending: 2000},
	ConsumerDrop:     {Durable: ConsumerDrop, FilterSubject: SubjDrop, AckWait: time.Minute, MaxAckPending: 200},
	// Badmail is the end of the line: there is no dead-letter queue to move
	// its messages to, so it retries for ever (MaxDeliver -1, docs/DESIGN.md
	// §2) instead of letting them sit unseen at MaxDeliver.
	ConsumerBadmail: {Durable: ConsumerBadmail, FilterSubject: SubjBad, AckWait: time.Minute, MaxAckPending: 200, MaxDeliver: -1},

	// Quarantine writes a file and acks, as Drop does.
	ConsumerQuarantine: {Durable: ConsumerQuarantine, FilterSubject: SubjQuarantine, AckWait: time.Minute, MaxAckPending: 200},
}

// EnsureStream creates or updates the MAIL stream and the mail-bodies and
// mta-refs buckets. It is idempotent; every process calls it at start.
func EnsureStream(ctx context.Context, js jetstream.JetStream, l Layout) error {
	if l.BodyTTL <= 0 {
		l.BodyTTL = 7 * 24 * time.Hour
	}
	want := StreamConfig(l.Replicas)
	if st, err := js.Stream(ctx, StreamMail); err != nil || !sameStream(st.CachedInfo().Config, want) {
		if _, err := js.CreateOrUpdateStream(ctx, want); err != nil {
			return fmt.Errorf("bus: create stream %s: %w", StreamMail, err)
		}
	}
	if err := EnsureEvents(ctx, js, l.Replicas, l.EventsMaxAge, l.StoreLimit); err != nil {
		return err
	}
	if err := EnsureFailed(ctx, js, l.Replicas, l.StoreLimit); err != nil {
		return err
	}
	if _, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      BucketBodies,
		Description: "bodies of queued mail larger than 64 KiB, by queue id",
		TTL:         l.BodyTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    max(l.Replicas, 1),
	}); err != nil {
		return fmt.Errorf("bus: create object store %s: %w", BucketBodies, err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      BucketRefs,
		Description: "reference counts of Object Store bodies shared by split envelopes",
		TTL:         l.BodyTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    max(l.Replicas, 1),
	}); err != nil {
		return fmt.Errorf("bus: create kv %s: %w", BucketRefs, err)
	}
	return nil
}

// sameStream reports whether the stream config have has every setting of
// want. EnsureStream then leaves the stream alone: every actor calls it at
// start, and an update is a raft proposal on a cluster (and, in
// nats-server 2.15, races with a consumer being created at the same time).
func sameStream(have, want jetstream.StreamConfig) bool {
	return slices.Equal(have.Subjects, want.Subjects) && have.Description == want.Description &&
		have.Retention == want.Retention && have.Storage == want.Storage && have.Replicas == want.Replicas &&
		have.Discard == want.Discard && have.MaxMsgs == want.MaxMsgs && have.MaxBytes == want.MaxBytes &&
		have.MaxAge == want.MaxAge && have.MaxMsgSize == want.MaxMsgSize && have.Duplicates == want.Duplicates &&
		have.AllowMsgSchedules == want.AllowMsgSchedules && have.AllowDirect == want.AllowDirect
}

// EnsureConsumer creates or updates the named durable consumer and returns it.
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, name string, replicas int) (jetstream.Consumer, error) {
	return ensureConsumer(ctx, js, name, replicas, 0)
}

// ensureConsumer is EnsureConsumer with the consumer's AckWait replaced by
// ackWait when that is not zero.
func ensureConsumer(ctx context.Context, js jetstream.JetStream, name string, replicas int, ackWait time.Duration) (jetstream.Consumer, error) {
	cfg, ok := consumerConfigs[name]
	if !ok {
		return nil, fmt.Errorf("bus: unknown consumer %q", name)
	}
	if ackWait > 0 {
		cfg.AckWait = ackWait
	}
	cfg.AckPolicy = jetstream.AckExplicitPolicy
	cfg.DeliverPolicy = jetstream.DeliverAllPolicy
	if cfg.MaxDeliver == 0 {
		cfg.MaxDeliver = MaxDeliver
	}
	cfg.Replicas = max(replicas, 1)
	c, err := js.CreateOrUpdateConsumer(ctx, StreamMail, cfg)
	if err != nil {
		return nil, fmt.Errorf("bus: create consumer %s: %w", name, err)
	}
	return c, nil
}

// ErrStreamMissing is returned when the MAIL stream does not exist.
var ErrStreamMissing = errors.New("bus: stream missing")
