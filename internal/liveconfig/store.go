package liveconfig

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
)

// Bucket is the KV bucket of the live configuration.
const Bucket = "mta-config"

// History is how many revisions of each key the bucket keeps (the most
// a NATS KV bucket can).
const History = 64

// Change is one revision of a key, the KV value as JSON.
type Change struct {
	// Value is the TOML value text; empty with Unset.
	Value string `json:"value,omitempty"`
	// Unset: the key went back to the file's value (or the default).
	Unset bool      `json:"unset,omitempty"`
	Who   string    `json:"who"`
	Why   string    `json:"why,omitempty"`
	Time  time.Time `json:"time"`
}

// Entry is a change as stored: its key and revision.
type Entry struct {
	Key      string `json:"key"`
	Revision uint64 `json:"revision"`
	Change
}

// Store is the bucket with the file text the live keys apply over.
type Store struct {
	KV jetstream.KeyValue
	// JS records every change as a config event in MAIL_EVENTS (nil:
	// none, for tests of the bucket alone).
	JS jetstream.JetStream
	// Base is the configuration file's text ("" for none).
	Base string
	// Check, when set, vets a change beyond the file's rules, with the
	// configuration it would make: what only the machine setting it can
	// tell (a key file that must be readable). An error refuses the
	// change, naming its key.
	Check func(key string, cfg config.Config) error
}

// Open creates or opens the bucket.
func Open(ctx context.Context, js jetstream.JetStream, replicas int, base string) (*Store, error) {
	if replicas < 1 {
		replicas = 1
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: Bucket, History: History, Replicas: replicas,
		Description: "Mailroot live configuration: mailroot config get|set|history|rollback",
	})
	if err != nil {
		return nil, fmt.Errorf("liveconfig: bucket %s: %w", Bucket, err)
	}
	return &Store{KV: kv, JS: js, Base: base}, nil
}

// kvKey maps a configuration key to a KV key: KV keys allow letters,
// digits, '-', '_', '/', '=' and '.', so a key is stored as it is, except
// that other characters are refused by CheckKey's caller.
func kvKey(key string) (string, error) {
	for _, r := range key {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_/=.", r)) {
			return "", fmt.Errorf("%q: a live key may only hold letters, digits and - _ / = .", key)
		}
	}
	return key, nil
}

// Overrides reads every key's current value (unset keys left out).
func (s *Store) Overrides(ctx context.Context) (map[string]string, map[string]Entry, error) {
	entries, err := s.current(ctx)
	if err != nil {
		return nil, nil, err
	}
	ov := map[string]string{}
	for k, e := range entries {
		if !e.Unset {
			ov[k] = e.Value
		}
	}
	return ov, entries, nil
}

func (s *Store) current(ctx context.Context) (map[string]Entry, error) {
	lister, err := s.KV.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("liveconfig: list keys: %w", err)
	}
	out := map[string]Entry{}
	for k := range lister.Keys() {
		if k == baseKey {
			continue
		}
		e, err := s.KV.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("liveconfig: get %s: %w", k, err)
		}
		ent, err := decode(e)
		if err != nil {
			return nil, err
		}
		out[k] = ent
	}
	return out, nil
}

func decode(e jetstream.KeyValueEntry) (Entry, error) {
	var c Change
	if err := json.Unmarshal(e.Value(), &c); err != nil {
		return Entry{}, fmt.Errorf("liveconfig: %s revision %d: %w", e.Key(), e.Revision(), err)
	}
	return Entry{Key: e.Key(), Revision: e.Revision(), Change: c}, nil
}

// Effective is the configuration with every live key applied.
func (s *Store) Effective(ctx context.Context) (config.Config, map[string]Entry, error) {
	ov, entries, err := s.Overrides(ctx)
	if err != nil {
		return config.Config{}, nil, err
	}
	cfg, err := Apply(s.Base, ov)
	return cfg, entries, err
}

