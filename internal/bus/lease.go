package bus

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Message leases (docs/DESIGN.md §4 "Queue administration"): a delivery
// worker takes the lease of the message part it is about to deliver, and
// an administrator's delete, hold or bounce of that part takes the same
// lease, so that a message is never both delivered and reported deleted.
// The lease is a key in BucketSessions with a per-key TTL, refreshed while
// it is held, so that the lease of a crashed process ends by itself.

// LeaseKeyPrefix + <qid>.<tok> is the lease of one part of a message.
const LeaseKeyPrefix = "lease."

// LeaseTTL is how long a lease lasts without a refresh; holders refresh it
// every LeaseTTL/3.
const LeaseTTL = 30 * time.Second

// LeaseKey is the key of the lease of the part of message qid for the
// domain token tok.
func LeaseKey(qid, tok string) string { return LeaseKeyPrefix + qid + "." + tok }

// Lease is a held lease; Release ends it.
type Lease struct {
	js   jetstream.JetStream
	key  string
	val  []byte
	mu   sync.Mutex
	rev  uint64
	stop chan struct{}
	done chan struct{}
}

// LeaseHolder names this process in a lease: what ("delivery", "admin
// alice") on which host and pid.
func LeaseHolder(what string) string {
	return what + " on " + eventNode + " pid " + strconv.Itoa(os.Getpid())
}

// TakeLease takes the lease of key at once, or fails with ErrLocked
// (wrapped, with who holds it) when another holder has it. The lease is
// refreshed in the background until Release.
func TakeLease(ctx context.Context, js jetstream.JetStream, key, holder string) (*Lease, error) {
	rev, err := Lock(ctx, js, BucketSessions, key, []byte(holder), LeaseTTL)
	if err != nil {
		if errors.Is(err, ErrLocked) {
			return nil, fmt.Errorf("%w (held by %s)", err, LeaseOwner(ctx, js, key))
		}
		return nil, err
	}
	l := &Lease{js: js, key: key, val: []byte(holder), rev: rev, stop: make(chan struct{}), done: make(chan struct{})}
	go l.refresh()
	return l, nil
}

// LeaseOwner is who holds the lease of key ("" when nobody does).
func LeaseOwner(ctx context.Context, js jetstream.JetStream, key string) string {
	s, err := js.Stream(ctx, "KV_"+BucketSessions)
	if err != nil {
		return ""
	}
	raw, err := s.GetLastMsgForSubject(ctx, "$KV."+BucketSessions+"."+key)
	if err != nil {
		return ""
	}
	return string(raw.Data)
}

func (l *Lease) refresh() {
	defer close(l.done)
	t := time.NewTicker(LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), LeaseTTL/3)
			l.mu.Lock()
			rev, err := PutTTL(ctx, l.js, BucketSessions, l.key, l.val, LeaseTTL, int64(l.rev))
			if err == nil {
				l.rev = rev
			}
			l.mu.Unlock()
			cancel()
		}
	}
}

// Release ends the lease (best effort: it expires by itself otherwise).
func (l *Lease) Release(ctx context.Context) {
	if l == nil {
		return
	}
	close(l.stop)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	_ = Unlock(ctx, l.js, BucketSessions, l.key, l.rev)
}
