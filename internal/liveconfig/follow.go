package liveconfig

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/config"
)

// KeepRestart returns eff (a live configuration, Apply's) with every
// setting that is read at start only taken from running, the
// configuration the process started with (its file, environment and
// flags): those never change in a running process, whatever the bucket
// says, so that the environment's and flags' overrides (MAILROOT_DATA_DIR,
// -nats, ...) stay in force. A site the process does not run (added live)
// is left out: it needs listeners, so a restart.
func KeepRestart(running, eff config.Config) config.Config {
	out := eff
	out.Source = running.Source
	out.Hostname = running.Hostname
	out.DataDir = running.DataDir
	out.LogFormat = running.LogFormat
	out.NATS = running.NATS
	out.Metrics = running.Metrics
	out.DNS = running.DNS
	out.Events = running.Events
	out.Auth.UsersFile = running.Auth.UsersFile
	out.Pickup = running.Pickup
	out.Ingress.Listen = running.Ingress.Listen
	if len(running.Sites) == 0 {
		// The one site made of [ingress]: a live [[site]] list would need
		// listeners of its own.
		out.Sites = nil
		return out
	}
	out.Sites = nil
	for _, rs := range running.Sites {
		i := slices.IndexFunc(eff.Sites, func(s config.Site) bool { return strings.EqualFold(s.Name, rs.Name) })
		if i < 0 {
			// A site removed live keeps running as it was until a restart.
			out.Sites = append(out.Sites, rs)
			continue
		}
		s := eff.Sites[i]
		s.Name, s.Kind, s.Listen = rs.Name, rs.Kind, rs.Listen
		if s.Hostname == eff.Hostname {
			// Inherited from the top-level hostname: it follows the
			// running one (MAILROOT_HOSTNAME).
			s.Hostname = rs.Hostname
		}
		out.Sites = append(out.Sites, s)
	}
	return out
}

// Follower applies the live configuration to a running process.
type Follower struct {
	// Store is the bucket, with the running configuration's text as base.
	Store *Store
	// Running is the configuration the process started with.
	Running config.Config
	// Log reports applied and refused configurations.
	Log *slog.Logger
}

// Follow opens the bucket, seeds it from the running configuration's
// file on the first start of a deployment (Seed: keys stored before
// win), and calls apply with the effective configuration (KeepRestart)
// now and after every change until ctx ends. It returns once the first
// configuration has been applied, or with the error that kept it from
// being read.
func Follow(ctx context.Context, js jetstream.JetStream, running config.Config, log *slog.Logger, apply func(cfg config.Config, entries map[string]Entry)) (*Follower, error) {
	// The live keys apply over the file, as `mailroot config set` checks
	// them; a configuration made without one (the defaults, or one built
	// in code) is its own base.
	base := running.Source
	if base == "" {
		var err error
		if base, err = running.Text(); err != nil {
			return nil, err
		}
	}
	st, err := Open(ctx, js, running.NATS.Replicas, base)
	if err != nil {
		return nil, err
	}
	if err := st.PublishBase(ctx, base); err != nil {
		return nil, err
	}
	if running.Source != "" {
		if n, err := st.Seed(ctx, "configuration file"); err != nil {
			return nil, err
		} else if n > 0 {
			log.Info("live configuration seeded from the configuration file", "keys", n)
		}
		shadowed, err := st.Shadowed(ctx)
		if err != nil {
			return nil, err
		}
		for _, e := range shadowed {
			log.Warn("the configuration file's value of a key is not in force: the live configuration's is; `mailroot config unset KEY` goes back to the file's",
				"key", e.Key, "value", e.Value, "revision", e.Revision, "who", e.Who, "when", e.Time)
		}
	}
	f := &Follower{Store: st, Running: running, Log: log}
	first := make(chan error, 1)
	started := false
	var last string
	err = st.Watch(ctx, func(eff config.Config, entries map[string]Entry) {
		cfg := KeepRestart(running, eff)
		if err := cfg.Validate(); err != nil {
			f.refused(err, &started, first)
			return
		}
		sum := summary(entries)
		if sum != last {
			if len(entries) > 0 {
				log.Info("live configuration applied", "keys", len(entries), "revision", maxRevision(entries))
			}
			last = sum
		}
		apply(cfg, entries)
		if !started {
			started = true
			first <- nil
		}
	}, func(err error) { f.refused(err, &started, first) })
	if err != nil {
		return nil, err
	}
	select {
	case err := <-first:
		return f, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// refused logs a live configuration that does not validate here (the
// file of this process differs from the one the change was checked
// against): the last good one stays in force. At start, the process runs
// on its file.
func (f *Follower) refused(err error, started *bool, first chan<- error) {
	f.Log.Error("live configuration refused, the previous one stays in force", "err", err)
	if !*started {
		*started = true
		first <- nil
	}
}

func summary(entries map[string]Entry) string {
	keys := make([]string, 0, len(entries))
	for k, e := range entries {
		keys = append(keys, fmt.Sprintf("%s@%d", k, e.Revision))
	}
	slices.Sort(keys)
	return strings.Join(keys, ",")
}

func maxRevision(entries map[string]Entry) uint64 {
	var m uint64
	for _, e := range entries {
		m = max(m, e.Revision)
	}
	return m
}
