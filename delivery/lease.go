package delivery

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
)

// leaseRetryDelay is how long a message waits when an administrator's
// action holds its lease (internal/queue): the action takes milliseconds.
const leaseRetryDelay = 3 * time.Second

// takeLease takes the lease of the part m carries (qid, tok) for its
// attempt (docs/DESIGN.md §4 "Queue administration"), so that an
// administrator's delete, hold or bounce waits for the attempt to end
// rather than racing it. When the lease is held, m is given back for a
// moment; when the message was removed before the lease was ours, it is
// dropped (the lease's tombstone names its sequence): the administrator's
// action won. ok false means m is settled.
func (s *Service) takeLease(ctx context.Context, m jetstream.Msg, qid, tok string, log *slog.Logger) (l *bus.Lease, ok bool) {
	var seq uint64
	if md, err := m.Metadata(); err == nil {
		seq = md.Sequence.Stream
	}
	key := bus.LeaseKey(qid, tok)
	l, err := bus.TakeLease(ctx, s.js, key, bus.LeaseHolder("delivery"), seq)
	// An administrator's action is over in milliseconds: wait a little
	// for it rather than give the message back at once.
	for i := 0; i < 10 && errors.Is(err, bus.ErrLocked) && ctx.Err() == nil; i++ {
		time.Sleep(100 * time.Millisecond)
		l, err = bus.TakeLease(ctx, s.js, key, bus.LeaseHolder("delivery"), seq)
	}
	switch {
	case err == nil:
		return l, true
	case errors.Is(err, bus.ErrRemoved):
		// Removed while this worker held it, before its attempt.
		log.Info("message removed by an administrator before its attempt: not delivered", "lease", err)
		_ = m.Term()
	case errors.Is(err, bus.ErrLocked):
		log.Info("message being changed by an administrator, attempt shortly", "lease", err)
		_ = m.NakWithDelay(leaseRetryDelay)
	default:
		log.Warn("take message lease failed, attempt shortly", "err", err)
		_ = m.NakWithDelay(leaseRetryDelay)
	}
	return nil, false
}
