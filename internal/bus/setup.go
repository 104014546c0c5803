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
	return Layout{Replicas: c.NATS.Replicas, BodyTTL: c.Delivery.Expire.D() + 48*time.Hour}
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
		cons, err := EnsureConsumer(ctx, js, name, l.Replicas)
		if err != nil {
			return nil, err
		}
		out[name] = cons
	}
	return out, nil
}
