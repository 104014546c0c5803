package bus

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/config"
)

// LayoutOf derives the stream layout from the configuration: replicas from
// nats.replicas, the body TTL from the queue expiry plus two days, the
// events' age from events.max_age, their share from nats.max_store.
func LayoutOf(c config.Config) Layout {
	return Layout{Replicas: c.NATS.Replicas, BodyTTL: max(c.Delivery.Expire.D(), c.Delivery.LocalExpire.D()) + 48*time.Hour,
		EventsMaxAge: c.Events.MaxAge.D(), StoreLimit: c.NATS.MaxStore}
}

// SetupRetryFor bounds how long Setup retries JetStream API calls that
// time out or find JetStream unavailable. On a fresh cluster every actor
// asks for the R3 stream, buckets and consumers at once while their raft
// groups are still electing leaders, and single calls time out.
const SetupRetryFor = 60 * time.Second

// Setup makes sure the stream and buckets exist and returns the named
// durable consumers. Every actor calls it at start; it is idempotent.
// Temporary failures (timeouts, no responders, 503) are retried for up to
// SetupRetryFor.
func Setup(ctx context.Context, js jetstream.JetStream, c config.Config, consumers ...string) (map[string]jetstream.Consumer, error) {
	deadline := time.Now().Add(SetupRetryFor)
	for {
		out, err := setupOnce(ctx, js, c, consumers...)
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) || !temporary(err) {
			return out, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(time.Second):
		}
	}
}

// temporary reports whether a JetStream API error may go away by itself:
// a timeout, no responders, a connection being re-established, or
// JetStream answering 503 (temporarily unavailable).
func temporary(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.Code == 503
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrDisconnected)
}

func setupOnce(ctx context.Context, js jetstream.JetStream, c config.Config, consumers ...string) (map[string]jetstream.Consumer, error) {
	l := LayoutOf(c)
	if err := EnsureStream(ctx, js, l); err != nil {
		return nil, err
	}
	out := make(map[string]jetstream.Consumer, len(consumers))
	for _, name := range consumers {
		var ackWait time.Duration
		if name == ConsumerDelivery || name == ConsumerDrop {
			ackWait = c.Delivery.AckWait.D() // delivery.ack_wait
		}
		cons, err := ensureConsumer(ctx, js, name, l.Replicas, ackWait)
		if err != nil {
			return nil, err
		}
		out[name] = cons
	}
	return out, nil
}