// Set stores value (TOML text) for key after checking that the
// configuration with it is valid; unset (value ignored) returns the key
// to the file's value. It returns the new revision.
func (s *Store) Set(ctx context.Context, key, value string, unset bool, who, why string) (uint64, error) {
	if err := CheckKey(key); err != nil {
		return 0, &config.KeyError{Key: key, Msg: strings.TrimPrefix(err.Error(), key+": ")}
	}
	k, err := kvKey(key)
	if err != nil {
		return 0, &config.KeyError{Key: key, Msg: err.Error()}
	}
	if !unset {
		v, err := ParseValue(value)
		if err != nil {
			return 0, &config.KeyError{Key: key, Msg: err.Error()}
		}
		if value, err = FormatValue(v); err != nil {
			return 0, &config.KeyError{Key: key, Msg: err.Error()}
		}
	}
	ov, entries, err := s.Overrides(ctx)
	if err != nil {
		return 0, err
	}
	if unset {
		delete(ov, key)
	} else {
		ov[key] = value
	}
	cfg, err := Apply(s.Base, ov)
	if err != nil {
		var ke *config.KeyError
		if errors.As(err, &ke) && ke.Key != key {
			return 0, &config.KeyError{Key: key, Msg: fmt.Sprintf("refused: %s", err.Error())}
		}
		return 0, err
	}
	if s.Check != nil && !unset {
		if err := s.Check(key, cfg); err != nil {
			return 0, &config.KeyError{Key: key, Msg: fmt.Sprintf("refused: %s", err.Error())}
		}
	}
	b, err := json.Marshal(Change{Value: value, Unset: unset, Who: who, Why: why, Time: time.Now().UTC()})
	if err != nil {
		return 0, err
	}
	// Compare-and-set against the revision read, so that two changes of
	// one key at once cannot both be validated against the old value.
	var rev uint64
	if e, ok := entries[key]; ok {
		rev, err = s.KV.Update(ctx, k, b, e.Revision)
	} else {
		rev, err = s.KV.Create(ctx, k, b)
	}
	if err != nil {
		return 0, fmt.Errorf("liveconfig: store %s (changed meanwhile? try again): %w", key, err)
	}
	if s.JS != nil {
		// The change is stored (its history says who, when and why); the
		// event makes it part of the one log of everything that happened.
		ev := bus.Event{Type: bus.EventConfig, Admin: who, Key: key, Value: value, Revision: rev, Reason: why}
		if unset {
			ev.Value = ""
		}
		if err := bus.EmitSync(ctx, s.JS, ev); err != nil {
			return rev, fmt.Errorf("liveconfig: %s stored as revision %d, but its event was not recorded: %w", key, rev, err)
		}
	}
	return rev, nil
}

// History returns the revisions of key, oldest first, or of every key
// when key is "" (ordered by revision).
func (s *Store) History(ctx context.Context, key string) ([]Entry, error) {
	var keys []string
	if key != "" {
		keys = []string{key}
	} else {
		lister, err := s.KV.ListKeys(ctx, jetstream.IgnoreDeletes())
		if err != nil {
			return nil, err
		}
		for k := range lister.Keys() {
			if k != baseKey {
				keys = append(keys, k)
			}
		}
	}
	var out []Entry
	for _, k := range keys {
		h, err := s.KV.History(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("liveconfig: history of %s: %w", k, err)
		}
		for _, e := range h {
			if e.Operation() != jetstream.KeyValuePut {
				continue
			}
			ent, err := decode(e)
			if err != nil {
				return nil, err
			}
			out = append(out, ent)
		}
	}
	slices.SortFunc(out, func(a, b Entry) int { return int(a.Revision) - int(b.Revision) })
	return out, nil
}

// Rollback sets key to its value at revision rev, as a new revision.
func (s *Store) Rollback(ctx context.Context, key string, rev uint64, who, why string) (uint64, error) {
	e, err := s.KV.GetRevision(ctx, key, rev)
	if err != nil {
		return 0, fmt.Errorf("liveconfig: %s has no revision %d: %w", key, rev, err)
	}
	old, err := decode(e)
	if err != nil {
		return 0, err
	}
	if why == "" {
		why = fmt.Sprintf("rollback to revision %d", rev)
	}
	return s.Set(ctx, key, old.Value, old.Unset, who, why)
}

