// Package limits holds per-destination limits across every delivery
// worker of a cluster, on NATS alone (no coordinator process): the
// concurrent connections to a destination domain, and the messages a
// minute sent to it.
//
// Connections are leases: a worker takes slot n of a domain by creating
// the key conn.<n>.<domain> in the KV bucket mta-limits (a create
// succeeds for one worker only), renews it every TTL/3 while its
// connection is open and deletes it when the connection closes. The
// bucket's MaxAge is the TTL, so the slots of a worker that died free
// themselves within TTL.
//
// The rate is a GCRA schedule: the key rate.<domain> of mta-rates holds
// the time the next message may go; a worker reserves the later of that
// and now and moves it one interval on with a compare-and-set, then
// waits for its time. Reservations are never made more than MaxAhead
// ahead, so a key that aged out cannot let a burst through.
package limits

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Buckets of the limits.
const (
	BucketConns = "mta-limits"
	BucketRates = "mta-rates"
)

// TTL is how long a connection slot lives without renewal.
const TTL = 30 * time.Second

// MaxAhead is how far ahead of now a rate reservation may be made.
const MaxAhead = 30 * time.Second

// Limiter takes slots and turns in the buckets.
type Limiter struct {
	conns jetstream.KeyValue
	rates jetstream.KeyValue
	// Holder names this worker in its slots (for the operator).
	Holder string
	// Now and Sleep are the clock (test seams).
	Now   func() time.Time
	Sleep func(ctx context.Context, d time.Duration) error
	// TTL overrides the package TTL for renewals (tests).
	TTL time.Duration
}

// Open creates or opens the buckets.
func Open(ctx context.Context, js jetstream.JetStream, replicas int, holder string) (*Limiter, error) {
	return open(ctx, js, replicas, holder, TTL)
}

func open(ctx context.Context, js jetstream.JetStream, replicas int, holder string, ttl time.Duration) (*Limiter, error) {
	conns, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: BucketConns, Description: "delivery connection slots per destination (leases)",
		History: 1, TTL: ttl, Replicas: max(replicas, 1), Storage: jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("limits: bucket %s: %w", BucketConns, err)
	}
	rates, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: BucketRates, Description: "delivery rate schedule per destination (GCRA)",
		History: 1, TTL: 10 * time.Minute, Replicas: max(replicas, 1), Storage: jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("limits: bucket %s: %w", BucketRates, err)
	}
	return &Limiter{conns: conns, rates: rates, Holder: holder, Now: time.Now, Sleep: sleepCtx, TTL: ttl}, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Slot is a connection slot held; Release frees it (once).
type Slot struct {
	l    *Limiter
	key  string
	mu   sync.Mutex
	rev  uint64
	stop chan struct{}
	once sync.Once
}

// TryConn takes a free slot of domain among limit, or returns nil when
// all are held.
func (l *Limiter) TryConn(ctx context.Context, domain string, limit int) (*Slot, error) {
	start := rand.IntN(limit) // spread the workers over the slots
	for i := range limit {
		key := "conn." + strconv.Itoa((start+i)%limit) + "." + domain
		rev, err := l.conns.Create(ctx, key, []byte(l.Holder))
		if errors.Is(err, jetstream.ErrKeyExists) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("limits: take %s: %w", key, err)
		}
		s := &Slot{l: l, key: key, rev: rev, stop: make(chan struct{})}
		go s.renew()
		return s, nil
	}
	return nil, nil
}

// Conn waits for a slot of domain among limit; idle says, while it
// waits, whether the caller found another way (a connection of its own
// came free), which ends the wait with a nil slot.
func (l *Limiter) Conn(ctx context.Context, domain string, limit int, idle func() bool) (*Slot, error) {
	backoff := 20 * time.Millisecond
	for {
		s, err := l.TryConn(ctx, domain, limit)
		if s != nil || err != nil {
			return s, err
		}
		if idle != nil && idle() {
			return nil, nil
		}
		if err := l.Sleep(ctx, backoff+time.Duration(rand.Int64N(int64(backoff)))); err != nil {
			return nil, err
		}
		backoff = min(2*backoff, time.Second)
	}
}

// renew keeps the slot alive until Release.
func (s *Slot) renew() {
	t := time.NewTicker(s.l.TTL / 3)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			s.mu.Lock()
			rev, err := s.l.conns.Update(ctx, s.key, []byte(s.l.Holder), s.rev)
			if err == nil {
				s.rev = rev
			}
			s.mu.Unlock()
			cancel()
		}
	}
}

// Release frees the slot.
func (s *Slot) Release() {
	if s == nil {
		return
	}
	s.once.Do(func() {
		close(s.stop)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.mu.Lock()
		defer s.mu.Unlock()
		_ = s.l.conns.Delete(ctx, s.key, jetstream.LastRevision(s.rev))
	})
}

// Turn waits for domain's next turn at perMinute messages a minute.
func (l *Limiter) Turn(ctx context.Context, domain string, perMinute int) error {
	interval := time.Minute / time.Duration(perMinute)
	key := "rate." + domain
	for {
		now := l.Now()
		var rev uint64
		tat := now
		e, err := l.rates.Get(ctx, key)
		switch {
		case err == nil:
			rev = e.Revision()
			if n, perr := strconv.ParseInt(string(e.Value()), 10, 64); perr == nil {
				if t := time.Unix(0, n); t.After(tat) {
					tat = t
				}
			}
		case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		default:
			return fmt.Errorf("limits: read %s: %w", key, err)
		}
		if tat.Sub(now) > MaxAhead {
			// Enough turns are taken for now: wait for some to pass.
			if err := l.Sleep(ctx, time.Second); err != nil {
				return err
			}
			continue
		}
		next := []byte(strconv.FormatInt(tat.Add(interval).UnixNano(), 10))
		if rev == 0 {
			_, err = l.rates.Create(ctx, key, next)
		} else {
			_, err = l.rates.Update(ctx, key, next, rev)
		}
		if err != nil {
			var apiErr *jetstream.APIError
			if errors.Is(err, jetstream.ErrKeyExists) || errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
				continue // another worker took this turn
			}
			return fmt.Errorf("limits: reserve %s: %w", key, err)
		}
		if d := tat.Sub(now); d > 0 {
			return l.Sleep(ctx, d)
		}
		return nil
	}
}
