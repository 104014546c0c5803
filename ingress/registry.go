package ingress

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
)

// sessionInfo is what `mailroot sessions` shows of one connection.
type sessionInfo = bus.SessionInfo

// Session entries live for sessionTTL unless refreshed; every live session
// is rewritten every sessionRefresh, so a crashed ingress's entries vanish
// within sessionTTL. Changes are written within flushEvery, off the SMTP
// path: a session never waits for the bucket.
const (
	sessionTTL     = 90 * time.Second
	sessionRefresh = 30 * time.Second
	flushEvery     = time.Second
)

// registry mirrors this process's live sessions into the mta-sessions KV
// bucket (docs/DESIGN.md §2).
type registry struct {
	js   jetstream.JetStream
	cfg  config.Config
	log  *slog.Logger
	node string

	mu      sync.Mutex
	live    map[string]*sessionInfo
	dirty   map[string]bool
	written map[string]bool
	gone    map[string]bool
}

func newRegistry(js jetstream.JetStream, cfg config.Config, log *slog.Logger) *registry {
	return &registry{js: js, cfg: cfg, log: log, node: nodeName(cfg.Hostname),
		live: map[string]*sessionInfo{}, dirty: map[string]bool{}, written: map[string]bool{}, gone: map[string]bool{}}
}

func (r *registry) key(id string) string { return bus.SessionKeyPrefix + r.node + "." + id }

// open makes sure the bucket exists.
func (r *registry) open(ctx context.Context) error {
	_, err := bus.EnsureSessions(ctx, r.js, r.cfg.NATS.Replicas)
	return err
}

func (r *registry) add(id string, info sessionInfo) {
	info.Node, info.ID = r.node, id
	r.mu.Lock()
	defer r.mu.Unlock()
	r.live[id] = &info
	r.dirty[id] = true
}

func (r *registry) update(id string, f func(*sessionInfo)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i, ok := r.live[id]; ok {
		f(i)
		r.dirty[id] = true
	}
}

func (r *registry) remove(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.live, id)
	delete(r.dirty, id)
	if r.written[id] {
		delete(r.written, id)
		r.gone[id] = true
	}
}

// run writes changes every flushEvery and refreshes every entry every
// sessionRefresh until ctx is done, then takes this process's entries back.
func (r *registry) run(ctx context.Context) {
	tick := time.NewTicker(flushEvery)
	defer tick.Stop()
	lastRefresh := time.Now()
	for {
		select {
		case <-ctx.Done():
			r.mu.Lock()
			for id := range r.written {
				r.gone[id] = true
			}
			r.live, r.dirty, r.written = map[string]*sessionInfo{}, map[string]bool{}, map[string]bool{}
			r.mu.Unlock()
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			r.flush(fctx, false)
			cancel()
			return
		case now := <-tick.C:
			all := now.Sub(lastRefresh) >= sessionRefresh
			if all {
				lastRefresh = now
			}
			fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			r.flush(fctx, all)
			cancel()
		}
	}
}

// flush writes the dirty entries (all live ones with all) and tombstones
// the closed ones: an empty value that expires in a second, so no delete
// marker stays in the bucket.
func (r *registry) flush(ctx context.Context, all bool) {
	type put struct {
		key string
		val []byte
	}
	var puts []put
	r.mu.Lock()
	for id, info := range r.live {
		if all || r.dirty[id] {
			b, _ := json.Marshal(info)
			puts = append(puts, put{r.key(id), b})
			r.written[id] = true
		}
	}
	for id := range r.gone {
		puts = append(puts, put{r.key(id), nil})
	}
	r.dirty = map[string]bool{}
	r.gone = map[string]bool{}
	r.mu.Unlock()
	for _, p := range puts {
		ttl := sessionTTL
		if p.val == nil {
			ttl = time.Second
		}
		if _, err := bus.PutTTL(ctx, r.js, bus.BucketSessions, p.key, p.val, ttl, 0); err != nil {
			r.log.Debug("session registry write failed", "key", p.key, "err", err)
		}
	}
}
