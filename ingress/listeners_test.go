package ingress

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

// Every ingress announces its sites' bound addresses (and, for a site on
// all addresses, the machine's interface addresses) in mta-listeners under
// its node name, with a TTL, and takes the entry back when it stops.
func TestListenersAnnounced(t *testing.T) {
	n := testutil.StartNATS(t)
	_, js := n.Connect(t)
	cfg := config.Default()
	cfg.Hostname = "mx.local.test"
	cfg.DataDir = t.TempDir()
	mta := cfg.SiteOf(config.KindMTA)
	mta.Listen = []string{"127.0.0.1:0"}
	sub := cfg.SiteOf(config.KindSubmission)
	sub.Listen, sub.Hostname = []string{"0.0.0.0:0"}, "smtp.local.test"
	cfg.Sites = []config.Site{mta, sub}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	svc, err := New(cfg, testutil.Logger(t), js)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = svc.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-svc.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("ingress not ready")
	}

	kv, err := js.KeyValue(t.Context(), bus.BucketListeners)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.Keys(t.Context())
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys %v (%v), want one", keys, err)
	}
	e, err := kv.Get(t.Context(), keys[0])
	if err != nil {
		t.Fatal(err)
	}
	var info bus.ListenerInfo
	if err := json.Unmarshal(e.Value(), &info); err != nil {
		t.Fatal(err)
	}
	want := []bus.ListenerSite{
		{Name: "mta", Hostname: "mx.local.test", Addrs: svc.SiteAddrs("mta")},
		{Name: "submission", Hostname: "smtp.local.test", Addrs: svc.SiteAddrs("submission")},
	}
	if info.Node != keys[0] || info.Hostname != "mx.local.test" || info.Machine == "" ||
		!slices.EqualFunc(info.Sites, want, func(a, b bus.ListenerSite) bool {
			return a.Name == b.Name && a.Hostname == b.Hostname && slices.Equal(a.Addrs, b.Addrs)
		}) {
		t.Errorf("announced %+v, want node %s and sites %+v", info, keys[0], want)
	}
	if !slices.Contains(info.Interfaces, "127.0.0.1") {
		t.Errorf("interfaces %v lack 127.0.0.1, though a site listens on all addresses", info.Interfaces)
	}
	// The entry has a TTL: the server removes it if it is not rewritten.
	st, err := js.Stream(t.Context(), "KV_"+bus.BucketListeners)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := st.GetLastMsgForSubject(t.Context(), "$KV."+bus.BucketListeners+"."+keys[0])
	if err != nil {
		t.Fatal(err)
	}
	if ttl := raw.Header.Get(jetstream.MsgTTLHeader); ttl != "1m30s" && ttl != "90s" {
		t.Errorf("entry TTL %q, want bus.ListenersTTL", ttl)
	}

	cancel()
	<-done
	e, err = kv.Get(t.Context(), keys[0])
	if err == nil && len(e.Value()) != 0 {
		t.Errorf("entry still announced after stop: %s", e.Value())
	} else if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatal(err)
	}
}
