package liveconfig

import (
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

const base = `hostname = "mx.example.test"
local_domains = ["example.test"]

[ingress]
relay_networks = ["127.0.0.0/8"]
max_recipients = 50

[[domain]]
name = "remote.test"
type = "remote"
smart_host = "[127.0.0.1]:2526"

[[site]]
name = "mta"
listen = ["127.0.0.1:0"]
`

func TestApplyOverTheFile(t *testing.T) {
	cfg, err := Apply(base, map[string]string{
		"ingress.max_recipients":         "7",
		"local_domains":                  `["example.test", "other.test"]`,
		"default_domain":                 "other.test", // a bare string
		"domain.held.test":               `{type = "remote", hold = true}`,
		"domain.remote.test":             `{type = "remote", require_tls = true}`,
		"site.mta.max_message_size":      `1048576`,
		"delivery.connection_cache_time": `"5s"`,
		"dkim":                           `[{domain = "example.test", selector = "s2", key_file = "/keys/s2.key", headers = ["From", "Subject"]}]`,
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Ingress.MaxRecipients != 7 || !slices.Equal(cfg.LocalDomains, []string{"example.test", "other.test"}) || cfg.DefaultDomain != "other.test" {
		t.Fatalf("top-level keys not applied: %+v %v %q", cfg.Ingress.MaxRecipients, cfg.LocalDomains, cfg.DefaultDomain)
	}
	if d, ok := cfg.Domain("held.test"); !ok || !d.Hold {
		t.Fatalf("domain.held.test not added: %+v", d)
	}
	if d, _ := cfg.Domain("remote.test"); !d.RequireTLS || d.SmartHost != "" {
		t.Fatalf("domain.remote.test not replaced whole: %+v", d)
	}
	if len(cfg.Sites) != 1 || cfg.Sites[0].MaxMessageSize != 1<<20 {
		t.Fatalf("site.mta key not applied: %+v", cfg.Sites)
	}
	if cfg.Delivery.ConnectionCacheTime.D() != 5*time.Second || cfg.Hostname != "mx.example.test" {
		t.Fatalf("delivery/hostname: %v %q", cfg.Delivery.ConnectionCacheTime, cfg.Hostname)
	}
	if len(cfg.DKIM) != 1 || cfg.DKIM[0].Selector != "s2" || cfg.DKIM[0].KeyFile != "/keys/s2.key" || len(cfg.DKIM[0].Headers) != 2 {
		t.Fatalf("dkim blocks not applied: %+v", cfg.DKIM)
	}
}

func TestBadValuesAreRefusedNamingTheKey(t *testing.T) {
	n := testutil.StartNATS(t)
	_, js := n.Connect(t)
	s, err := Open(t.Context(), js, 1, base)
	if err != nil {
		t.Fatal(err)
	}
	for key, value := range map[string]string{
		"ingress.relay_networks": `["10.0.0.0/33"]`,
		"ingress.max_recipientz": `5`,
		"delivery.retry":         `["soon"]`,
		"nats.sync":              `"2m"`,
		"ingress.listen":         `["0.0.0.0:25"]`,
		"site.mta.listen":        `["0.0.0.0:25"]`,
		"site.nosuch.banner":     `"hi"`,
		"domain.x.test":          `"not a table"`,
		"hostname":               `"other"`,
		"dkim":                   `[{domain = "example.test", selector = "s2"}]`,
		"dkim.s2":                `{domain = "example.test", selector = "s2", key_file = "/k"}`,
	} {
		_, err := s.Set(t.Context(), key, value, false, "tester", "")
		var ke *config.KeyError
		if !errors.As(err, &ke) || ke.Key != key && !strings.Contains(err.Error(), key) {
			t.Errorf("set %s = %s: %v; want an error naming %s", key, value, err, key)
		}
	}
	if h, err := s.History(t.Context(), ""); err != nil || len(h) != 0 {
		t.Fatalf("refused changes were stored: %v, %v", h, err)
	}
}

// setup makes the streams every change's event goes to.
func setup(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	if _, err := bus.Setup(t.Context(), js, config.Default()); err != nil {
		t.Fatal(err)
	}
}

func TestSetHistoryRollback(t *testing.T) {
	n := testutil.StartNATS(t)
	_, js := n.Connect(t)
	ctx := t.Context()
	setup(t, js)
	s, err := Open(ctx, js, 1, base)
	if err != nil {
		t.Fatal(err)
	}
	if seeded, err := s.Seed(ctx, "node-1"); err != nil || seeded == 0 {
		t.Fatalf("seed: %d, %v", seeded, err)
	}
	// Seeding again (another process starting) stores nothing new.
	if again, err := s.Seed(ctx, "node-2"); err != nil || again != 0 {
		t.Fatalf("second seed: %d, %v", again, err)
	}
	r1, err := s.Set(ctx, "ingress.max_recipients", "10", false, "alice", "a partner sends to many")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Set(ctx, "ingress.max_recipients", "20", false, "bob", "more"); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := s.Effective(ctx)
	if err != nil || cfg.Ingress.MaxRecipients != 20 {
		t.Fatalf("effective: %d, %v", cfg.Ingress.MaxRecipients, err)
	}
	h, err := s.History(ctx, "ingress.max_recipients")
	if err != nil {
		t.Fatal(err)
	}
	var who []string
	for _, e := range h {
		who = append(who, e.Who+":"+e.Value+":"+e.Why)
	}
	want := []string{"node-1:50:seeded from the configuration file", "alice:10:a partner sends to many", "bob:20:more"}
	if !slices.Equal(who, want) {
		t.Fatalf("history %q, want %q", who, want)
	}
	if _, err := s.Rollback(ctx, "ingress.max_recipients", r1, "carol", ""); err != nil {
		t.Fatal(err)
	}
	cfg, entries, err := s.Effective(ctx)
	if err != nil || cfg.Ingress.MaxRecipients != 10 {
		t.Fatalf("after rollback: %d, %v", cfg.Ingress.MaxRecipients, err)
	}
	if e := entries["ingress.max_recipients"]; e.Who != "carol" || !strings.Contains(e.Why, "rollback") {
		t.Fatalf("rollback entry %+v", e)
	}
	// Unset returns to the file's value.
	if _, err := s.Set(ctx, "ingress.max_recipients", "", true, "dave", "back to the file"); err != nil {
		t.Fatal(err)
	}
	if cfg, _, _ = s.Effective(ctx); cfg.Ingress.MaxRecipients != 50 {
		t.Fatalf("after unset: %d, want the file's 50", cfg.Ingress.MaxRecipients)
	}
	// Every change is an event naming who made it, stored before Set
	// returned.
	var evs []string
	err = bus.ReadEvents(ctx, js, bus.EventFilter{Type: bus.EventConfig}, false, func(e bus.Event) error {
		evs = append(evs, e.Admin+":"+e.Key+"="+e.Value+":"+e.Reason)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	wantEv := []string{"alice:ingress.max_recipients=10:a partner sends to many", "bob:ingress.max_recipients=20:more",
		"carol:ingress.max_recipients=10:" + entries["ingress.max_recipients"].Why, "dave:ingress.max_recipients=:back to the file"}
	if !slices.Equal(evs, wantEv) {
		t.Fatalf("config events %q, want %q", evs, wantEv)
	}
}

// Two processes watching the bucket both see a change, within 2 s.
func TestTwoWatchersSeeAChange(t *testing.T) {
	n := testutil.StartNATS(t)
	ctx := t.Context()
	var seen [2]atomic.Int64
	for i := range 2 {
		_, js := n.Connect(t)
		s, err := Open(ctx, js, 1, base)
		if err != nil {
			t.Fatal(err)
		}
		err = s.Watch(ctx, func(c config.Config, _ map[string]Entry) { seen[i].Store(int64(c.Ingress.MaxRecipients)) }, func(err error) { t.Error(err) })
		if err != nil {
			t.Fatal(err)
		}
	}
	testutil.WaitFor(t, 5*time.Second, "the watchers' first configuration", func() bool {
		return seen[0].Load() == 50 && seen[1].Load() == 50
	})
	_, js := n.Connect(t)
	setup(t, js)
	admin, err := Open(ctx, js, 1, base)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := admin.Set(ctx, "ingress.max_recipients", "3", false, "admin", "test"); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, "both watchers to see the change", func() bool {
		return seen[0].Load() == 3 && seen[1].Load() == 3
	})
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("the change took %v to reach both processes, want within 2s", took)
	}
	t.Logf("change seen by both watchers in %v", time.Since(start))
}

func FuzzParseValue(f *testing.F) {
	for _, s := range []string{"true", `["a", "b"]`, `{type = "remote"}`, `[{domain = "a.test", selector = "s", headers = ["From"]}, {domain = "b.test"}]`, "example.com", `"10MB"`, "7", "a\nb", "[", "{x = }"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseValue(s)
		if err != nil {
			return
		}
		text, err := FormatValue(v)
		if err != nil {
			return // a value TOML cannot write back (e.g. mixed arrays)
		}
		v2, err := ParseValue(text)
		if err != nil {
			t.Fatalf("%q → %q does not parse back: %v", s, text, err)
		}
		t2, err := FormatValue(v2)
		if err != nil || t2 != text {
			t.Fatalf("%q → %q → %q, %v: not stable", s, text, t2, err)
		}
	})
}

// The base a running process publishes is what a tool without the file
// validates against, and it is not a key: not listed, not in history.
func TestPublishedBase(t *testing.T) {
	n := testutil.StartNATS(t)
	_, js := n.Connect(t)
	ctx := t.Context()
	setup(t, js)
	running, err := Open(ctx, js, 1, base)
	if err != nil {
		t.Fatal(err)
	}
	if err := running.PublishBase(ctx, base); err != nil {
		t.Fatal(err)
	}
	tool, err := Open(ctx, js, 1, "")
	if err != nil {
		t.Fatal(err)
	}
	// Without the file, the site "mta" is unknown to the tool.
	if _, err := tool.Set(ctx, "site.mta.banner", `"hello"`, false, "x", ""); err == nil {
		t.Fatal("set against the defaults accepted a key of a site they lack")
	}
	b, ok, err := tool.StoredBase(ctx)
	if err != nil || !ok || b != base {
		t.Fatalf("stored base: %v %v %q", ok, err, b)
	}
	tool.Base = b
	if _, err := tool.Set(ctx, "site.mta.banner", `"hello"`, false, "x", ""); err != nil {
		t.Fatalf("set against the published base: %v", err)
	}
	_, entries, err := tool.Overrides(ctx)
	if err != nil || len(entries) != 1 {
		t.Fatalf("entries %v %v", entries, err)
	}
	h, err := tool.History(ctx, "")
	if err != nil || len(h) != 1 {
		t.Fatalf("history %v %v", h, err)
	}
	if _, err := tool.Set(ctx, "_base", "x", false, "x", ""); err == nil {
		t.Fatal("_base accepted as a key")
	}
}