// Seed stores, for a bucket that has never held key, the file's value of
// each live key set in the file, so that the bucket shows every setting
// an administrator can change; keys already stored win over the file.
// Two processes seeding at once store each key once.
func (s *Store) Seed(ctx context.Context, who string) (int, error) {
	var tree map[string]any
	if _, err := toml.Decode(s.Base, &tree); err != nil {
		return 0, fmt.Errorf("config file: %w", err)
	}
	n := 0
	for _, kv := range flatten(tree) {
		if CheckKey(kv[0]) != nil {
			continue
		}
		k, err := kvKey(kv[0])
		if err != nil {
			continue
		}
		if _, err := s.KV.Get(ctx, k); err == nil || !errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // stored before (or deleted, which is a choice too)
		}
		b, _ := json.Marshal(Change{Value: kv[1], Who: who, Why: "seeded from the configuration file", Time: time.Now().UTC()})
		if _, err := s.KV.Create(ctx, k, b); err == nil {
			n++
		} else if !errors.Is(err, jetstream.ErrKeyExists) {
			return n, fmt.Errorf("liveconfig: seed %s: %w", kv[0], err)
		}
	}
	return n, nil
}

// flatten lists the live keys of a file tree with their TOML text: leaf
// keys as dotted paths, [[domain]] blocks whole, [[site]] keys one by one.
func flatten(tree map[string]any) [][2]string {
	var out [][2]string
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			key := prefix + k
			switch t := v.(type) {
			case map[string]any:
				walk(key+".", t)
			case []map[string]any:
				for _, b := range t {
					name, _ := b["name"].(string)
					if name == "" {
						continue
					}
					switch key {
					case "domain":
						if s, err := inlineTable(b); err == nil {
							out = append(out, [2]string{"domain." + name, s})
						}
					case "site":
						for bk, bv := range b {
							if s, err := FormatValue(bv); err == nil && bk != "name" {
								out = append(out, [2]string{"site." + name + "." + bk, s})
							}
						}
					}
				}
			default:
				if s, err := FormatValue(v); err == nil {
					out = append(out, [2]string{key, s})
				}
			}
		}
	}
	walk("", tree)
	slices.SortFunc(out, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
	return out
}

// Watch calls apply with the effective configuration now and after every
// change, until ctx ends. A combination that does not validate (two
// changes of different keys at once) is reported to bad and skipped, the
// last good configuration staying in force.
func (s *Store) Watch(ctx context.Context, apply func(config.Config, map[string]Entry), bad func(error)) error {
	w, err := s.KV.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		return fmt.Errorf("liveconfig: watch: %w", err)
	}
	go func() {
		defer func() { _ = w.Stop() }()
		emit := func() {
			cfg, entries, err := s.Effective(ctx)
			if err != nil {
				if ctx.Err() == nil && bad != nil {
					bad(err)
				}
				return
			}
			apply(cfg, entries)
		}
		emit()
		for {
			select {
			case <-ctx.Done():
				return
			case u, ok := <-w.Updates():
				if !ok {
					return
				}
				if u == nil || u.Key() == baseKey {
					continue
				}
				emit()
			}
		}
	}()
	return nil
}

// Shadowed lists the live keys whose value differs from the one the
// configuration file gives them: after the first start the bucket wins,
// so an edit of the file does not apply until the key is unset (the
// process says so in its log, naming the key).
func (s *Store) Shadowed(ctx context.Context) ([]Entry, error) {
	var tree map[string]any
	if _, err := toml.Decode(s.Base, &tree); err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	entries, err := s.current(ctx)
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, kv := range flatten(tree) {
		e, ok := entries[kv[0]]
		if !ok || e.Unset {
			continue
		}
		v, err := ParseValue(e.Value)
		if err != nil {
			continue
		}
		if text, err := FormatValue(v); err == nil && text != kv[1] {
			out = append(out, e)
		}
	}
	return out, nil
}

// baseKey holds the configuration file text the running processes apply
// the live keys over (the last one started), outside the keys' namespace:
// `mailroot config set` without -config validates against it, so that a
// change is checked against the file in force, not the defaults.
const baseKey = "_base"

// PublishBase stores text as the running processes' base, if it differs.
func (s *Store) PublishBase(ctx context.Context, text string) error {
	if e, err := s.KV.Get(ctx, baseKey); err == nil && string(e.Value()) == text {
		return nil
	}
	if _, err := s.KV.Put(ctx, baseKey, []byte(text)); err != nil {
		return fmt.Errorf("liveconfig: store the base: %w", err)
	}
	return nil
}

// StoredBase is the base a running process published; false when none did.
func (s *Store) StoredBase(ctx context.Context) (string, bool, error) {
	e, err := s.KV.Get(ctx, baseKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("liveconfig: read the base: %w", err)
	}
	return string(e.Value()), true, nil
}
