package testutil

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Events is an ordered log of what happened, shared by goroutines: the
// durability tests note PubAcks, syncs and replies in it and check their
// order.
type Events struct {
	mu    sync.Mutex
	log   []string
	pairs [][2]string
}

// Add notes one event.
func (e *Events) Add(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	e.mu.Lock()
	e.log = append(e.log, s)
	e.mu.Unlock()
}

// Sync returns a sync function for bus.NewSyncer that notes "sync-start N"
// and "sync-end N" around fn.
func (e *Events) Sync(fn func(n int) error) func() error {
	n := 0
	return func() error {
		e.mu.Lock()
		n++
		k := n
		e.mu.Unlock()
		e.Add("sync-start %d", k)
		err := fn(k)
		e.Add("sync-end %d", k)
		return err
	}
}

// Done notes the event done, which must come after a sync of what the
// event ack acknowledged (CheckSynced).
func (e *Events) Done(ack, done string) {
	e.mu.Lock()
	e.log = append(e.log, done)
	e.pairs = append(e.pairs, [2]string{ack, done})
	e.mu.Unlock()
}

// CheckSynced fails unless, for each Done, the first event ack is followed
// by a "sync-start N" whose "sync-end N" comes before the event done: the
// write acknowledged at ack was made durable before done. It returns how
// many were checked.
func (e *Events) CheckSynced(t testing.TB) int {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, p := range e.pairs {
		ack, done := slices.Index(e.log, p[0]), slices.Index(e.log, p[1])
		if ack < 0 || done < 0 {
			t.Errorf("%q at %d, %q at %d: missing", p[0], ack, p[1], done)
			continue
		}
		synced := false
		for i := ack + 1; i < done && !synced; i++ {
			if n, ok := strings.CutPrefix(e.log[i], "sync-start "); ok {
				synced = slices.Contains(e.log[i+1:done], "sync-end "+n)
			}
		}
		if !synced {
			t.Errorf("%q (event %d) without a sync started after %q (event %d) and completed before it", p[1], done, p[0], ack)
		}
	}
	return len(e.pairs)
}

// ProcessCPU is the user and system CPU time this process has used: for
// benchmarks that report CPU per message of everything in the process.
func ProcessCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// AckRecorder is a JetStream whose PubAcks are noted in Events as
// "puback <value of the message's Header>".
type AckRecorder struct {
	jetstream.JetStream
	Events *Events
	Header string
}

// PublishMsg publishes and notes the PubAck.
func (a AckRecorder) PublishMsg(ctx context.Context, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	ack, err := a.JetStream.PublishMsg(ctx, m, opts...)
	if err == nil {
		a.Events.Add("puback %s", m.Header.Get(a.Header))
	}
	return ack, err
}
