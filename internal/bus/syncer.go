package bus

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// Syncer is the group commit behind a 250 (docs/DESIGN.md, "Durable
// writes"). The embedded nats-server runs without SyncAlways, so it does
// not fsync each record; for an R1 stream it still writes every record to
// the operating system before the PubAck. A publisher that needs its
// message durable calls Sync after the PubAck: Sync returns once a sync of
// the store that started after the call has completed. Concurrent callers
// share one sync: while one runs, the callers that arrive join the next,
// which starts as soon as the running one ends. So a 250 costs at most
// two sync durations of latency, and a node does one sync per group of
// concurrent writers instead of one fsync per record.
//
// Sync of a Syncer that is nil returns nil: the server syncs by itself
// (SyncAlways, a cluster's quorum) or durability is not asked for.
type Syncer struct {
	fn func() error
	// Delay is how long a sync waits, once a caller asks for it, for
	// more callers to join (PostgreSQL's commit_delay): fewer syncs per
	// mail for at most Delay more latency. 0 starts it at once. It counts
	// from the round's first caller: callers that joined while the
	// previous sync ran have waited already, so under load syncs run back
	// to back and the delay adds nothing to a 250.
	Delay time.Duration
	// OnlyForWriters makes a round wait its Delay only while a writer
	// is on its way (Writing: a publish whose PubAck has not come back
	// yet, PostgreSQL's commit_siblings): with nobody to wait for, the
	// sync starts at once, and a lone 250 at a light load does not pay
	// the delay. Set it where every intake of the process announces its
	// writes (the embedded server's node); a server that only answers
	// requests (mailroot nats) cannot see its callers coming and keeps
	// the plain delay.
	OnlyForWriters bool
	// LazyDelay is how long a SyncLazy caller waits for a round that a
	// Sync caller starts, before one is started for it (0: at once).
	LazyDelay time.Duration
	// now and sleep are the clock (test seams; nil: time.Now, and a
	// timer that an urgent caller's arrival cuts short).
	now   func() time.Time
	sleep func(time.Duration)
	// Observe, when set, is told how long each sync took (the metrics'
	// histogram); it is called once per sync, not per caller. Set it
	// before the first Sync.
	Observe func(time.Duration)

	syncs   atomic.Uint64
	writers atomic.Int64 // Writing calls not ended yet
	// kick wakes a loop waiting for a round of lazy callers only, when
	// an urgent caller joins it.
	kick chan struct{}

	mu      sync.Mutex
	next    *syncRound // collecting callers, not started yet
	running bool
}

type syncRound struct {
	done      chan struct{}
	err       error
	n         int       // callers waiting for it
	urgent    int       // of them, Sync callers (a reply waits on them)
	first     time.Time // when its first Sync caller arrived
	lazyFirst time.Time // when its first SyncLazy caller arrived
}

// NewSyncer returns a Syncer that runs fn for each group (a test seam:
// StoreSyncer gives the real one).
func NewSyncer(fn func() error) *Syncer { return &Syncer{fn: fn, kick: make(chan struct{}, 1)} }

// PipelineSyncWait is the node's Syncer.LazyDelay: the longest the
// pipeline's ack of a message waits for intake to start a sync its
// successor can ride on. Nobody waits on that ack; a router slot is held
// the while.
const PipelineSyncWait = 10 * time.Millisecond

// Sync methods of StoreSyncer (nats.sync_method).
const (
	// SyncFiles fdatasyncs the changed block files of MailStreams.
	SyncFiles = "files"
	// SyncFS syncs the store's whole file system (syncfs(2)).
	SyncFS = "syncfs"
)

// StoreSyncer syncs dir, the store of the embedded server, by method
// (SyncFiles or SyncFS); close releases it.
func StoreSyncer(dir, method string) (s *Syncer, close func() error, err error) {
	var syncFn, closeFn func() error
	if method == SyncFiles {
		fs := newFileSync(dir, MailStreams)
		syncFn, closeFn = fs.sync, fs.close
	} else {
		f, err := os.Open(dir)
		if err != nil {
			return nil, nil, fmt.Errorf("bus: store syncer: %w", err)
		}
		syncFn, closeFn = func() error { return syncFS(f) }, f.Close
	}
	// A sync still running when the node stops (a late writer) finishes
	// before the handles are closed; one asked after fails.
	var mu sync.Mutex
	closed := false
	s = NewSyncer(func() error {
		mu.Lock()
		defer mu.Unlock()
		if closed {
			return errSyncerClosed
		}
		return syncFn()
	})
	return s, func() error {
		mu.Lock()
		defer mu.Unlock()
		if closed {
			return nil
		}
		closed = true
		return closeFn()
	}, nil
}

// errSyncerClosed is the failure of a sync asked after the store closed.
var errSyncerClosed = errors.New("the store is closed")

func (s *Syncer) clock() time.Time {
	if s.now != nil {
		return s.now()
	}
	return time.Now()
}

// Syncs is how many syncs have run.
func (s *Syncer) Syncs() uint64 {
	if s == nil {
		return 0
	}
	return s.syncs.Load()
}

// Sync returns nil once a sync that started after the call has completed,
// the sync's error if that sync failed, or ctx's error. It is the sync a
// reply waits on (a 250): it starts a round within Delay.
func (s *Syncer) Sync(ctx context.Context) error {
	return s.join(ctx, true)
}

// SyncLazy is Sync for a caller nobody is waiting on (the pipeline's ack
// of a message whose successor it published): the same guarantee, but it
// rides on the next round a Sync caller starts, and starts one itself
// only after LazyDelay. So the pipeline adds few syncs of its own, and a
// 250 seldom waits behind a sync that was only for the pipeline.
func (s *Syncer) SyncLazy(ctx context.Context) error {
	return s.join(ctx, false)
}

