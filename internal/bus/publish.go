package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrStoreFull means JetStream refused the write for lack of storage
// (API error 10023 "insufficient resources"); ingress answers 452 4.3.1.
var ErrStoreFull = errors.New("bus: store full")

// errCodeInsufficientResources is JetStream's "insufficient resources".
const errCodeInsufficientResources jetstream.ErrorCode = 10023

// PublishTimeout bounds one durable publish including its retries through
// leader elections (elections take 4-8 s, see nats-notes §8.3).
const PublishTimeout = 15 * time.Second

// Publish stores msg in the MAIL stream with msgID as its dedup key and
// returns once JetStream has acknowledged it. Ambiguous failures (timeouts,
// no responders during an election) are retried with the same id, so the
// message is stored at most once. A full store returns ErrStoreFull at once.
func Publish(ctx context.Context, js jetstream.JetStream, msg *nats.Msg, msgID string, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	ctx, cancel := context.WithTimeout(ctx, PublishTimeout)
	defer cancel()
	opts = append([]jetstream.PublishOpt{
		jetstream.WithMsgID(msgID),
		jetstream.WithExpectStream(StreamMail),
		jetstream.WithRetryAttempts(10),
		jetstream.WithRetryWait(250 * time.Millisecond),
	}, opts...)
	var err error
	for {
		pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
		var ack *jetstream.PubAck
		ack, err = js.PublishMsg(pctx, msg, opts...)
		pcancel()
		if err == nil {
			return ack, nil
		}
		if isStoreFull(err) {
			return nil, fmt.Errorf("%w: %v", ErrStoreFull, err)
		}
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.Code != 503 {
			// A definite refusal (bad request, wrong stream): retrying won't help.
			return nil, fmt.Errorf("bus: publish %s: %w", msg.Subject, err)
		}
		if errors.Is(err, nats.ErrConnectionClosed) {
			// Closed for good (shutdown or a killed process): it will
			// not come back.
			return nil, fmt.Errorf("bus: publish %s: %w", msg.Subject, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("bus: publish %s: %w (last: %v)", msg.Subject, ctx.Err(), err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func isStoreFull(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeInsufficientResources {
		return true
	}
	return false
}
