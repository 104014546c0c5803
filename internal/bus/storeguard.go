package bus

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/mailroot/mailroot/internal/config"
)

// StoreGuard watches the embedded server's store and brings it back after
// a failed write. When a write fails (the disk is full), nats-server
// v2.15 keeps the error on the stream's file store and refuses, without
// an answer, every later write until the store is opened again: a restart
// used to be the only cure. The guard sees the server's "Critical write
// error" / "no space left on device" log lines, reports the fault (Err, so
// Room refuses new mail at once with 452 4.3.1 instead of letting clients
// wait for a publish that never answers), and, once the file system has
// room again, shuts JetStream down and enables it again in-process. That
// reopens every stream from its files (rebuilding any index that the
// failed write left short); client connections stay up, and the
// pipeline's waiting publishes (Room.Forward) go through.
//
// The guard also reopens the store, once usage is back under its limit
// less the reserve, after the server refused a write for the limit ("file
// resource limits exceeded"): a message schedule (a retry) whose firing
// is refused stays marked in flight, and never fires, until the store is
// opened again.
type StoreGuard struct {
	ns      *server.Server
	jcfg    server.JetStreamConfig
	reserve config.Reserve
	log     *slog.Logger
	kick    chan struct{}

	mu       sync.Mutex
	fault    error
	since    time.Time
	restart  int
	limitHit bool // a write was refused for the store's limit
}

// errStoreFault is the fault the guard reports.
var errStoreFault = errors.New("bus: the store could not be written")

// GuardStore installs a guard on ns, whose store was opened with o. Run
// must be called for it to recover anything.
func GuardStore(ns *server.Server, o EmbeddedOptions, reserve config.Reserve, log *slog.Logger) *StoreGuard {
	g := &StoreGuard{
		ns: ns,
		jcfg: server.JetStreamConfig{
			StoreDir:     o.StoreDir,
			SyncAlways:   o.SyncAlways,
			SyncInterval: o.SyncInterval,
			MaxStore:     o.MaxStore,
			MaxMemory:    embeddedMaxMemory,
			Strict:       true,
		},
		reserve: reserve,
		log:     log.With("svc", "storeguard"),
		kick:    make(chan struct{}, 1),
	}
	ns.SetLoggerV2(slogAdapter{l: log.With("svc", "nats"), onError: g.noteError}, false, false, false)
	return g
}

// noteError looks at each error the server logs for a failed write.
func (g *StoreGuard) noteError(msg string) {
	if strings.Contains(msg, "resource limits exceeded") {
		g.mu.Lock()
		g.limitHit = true
		g.mu.Unlock()
		return
	}
	if !strings.Contains(msg, "Critical write error") && !strings.Contains(msg, "no space left on device") &&
		!strings.Contains(msg, "will be DISABLED") {
		return
	}
	g.mu.Lock()
	if g.fault == nil {
		g.fault, g.since = errors.New(errStoreFault.Error()+": "+msg), time.Now()
		g.log.Error("store write failed: new mail is refused until the store is open again", "err", msg)
	}
	g.mu.Unlock()
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// Err is the current fault, or nil when the store is writable.
func (g *StoreGuard) Err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.fault != nil {
		return g.fault
	}
	if !g.ns.JetStreamEnabled() {
		return errors.New(errStoreFault.Error() + ": JetStream is disabled")
	}
	return nil
}

// Limit is the server's store limit in bytes (0 while JetStream is off).
func (g *StoreGuard) Limit() int64 {
	if c := g.ns.JetStreamConfig(); c != nil {
		return c.MaxStore
	}
	return 0
}

// Restarts is how many times the guard has reopened the store.
func (g *StoreGuard) Restarts() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.restart
}

// Run recovers the store whenever it is faulted and its file system has
// at least the reserve free, until ctx is done.
func (g *StoreGuard) Run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-g.kick:
		}
		if g.Err() == nil {
			if g.belowLimit() {
				g.log.Warn("the store refused a write for its limit: reopening it to restart message schedules stuck by the refusal")
				g.recover()
			}
			continue
		}
		free, total, err := Statfs(g.jcfg.StoreDir)
		if err == nil && free < g.reserve.Of(total) {
			continue // still no room: reopening would fail again at once
		}
		g.recover()
	}
}

// belowLimit reports whether a write was refused for the store's limit
// and usage is now back under the limit less the reserve, and clears the
// mark if so.
func (g *StoreGuard) belowLimit() bool {
	g.mu.Lock()
	hit := g.limitHit
	g.mu.Unlock()
	if !hit {
		return false
	}
	info, err := g.ns.Jsz(nil)
	if err != nil || info.Config.MaxStore <= 0 {
		return false
	}
	if int64(info.Store)+g.reserve.Of(info.Config.MaxStore) > info.Config.MaxStore {
		return false
	}
	g.mu.Lock()
	g.limitHit = false
	g.mu.Unlock()
	return true
}

// recover shuts JetStream down and enables it again from its files.
func (g *StoreGuard) recover() {
	g.log.Warn("reopening the store")
	if g.ns.JetStreamEnabled() {
		if err := g.ns.ShutdownJetStream(); err != nil {
			g.log.Error("shut JetStream down", "err", err)
			return
		}
	}
	// Clear the fault first: a write failing while the store opens
	// faults it again.
	g.mu.Lock()
	since := g.since
	if g.fault == nil {
		since = time.Now()
	}
	g.fault = nil
	g.mu.Unlock()
	cfg := g.jcfg
	if err := g.ns.EnableJetStream(&cfg); err != nil {
		g.log.Error("reopen the store failed, will try again", "err", err)
		return
	}
	g.mu.Lock()
	g.restart++
	g.mu.Unlock()
	g.log.Warn("store reopened", "faulted_for", time.Since(since).Round(time.Millisecond))
}
