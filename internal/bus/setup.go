package bus

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/config"
)

// LayoutOf derives the stream layout from the configuration: replicas from
// nats.replicas, the body TTL from the queue expiry plus two days.
func LayoutOf(c config.Config) Layout {
	return Layout{Replicas: c.NATS.Replicas, BodyTTL: max(c.Delivery.Expire.D(), c.Delivery.LocalExpire.D()) + 48*time.Hour}
}

// Setup makes sure the stream and buckets exist and returns the named
// durable consumers. Every actor calls it at start; it is idempotent.
func Setup(ctx context.Context, js jetstream.JetStream, c config.Config, consumers ...string) (map[string]jetstream.Consumer, error) {
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
