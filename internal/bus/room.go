package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
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
// Intake asks Check; the pipeline publishes through Forward, which may use
// most of the reserve.
// The checks are cached briefly, so asking per message costs next to
// nothing. A Room is safe for concurrent use.
type Room struct {
	// JS publishes the mail, its events and the account readings (a
	// Room made with Via reads through the JS of the Room it came from).
	JS jetstream.JetStream
	// Reserve is nats.reserve.
	Reserve config.Reserve
	// Dir is the store directory when it is on this machine ("" when the
	// server is elsewhere): its file system's free space is checked too.
	Dir string
	// Fault, when set, returns an error while the store cannot be
	// written (StoreGuard.Err).
	Fault func() error
	// Limit, when set, returns the server's own store limit (the embedded
	// server's max_store, or the 75 % of the free disk nats-server takes
	// without one), which applies besides any limit of the account.
	Limit func() int64
	// Sync, when set, makes what the server has written durable: it is
	// called after every PubAck, and Publish and Forward return only
	// once it has (the group commit: Syncer.Sync in the process that
	// embeds the server, RemoteSync in the others). Nil when the server
	// syncs by itself (nats.sync as a duration, a cluster's quorum, a
	// server that is not Mailroot's).
	Sync func(ctx context.Context) error
	// SyncLazy, when set, is Sync for Forward: the pipeline's successor
	// is as durable before its predecessor's ack, but nobody waits on
	// the ack, so it rides on intake's syncs (Syncer.SyncLazy). Nil:
	// Forward uses Sync.
	SyncLazy func(ctx context.Context) error
	// Writing, when set, announces an intake publish to the group commit
	// (Syncer.Writing): done is called once its PubAck is in, before
	// Sync.
	Writing func() (done func())

	// shared is the Room whose settings, readings and admissions this one
	// uses (Via: only JS is its own); nil: its own.
	shared *Room

	mu       sync.Mutex
	at       time.Time // when used and limit were read
	used     int64     // account store bytes in use, plus what was admitted since
	inflight int64     // admitted by Forward and not yet stored (or failed)
	limit    int64     // account store limit (<= 0: none)
	statAt   time.Time
	free     int64 // bytes free on Dir's file system
	total    int64 // size of Dir's file system
	statErr  error
}

// How long a reading is used: of the account's usage (sizes admitted
// meanwhile are added to it), and of the file system's free space.
// MinDiskReserve is the least room kept on the store's file system,
// whatever nats.reserve gives: nats-server compacts a block by writing it
// anew beside the old one, and the MAIL stream's blocks grow to 8 MiB, so
// a smaller reserve lets a compaction on a nearly full disk fail, which
// fails the store (StoreGuard reopens it). Three blocks' worth.
const MinDiskReserve = 24 << 20

const (
	accountRefresh = 500 * time.Millisecond
	statRefresh    = 100 * time.Millisecond
)

// Via returns a Room that publishes and emits through js, an actor's own
// connection, and counts with r: the same readings, reserve, admissions,
// store guard and sync. Every actor of one process checks against one
// reserve, while a PubAck that holds back a 250 does not queue behind
// another actor's traffic on a shared connection.
func (r *Room) Via(js jetstream.JetStream) *Room {
	if r == nil {
		return nil
	}
	return &Room{JS: js, shared: r.base()}
}

// base is the Room that keeps the settings and readings r counts with.
func (r *Room) base() *Room {
	if r.shared != nil {
		return r.shared
	}
	return r
}

// Check returns nil when there is room for a new message of size bytes
// (0 when it is not known yet, e.g. at MAIL FROM without SIZE), or an
// error wrapping ErrStoreFull that says why not.
func (r *Room) Check(ctx context.Context, size int64) error {
	return r.check(ctx, size, 1)
}

// Publish is bus.Publish for intake: it also gives up, with ErrStoreFull,
// as soon as the store is known to have failed a write (Fault), rather
// than waiting out PublishTimeout for an answer that will not come.
func (r *Room) Publish(ctx context.Context, msg *nats.Msg, msgID string, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	return r.PublishEmit(ctx, msg, msgID, nil, opts...)
}

// PublishEmit is Publish that emits evs (Emit) as soon as msg is stored,
// before the sync: the next actor may take msg while the sync runs, and
// its events should not come before these in MAIL_EVENTS (they still
// may: the server can hand msg on before its PubAck arrives; the events'
// times are in order). msg is in the queue from its PubAck on, synced or
// not, so the events are true even when the sync then fails (the sender
// retries, the copy is a duplicate).
func (r *Room) PublishEmit(ctx context.Context, msg *nats.Msg, msgID string, evs []Event, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	done := func() {}
	if w := r.base().Writing; w != nil {
		done = w()
	}
	ack, err := publish(ctx, r.JS, r.base().Fault, msg, msgID, opts...)
	done()
	if err != nil {
		return nil, err
	}
	for _, e := range evs {
		Emit(r.JS, e)
	}
	if err := r.sync(ctx, false); err != nil {
		return nil, err
	}
	return ack, nil
}

