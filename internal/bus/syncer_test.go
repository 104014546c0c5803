package bus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

// Callers that arrive while a sync runs share the next one: N callers
// behind a slow sync cost two syncs, not N.
func TestSyncerGroups(t *testing.T) {
	gate := make(chan struct{})
	var calls atomic.Int32
	s := NewSyncer(func() error {
		if calls.Add(1) == 1 {
			<-gate
		}
		return nil
	})
	const n = 20
	errs := make(chan error, n)
	go func() { errs <- s.Sync(context.Background()) }()
	testutil.WaitFor(t, 5*time.Second, "the first sync to start", func() bool { return calls.Load() == 1 })
	for i := 1; i < n; i++ {
		go func() { errs <- s.Sync(context.Background()) }()
	}
	testutil.WaitFor(t, 5*time.Second, "the others to wait for the next sync", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.next != nil && s.next.n == n-1
	})
	close(gate)
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if c := calls.Load(); c != 2 {
		t.Errorf("%d syncs for %d callers behind a running one, want 2", c, n)
	}
}

// The delay counts from a round's first caller: an idle syncer waits
// Delay for company, but callers that joined while a sync ran have waited
// already, and their sync starts as soon as the running one ends.
func TestSyncerDelayCountsFromTheFirstCaller(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1e9, 0)
	var slept []time.Duration
	gate := make(chan struct{})
	var calls atomic.Int32
	s := NewSyncer(func() error {
		if calls.Add(1) == 1 {
			<-gate
		}
		return nil
	})
	s.Delay = 2 * time.Millisecond
	s.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s.sleep = func(d time.Duration) { mu.Lock(); defer mu.Unlock(); slept = append(slept, d); now = now.Add(d) }
	advance := func(d time.Duration) { mu.Lock(); defer mu.Unlock(); now = now.Add(d) }

	errs := make(chan error, 3)
	go func() { errs <- s.Sync(context.Background()) }()
	testutil.WaitFor(t, 5*time.Second, "the first sync to start", func() bool { return calls.Load() == 1 })
	// While it runs, a caller arrives 1ms in, and the sync takes 5ms more.
	advance(time.Millisecond)
	go func() { errs <- s.Sync(context.Background()) }()
	testutil.WaitFor(t, 5*time.Second, "the second caller to wait", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.next != nil && s.next.n == 1
	})
	advance(5 * time.Millisecond)
	close(gate)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// Idle again: the next caller waits the whole delay.
	if err := s.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(slept) != 2 || slept[0] != s.Delay || slept[1] != s.Delay {
		t.Fatalf("slept %v; want the delay before the first sync and the one after idling, none between back-to-back syncs", slept)
	}
	if c := calls.Load(); c != 3 {
		t.Fatalf("%d syncs, want 3", c)
	}
}

// With OnlyForWriters, a round waits its Delay for company only while a
// writer is announced: a lone caller at a light load syncs at once.
func TestSyncerWaitsOnlyForWriters(t *testing.T) {
	var mu sync.Mutex
	var slept []time.Duration
	s := NewSyncer(func() error { return nil })
	s.Delay, s.OnlyForWriters = 2*time.Millisecond, true
	s.now = func() time.Time { return time.Unix(1e9, 0) }
	s.sleep = func(d time.Duration) { mu.Lock(); defer mu.Unlock(); slept = append(slept, d) }
	if err := s.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(slept) != 0 {
		t.Errorf("with no writer on its way the round waited %v; want no wait", slept)
	}
	mu.Unlock()
	done := s.Writing()
	if err := s.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	done()
	done() // a second call is harmless
	if err := s.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(slept) != 1 || slept[0] != s.Delay {
		t.Errorf("slept %v; want the delay once, while a writer was on its way", slept)
	}
	if w := s.writers.Load(); w != 0 {
		t.Errorf("%d writers announced after every done, want 0", w)
	}
}

