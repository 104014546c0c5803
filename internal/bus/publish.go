package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
// leader elections (elections take 4-8 s; docs/DESIGN.md §6).
const PublishTimeout = 15 * time.Second

// Publish stores msg in the MAIL stream with msgID as its dedup key and
// returns once JetStream has acknowledged it. Ambiguous failures (timeouts,
// no responders during an election) are retried with the same id, so the
// message is stored at most once. A full store returns ErrStoreFull at once.
func Publish(ctx context.Context, js jetstream.JetStream, msg *nats.Msg, msgID string, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	return publish(ctx, js, nil, msg, msgID, opts...)
}

// publish is Publish; fault, when set, is asked after each failed attempt
// and ends the retries with its error wrapped in ErrStoreFull.
func publish(ctx context.Context, js jetstream.JetStream, fault func() error, msg *nats.Msg, msgID string, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
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
		if fault != nil {
			if ferr := fault(); ferr != nil {
				// A store that failed a write answers nothing until it
				// is reopened: no use waiting for it.
				return nil, fmt.Errorf("%w: %v", ErrStoreFull, ferr)
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("bus: publish %s: %w (last: %v)", msg.Subject, ctx.Err(), err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// WaitForRoom runs op, and again after a growing pause (up to 5 s) for as
// long as it fails for want of room or of an answer from the store (see
// Room.Forward), until ctx is done. what names the write in the log line said
// every 30 s while it waits.
func WaitForRoom(ctx context.Context, what string, op func() error) error {
	wait := 250 * time.Millisecond
	var logged time.Time
	for {
		err := op()
		if err == nil || ctx.Err() != nil || !waitable(err) {
			return err
		}
		if time.Since(logged) > 30*time.Second {
			logged = time.Now()
			slog.Default().Warn("no room to store, waiting for room", "write", what, "err", err)
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// waitable reports whether a failed publish may succeed later by itself:
// a full store, or a store that did not answer (one that is recovering
// from a failed write answers nothing until it is open again, and a
// cluster electing a leader answers 503).
func waitable(err error) bool {
	if errors.Is(err, ErrStoreFull) || isStoreFull(err) {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.Code == 503
	}
	return !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubject) && !errors.Is(err, nats.ErrMaxPayload)
}

func isStoreFull(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeInsufficientResources {
		return true
	}
	return false
}
