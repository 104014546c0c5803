package bus

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
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
	js  jetstream.JetStream
	key string
	val []byte
	mu  sync.Mutex // guards rev, ended and the refresh in flight
	rev uint64
	// timer refreshes the lease every LeaseTTL/3 (a timer rather than a
	// goroutine: most leases last milliseconds).
	timer *time.Timer
	ended bool
}

// LeaseHolder names this process in a lease: what ("delivery", "admin
// alice") on which host and pid.
func LeaseHolder(what string) string {
	return what + " on " + eventNode + " pid " + pid
}

// pid is this process's, read once: delivery names it in the lease of
// every attempt, and os.Getpid is a system call each time.
var pid = strconv.Itoa(os.Getpid())

// deliveryHolder starts the holder of a delivery worker's lease
// (LeaseHolder("delivery")).
const deliveryHolder = "delivery on "

// ErrRemoved is returned by TakeLease to the holder of the very message
// an administrator removed (the lease's tombstone names its sequence).
var ErrRemoved = errors.New("bus: message removed by an administrator")

// tombstonePrefix starts the value a lease is left with after an
// administrator removed the message at a sequence: "removed <seq> by …".
const tombstonePrefix = "removed "

// TombstoneTTL is how long a removal's tombstone stays: longer than a
// worker may hold a pulled message before it takes the lease.
const TombstoneTTL = 10 * time.Minute

// TakeLease takes the lease of key at once, or fails with ErrLocked
// (wrapped, with who holds it) when another holder has it. seq is the
// stream sequence of the message the taker holds (0: none): a lease left
// as a tombstone of that sequence fails with ErrRemoved, one of another
// sequence is free. The lease is refreshed in the background until
// Release.
func TakeLease(ctx context.Context, js jetstream.JetStream, key, holder string, seq uint64) (*Lease, error) {
	rev, err := Lock(ctx, js, BucketSessions, key, []byte(holder), LeaseTTL)
	if errors.Is(err, ErrLocked) {
		rev, err = takeTombstone(ctx, js, key, holder, seq)
	}
	if err != nil {
		if errors.Is(err, ErrLocked) {
			return nil, fmt.Errorf("%w (held by %s)", err, LeaseOwner(ctx, js, key))
		}
		return nil, err
	}
	l := &Lease{js: js, key: key, val: []byte(holder), rev: rev}
	l.mu.Lock()
	l.timer = time.AfterFunc(LeaseTTL/3, l.refresh)
	l.mu.Unlock()
	return l, nil
}

// takeTombstone takes key over when it holds a removal's tombstone of a
// sequence other than seq.
func takeTombstone(ctx context.Context, js jetstream.JetStream, key, holder string, seq uint64) (uint64, error) {
	s, err := js.Stream(ctx, "KV_"+BucketSessions)
	if err != nil {
		return 0, fmt.Errorf("bus: lease %s: %w", key, err)
	}
	raw, err := s.GetLastMsgForSubject(ctx, "$KV."+BucketSessions+"."+key)
	if err != nil {
		return 0, fmt.Errorf("%w: %s", ErrLocked, key)
	}
	v := string(raw.Data)
	if strings.HasPrefix(v, deliveryHolder) && strings.HasPrefix(holder, deliveryHolder) && seq != 0 {
		// A delivery worker holds the message now (the server hands a
		// message to one worker at a time): the worker whose lease this
		// is gave it up or died with it (a crash, its ack deadline
		// passed). Waiting for the lease to age out would spend the
		// message's deliveries on naks and park it in Badmail.
		return PutTTL(ctx, js, BucketSessions, key, []byte(holder), LeaseTTL, int64(raw.Sequence))
	}
	if !strings.HasPrefix(v, tombstonePrefix) {
		return 0, fmt.Errorf("%w: %s", ErrLocked, key)
	}
	num, _, _ := strings.Cut(strings.TrimPrefix(v, tombstonePrefix), " ")
	if n, _ := strconv.ParseUint(num, 10, 64); n == seq && seq != 0 {
		return 0, fmt.Errorf("%w (%s)", ErrRemoved, v)
	}
	return PutTTL(ctx, js, BucketSessions, key, []byte(holder), LeaseTTL, int64(raw.Sequence))
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
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), LeaseTTL/3)
	defer cancel()
	if rev, err := PutTTL(ctx, l.js, BucketSessions, l.key, l.val, LeaseTTL, int64(l.rev)); err == nil {
		l.rev = rev
	}
	l.timer.Reset(LeaseTTL / 3)
}

// end stops the refreshes; the caller holds l.mu.
func (l *Lease) end() {
	l.ended = true
	l.timer.Stop()
}

// Tombstone ends the lease of an administrator who removed the message
// at seq: the key keeps saying so for TombstoneTTL, so that a worker that
// pulled that message before the removal, and asks for the lease after
// it, drops it instead of delivering it (TakeLease: ErrRemoved).
func (l *Lease) Tombstone(ctx context.Context, seq uint64, by string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.end()
	v := tombstonePrefix + strconv.FormatUint(seq, 10) + " by " + by
	_, _ = PutTTL(ctx, l.js, BucketSessions, l.key, []byte(v), TombstoneTTL, int64(l.rev))
}

// Release ends the lease (best effort: it expires by itself otherwise).
func (l *Lease) Release(ctx context.Context) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.end()
	_ = Unlock(ctx, l.js, BucketSessions, l.key, l.rev)
}

// ReleaseAsync ends the lease without waiting for the server: the
// overwrite goes out as a core NATS publish (no acknowledgement, as
// Emit's), which the KV stream applies only if the lease is still at its
// revision. Delivery ends every attempt's lease so; one lost expires by
// itself within LeaseTTL.
func (l *Lease) ReleaseAsync() {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.end()
	m := nats.NewMsg("$KV." + BucketSessions + "." + l.key)
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(l.rev, 10))
	m.Header.Set(jetstream.MsgTTLHeader, "1s")
	_ = l.js.Conn().PublishMsg(m)
}