// Writing announces a writer that will call Sync after its PubAck; done
// ends the announcement, once the PubAck (or the failure) is in, just
// before the writer calls Sync. With OnlyForWriters, rounds wait their
// Delay only while some writer is announced.
func (s *Syncer) Writing() (done func()) {
	if s == nil {
		return func() {}
	}
	s.writers.Add(1)
	var once sync.Once
	return func() { once.Do(func() { s.writers.Add(-1) }) }
}

func (s *Syncer) join(ctx context.Context, urgent bool) error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	r := s.next
	if r == nil {
		r = &syncRound{done: make(chan struct{})}
		s.next = r
	}
	r.n++
	if urgent {
		if r.urgent == 0 {
			r.first = s.clock()
			if r.n > 1 && s.kick != nil {
				// The loop may be waiting out LazyDelay for this round.
				select {
				case s.kick <- struct{}{}:
				default:
				}
			}
		}
		r.urgent++
	} else if r.n-r.urgent == 1 {
		r.lazyFirst = s.clock()
	}
	if !s.running {
		s.running = true
		go s.loop()
	}
	s.mu.Unlock()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// wait is how long round r still waits before its sync starts. Locked.
func (s *Syncer) wait(r *syncRound) time.Duration {
	if r.urgent == 0 {
		return s.LazyDelay - s.clock().Sub(r.lazyFirst)
	}
	if s.Delay <= 0 || (s.OnlyForWriters && s.writers.Load() <= 0) {
		return 0
	}
	return s.Delay - s.clock().Sub(r.first)
}

// pause waits d, or less when an urgent caller kicks the loop; it
// reports whether it was kicked.
func (s *Syncer) pause(d time.Duration) (kicked bool) {
	if s.sleep != nil {
		s.sleep(d)
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return false
	case <-s.kick:
		return true
	}
}

// loop runs rounds while callers wait. A round is taken from next before
// its sync starts, so every caller in it registered (after its PubAck)
// before the sync began.
func (s *Syncer) loop() {
	for {
		s.mu.Lock()
		r := s.next
		if r == nil {
			s.running = false
			s.mu.Unlock()
			return
		}
		wait := s.wait(r)
		s.mu.Unlock()
		if wait > 0 && s.pause(wait) {
			continue // an urgent caller came: its delay, not the lazy one's
		}
		// Only loop takes s.next, so r is still the round collecting.
		s.mu.Lock()
		s.next = nil
		s.mu.Unlock()
		s.syncs.Add(1)
		t0 := time.Now()
		if err := s.fn(); err != nil {
			r.err = fmt.Errorf("bus: sync of the store failed: %w", err)
		}
		if s.Observe != nil {
			s.Observe(time.Since(t0))
		}
		close(r.done)
	}
}

// SubjCtlSync is the core NATS request subject of the group commit for
// processes that do not embed the server (the actors of a split
// deployment, the submit package): the process that embeds it answers
// each request, with an empty reply once a sync that started after the
// request arrived has completed, or with the error text. A request whose
// payload is SyncLazyRequest is served by SyncLazy, any other by Sync.
const SubjCtlSync = "mta.ctl.sync"

// SyncLazyRequest is the payload of a SyncLazy request on SubjCtlSync.
const SyncLazyRequest = "lazy"

// ServeSync answers SubjCtlSync with s. Requests are answered from their
// own goroutines, so concurrent requests share syncs.
func ServeSync(nc *nats.Conn, s *Syncer) (*nats.Subscription, error) {
	return nc.Subscribe(SubjCtlSync, func(m *nats.Msg) {
		lazy := string(m.Data) == SyncLazyRequest
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), PublishTimeout)
			defer cancel()
			reply := []byte{}
			sync := s.Sync
			if lazy {
				sync = s.SyncLazy
			}
			if err := sync(ctx); err != nil {
				reply = []byte(err.Error())
			}
			_ = m.Respond(reply)
		}()
	})
}

// RemoteSync returns the Room.Sync of a process that does not embed the
// server: nil when no server answers SubjCtlSync now (a server that is
// not Mailroot's syncs by its own configuration), else RequestSync on nc.
// Once a responder has been seen, a missing one is an error (the mail is
// not known to be durable), not a pass.
func RemoteSync(ctx context.Context, nc *nats.Conn) func(context.Context) error {
	if errors.Is(RequestSync(ctx, nc), nats.ErrNoResponders) {
		return nil
	}
	return func(ctx context.Context) error { return RequestSync(ctx, nc) }
}

// RemoteSyncLazy is the Room.SyncLazy beside a RemoteSync that is not
// nil: RequestSyncLazy on nc.
func RemoteSyncLazy(nc *nats.Conn) func(context.Context) error {
	return func(ctx context.Context) error { return requestSync(ctx, nc, SyncLazyRequest) }
}

// RequestSync asks the server's process for a sync that starts after the
// request (SubjCtlSync) and waits for it. nats.ErrNoResponders means the
// server is not Mailroot's.
func RequestSync(ctx context.Context, nc *nats.Conn) error {
	return requestSync(ctx, nc, "")
}

func requestSync(ctx context.Context, nc *nats.Conn, payload string) error {
	ctx, cancel := context.WithTimeout(ctx, PublishTimeout)
	defer cancel()
	m, err := nc.RequestWithContext(ctx, SubjCtlSync, []byte(payload))
	if err != nil {
		return fmt.Errorf("bus: sync of the store: %w", err)
	}
	if len(m.Data) > 0 {
		return errors.New(string(m.Data))
	}
	return nil
}