// sync runs Sync, if any, or with lazy SyncLazy when there is one.
func (r *Room) sync(ctx context.Context, lazy bool) error {
	if r == nil {
		return nil
	}
	b := r.base()
	if lazy && b.SyncLazy != nil {
		return b.SyncLazy(ctx)
	}
	if b.Sync != nil {
		return b.Sync(ctx)
	}
	return nil
}

// Forward is Publish for the pipeline: the successor of a message in hand
// (a routed part, a retry, a bounce, a Badmail copy). It may use the
// reserve that intake leaves, down to its last quarter, which stays free
// for what the server writes by itself (message schedules firing into
// their target; a schedule whose firing finds the store full stays stuck
// until the store is reopened). While even that is used, or the store
// is recovering from a failed write, Forward waits for room, retrying
// with the same id until the publish is stored or ctx is done, instead of
// failing. The message in hand stays with its handler meanwhile
// (bus.Worker keeps it alive), so a full store never counts as a failed
// delivery toward the poison limit. A definite refusal (bad request)
// still fails at once.
func (r *Room) Forward(ctx context.Context, msg *nats.Msg, msgID string, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	size := int64(len(msg.Data))
	for k, vs := range msg.Header {
		for _, v := range vs {
			size += int64(len(k) + len(v) + 4)
		}
	}
	var ack *jetstream.PubAck
	err := WaitForRoom(ctx, msg.Subject+" "+msgID, func() error {
		if err := r.check(ctx, size, 0.25); err != nil {
			return err
		}
		r.admit(size)
		defer r.admit(-size)
		var err error
		if ack, err = Publish(ctx, r.JS, msg, msgID, opts...); err != nil {
			return err
		}
		// A failed sync is retried like a failed publish: the same id
		// makes the publish a duplicate, and the next sync covers it.
		return r.sync(ctx, true)
	})
	return ack, err
}

// admit counts size bytes as on their way into the store (negative: no
// longer): a reading taken meanwhile may not include them yet.
func (r *Room) admit(size int64) {
	if r == nil {
		return
	}
	r = r.base()
	r.mu.Lock()
	r.inflight += size
	r.mu.Unlock()
}

// check is Check keeping share (1 = all) of the reserve free.
func (r *Room) check(ctx context.Context, size int64, share float64) error {
	if r == nil {
		return nil
	}
	r = r.base()
	if r.Fault != nil {
		if err := r.Fault(); err != nil {
			return fmt.Errorf("%w: %v", ErrStoreFull, err)
		}
	}
	size = max(size, 0)
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if r.Dir != "" {
		if now.Sub(r.statAt) >= statRefresh {
			r.free, r.total, r.statErr = Statfs(r.Dir)
			r.statAt = now
		}
		if r.statErr == nil {
			reserve := int64(float64(max(r.Reserve.Of(r.total), MinDiskReserve)) * share)
			if r.free < reserve+size {
				return fmt.Errorf("%w: %s free on the file system of %s, less than the reserve of %s kept for queued mail (nats.reserve = %s)",
					ErrStoreFull, config.FormatSize(r.free), r.Dir, config.FormatSize(reserve), r.Reserve)
			}
			r.free -= size
		}
	}
	// The reading plus what was admitted since is an estimate that only
	// grows (what was removed meanwhile is not seen): a refusal is made on
	// a fresh reading.
	for fresh := false; ; fresh = true {
		if fresh || now.Sub(r.at) >= accountRefresh {
			if err := r.read(ctx); err != nil {
				return err
			}
		}
		if r.limit <= 0 {
			break
		}
		reserve := int64(float64(r.Reserve.Of(r.limit)) * share)
		if r.used+reserve+size <= r.limit {
			break
		}
		if fresh || time.Since(r.at) < 20*time.Millisecond {
			return fmt.Errorf("%w: %s of the store limit of %s in use (with the events' share), and %s is kept for queued mail (nats.reserve = %s)",
				ErrStoreFull, config.FormatSize(r.used), config.FormatSize(r.limit), config.FormatSize(reserve), r.Reserve)
		}
	}
	r.used += size
	return nil
}

// read takes a reading of the account's usage and limit. Locked.
func (r *Room) read(ctx context.Context) error {
	actx, cancel := context.WithTimeout(ctx, 2*time.Second)
	ai, err := r.JS.AccountInfo(actx)
	cancel()
	if err != nil {
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			return fmt.Errorf("%w: JetStream is not available: %v", ErrStoreFull, err)
		}
		// Not known: keep the last reading and let the publish find out
		// (it fails fast on a full store).
		return nil
	}
	r.used, r.limit, r.at = int64(ai.Store)+r.inflight, ai.Limits.MaxStore, time.Now()
	if r.Limit != nil {
		if l := r.Limit(); l > 0 && (r.limit <= 0 || l < r.limit) {
			r.limit = l
		}
	}
	// The events' share counts as used whole: the pipeline's events fill
	// it while intake is refused, and must not take the reserve
	// (EventsShare). What events already use is counted twice, which
	// only stops intake a little earlier.
	if r.limit > 0 {
		r.used += EventsMaxBytes(r.limit)
	}
	return nil
}
