package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/config"
)

// Room decides whether there is room to accept new mail. Mail already
// accepted must always be able to take its next step (route, retry,
// bounce, Badmail), so the front doors (SMTP, Pickup, sendmail, the submit
// package) stop taking new mail while the pipeline still has a reserve
// left, as Postfix's queue_minfree does:
//
//   - in the JetStream store limit (the account's max_store): new mail is
//     refused once used + reserve + its size would pass the limit;
//   - on the file system of the store, when it is on this machine (the
//     embedded server of `mailroot all`): new mail is refused once less
//     than reserve + its size is free;
//   - while the store is recovering from a failed write (a full disk; see
//     StoreGuard).
//
// Only intake asks; the pipeline's own publishes use the reserve (Forward).
// The checks are cached briefly, so asking per message costs next to
// nothing. A Room is safe for concurrent use.
type Room struct {
	// JS reads the account's usage and limit.
	JS jetstream.JetStream
	// Reserve is nats.reserve.
	Reserve config.Reserve
	// Dir is the store directory when it is on this machine ("" when the
	// server is elsewhere): its file system's free space is checked too.
	Dir string
	// Fault, when set, returns an error while the store cannot be
	// written (StoreGuard.Err).
	Fault func() error
	// Refresh is how long a reading of the account is used (default
	// 500 ms); sizes admitted meanwhile are added to it.
	Refresh time.Duration

	mu       sync.Mutex
	at       time.Time // when used and limit were read
	used     int64     // account store bytes in use, plus what was admitted since
	limit    int64     // account store limit (<= 0: none)
	statAt   time.Time
	free     int64 // bytes free on Dir's file system
	total    int64 // size of Dir's file system
	statErr  error
	statfsFn func(string) (free, total int64, err error)
}

// Check returns nil when there is room for a message of size bytes (0
// when it is not known yet, e.g. at MAIL FROM without SIZE), or an error
// wrapping ErrStoreFull that says why not.
func (r *Room) Check(ctx context.Context, size int64) error {
	if r == nil {
		return nil
	}
	if r.Fault != nil {
		if err := r.Fault(); err != nil {
			return fmt.Errorf("%w: %v", ErrStoreFull, err)
		}
	}
	size = max(size, 0)
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	refresh := r.Refresh
	if refresh <= 0 {
		refresh = 500 * time.Millisecond
	}
	if r.Dir != "" {
		if now.Sub(r.statAt) >= min(refresh, 100*time.Millisecond) {
			fn := r.statfsFn
			if fn == nil {
				fn = Statfs
			}
			r.free, r.total, r.statErr = fn(r.Dir)
			r.statAt = now
		}
		if r.statErr == nil {
			if need := r.Reserve.Of(r.total) + size; r.free < need {
				return fmt.Errorf("%w: %s free on the file system of %s, less than the reserve of %s kept for queued mail (nats.reserve = %s)",
					ErrStoreFull, config.FormatSize(r.free), r.Dir, config.FormatSize(r.Reserve.Of(r.total)), r.Reserve)
			}
		}
	}
	if now.Sub(r.at) >= refresh {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		ai, err := r.JS.AccountInfo(actx)
		cancel()
		if err != nil {
			if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
				return fmt.Errorf("%w: JetStream is not available: %v", ErrStoreFull, err)
			}
			// Not known: let the publish find out (it fails fast on a
			// full store).
			return nil
		}
		r.used, r.limit, r.at = int64(ai.Store), ai.Limits.MaxStore, now
	}
	if r.limit > 0 {
		reserve := r.Reserve.Of(r.limit)
		if r.used+reserve+size > r.limit {
			return fmt.Errorf("%w: %s of the store limit of %s in use, and %s is kept for queued mail (nats.reserve = %s)",
				ErrStoreFull, config.FormatSize(r.used), config.FormatSize(r.limit), config.FormatSize(reserve), r.Reserve)
		}
	}
	r.used += size
	return nil
}