// A lazy caller alone waits LazyDelay for an urgent one to start a round.
func TestSyncerLazyWaitsLazyDelay(t *testing.T) {
	var slept []time.Duration
	s := NewSyncer(func() error { return nil })
	s.Delay, s.LazyDelay = time.Millisecond, 7*time.Millisecond
	s.now = func() time.Time { return time.Unix(1e9, 0) }
	s.sleep = func(d time.Duration) { slept = append(slept, d) } // only the loop sleeps
	if err := s.SyncLazy(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(slept) != 1 || slept[0] != s.LazyDelay {
		t.Errorf("slept %v; want LazyDelay once", slept)
	}
}

// An urgent caller starts the round a lazy one waits in: both are
// served by one sync, long before LazyDelay.
func TestSyncerLazyRidesOnUrgent(t *testing.T) {
	var calls atomic.Int32
	s := NewSyncer(func() error { calls.Add(1); return nil })
	s.LazyDelay = time.Hour
	lazy := make(chan error, 1)
	go func() { lazy <- s.SyncLazy(context.Background()) }()
	testutil.WaitFor(t, 5*time.Second, "the lazy caller to wait", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.next != nil && s.next.n == 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Sync(ctx); err != nil {
		t.Fatalf("urgent Sync behind a lazy caller: %v (the round waited out LazyDelay)", err)
	}
	if err := <-lazy; err != nil {
		t.Fatal(err)
	}
	if c := calls.Load(); c != 1 {
		t.Errorf("%d syncs for a lazy and an urgent caller, want 1", c)
	}
}

// Sync returns only after a sync that started after it was called has
// completed, whatever the interleaving.
func TestSyncerStartsAfterCall(t *testing.T) {
	var started atomic.Int64 // syncs started
	var mu sync.Mutex
	completed := int64(0) // highest start number among completed syncs
	s := NewSyncer(func() error {
		k := started.Add(1)
		time.Sleep(time.Duration(k%3) * 100 * time.Microsecond) // a disk of varying speed
		mu.Lock()
		completed = max(completed, k)
		mu.Unlock()
		return nil
	})
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Go(func() {
			for i := 0; i < 50; i++ {
				before := started.Load()
				if err := s.Sync(context.Background()); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				c := completed
				mu.Unlock()
				if c <= before {
					t.Errorf("Sync returned when the last completed sync was #%d, started before the call (%d had started)", c, before)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := started.Load(); n >= 16*50 {
		t.Errorf("%d syncs for %d calls: no grouping", n, 16*50)
	}
}

// A failed sync is the caller's error; the next one is tried afresh.
func TestSyncerError(t *testing.T) {
	fail := errors.New("EIO")
	var calls atomic.Int32
	s := NewSyncer(func() error {
		if calls.Add(1) == 1 {
			return fail
		}
		return nil
	})
	if err := s.Sync(context.Background()); !errors.Is(err, fail) {
		t.Fatalf("first sync: %v, want %v", err, fail)
	}
	if err := s.Sync(context.Background()); err != nil {
		t.Fatalf("second sync: %v", err)
	}
}

func syncedRoom(t *testing.T, fail func(k int) error) (*Room, *testutil.Events, *atomic.Int64) {
	n := testutil.StartNATS(t)
	_, js := n.Connect(t)
	if _, err := Setup(context.Background(), js, config.Default()); err != nil {
		t.Fatal(err)
	}
	ev := &testutil.Events{}
	var k atomic.Int64
	s := NewSyncer(ev.Sync(func(i int) error { k.Add(1); return fail(i) }))
	// As the node wires it: intake announces its writes, the pipeline
	// syncs lazily.
	s.Delay, s.OnlyForWriters, s.LazyDelay = time.Millisecond, true, PipelineSyncWait
	return &Room{JS: testutil.AckRecorder{JetStream: js, Events: ev, Header: "Test-Id"}, Reserve: config.Default().NATS.Reserve,
		Sync: s.Sync, SyncLazy: s.SyncLazy, Writing: s.Writing}, ev, &k
}

// Room.Publish (intake: the 250) and Room.Forward (the pipeline: the ack
// of the predecessor) return only after a sync that started after the
// PubAck, for concurrent publishers.
func TestRoomSyncsAfterThePubAck(t *testing.T) {
	room, ev, _ := syncedRoom(t, func(int) error { return nil })
	var wg sync.WaitGroup
	for g := 0; g < 10; g++ {
		wg.Go(func() {
			for i := 0; i < 10; i++ {
				id := fmt.Sprintf("g%d-%d", g, i)
				m := &nats.Msg{Subject: SubjIn, Header: nats.Header{"Test-Id": {id}}, Data: []byte("x")}
				var err error
				if i%2 == 0 {
					_, err = room.Publish(context.Background(), m, id)
				} else {
					_, err = room.Forward(context.Background(), m, id)
				}
				if err != nil {
					t.Error(err)
					return
				}
				ev.Done("puback "+id, "return "+id)
			}
		})
	}
	wg.Wait()
	if n := ev.CheckSynced(t); n != 100 {
		t.Errorf("%d publishes checked, want 100", n)
	}
}

// A failed sync fails intake's publish (the client gets 451, not 250);
// the pipeline's Forward retries until a sync succeeds.
func TestRoomFailedSync(t *testing.T) {
	room, ev, syncs := syncedRoom(t, func(k int) error {
		if k <= 3 {
			return errors.New("EIO")
		}
		return nil
	})
	m := func(id string) *nats.Msg {
		return &nats.Msg{Subject: SubjIn, Header: nats.Header{"Test-Id": {id}}, Data: []byte("x")}
	}
	if _, err := room.Publish(context.Background(), m("in"), "in"); err == nil || !strings.Contains(err.Error(), "EIO") {
		t.Fatalf("Publish with a failing sync: %v, want the sync's error", err)
	}
	if _, err := room.Forward(context.Background(), m("fwd"), "fwd"); err != nil {
		t.Fatalf("Forward: %v", err)
	}
	ev.Done("puback fwd", "return fwd")
	if n := syncs.Load(); n != 4 {
		t.Errorf("%d syncs, want 4 (one for Publish, two failed and one good for Forward)", n)
	}
	ev.CheckSynced(t)
}

// Processes without the server ask the one that embeds it over NATS.
func TestRemoteSync(t *testing.T) {
	n := testutil.StartNATS(t)
	nc, _ := n.Connect(t)
	if RemoteSync(context.Background(), nc) != nil {
		t.Fatal("RemoteSync without a responder: want nil (the server syncs by itself)")
	}
	var calls atomic.Int32
	fail := atomic.Bool{}
	s := NewSyncer(func() error {
		calls.Add(1)
		if fail.Load() {
			return errors.New("EIO")
		}
		return nil
	})
	srvConn, _ := n.Connect(t)
	if _, err := ServeSync(srvConn, s); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, "the responder", func() bool { return RemoteSync(context.Background(), nc) != nil })
	sync := RemoteSync(context.Background(), nc)
	before := calls.Load()
	if err := sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if calls.Load() <= before {
		t.Error("the remote sync ran no sync")
	}
	// A lazy request waits in the server's syncer for LazyDelay (an
	// hour here) or for an urgent request to start the round.
	s.LazyDelay = time.Hour
	lazy := make(chan error, 1)
	before = calls.Load()
	go func() { lazy <- RemoteSyncLazy(nc)(context.Background()) }()
	testutil.WaitFor(t, 5*time.Second, "the lazy request to wait", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.next != nil && s.next.n == 1 && s.next.urgent == 0
	})
	if err := sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-lazy; err != nil {
		t.Fatal(err)
	}
	if c := calls.Load() - before; c != 1 {
		t.Errorf("%d syncs for a lazy and an urgent request, want 1", c)
	}
	fail.Store(true)
	if err := sync(context.Background()); err == nil || !strings.Contains(err.Error(), "EIO") {
		t.Errorf("failing remote sync: %v, want EIO", err)
	}
}
