package bus_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/testutil"
)

// A lease is exclusive; released it is free; left as the tombstone of a
// removal it refuses only the holder of the removed message's sequence
// (ErrRemoved), and anyone else takes it over.
func TestLease(t *testing.T) {
	_, js := testutil.StartNATS(t).Connect(t)
	ctx := t.Context()
	if _, err := bus.EnsureSessions(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	key := bus.LeaseKey("Q1", "example_com")
	a, err := bus.TakeLease(ctx, js, key, "delivery one", 7)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bus.TakeLease(ctx, js, key, "admin", 0); !errors.Is(err, bus.ErrLocked) || !strings.Contains(err.Error(), "delivery one") {
		t.Fatalf("second take: %v, want ErrLocked naming the holder", err)
	}
	a.Release(ctx)
	b, err := bus.TakeLease(ctx, js, key, "admin", 0)
	if err != nil {
		t.Fatalf("take after release: %v", err)
	}
	b.Tombstone(ctx, 7, "alice")
	if _, err := bus.TakeLease(ctx, js, key, "delivery two", 7); !errors.Is(err, bus.ErrRemoved) {
		t.Fatalf("take by the holder of the removed message: %v, want ErrRemoved", err)
	}
	c, err := bus.TakeLease(ctx, js, key, "delivery three", 9)
	if err != nil {
		t.Fatalf("take for another copy over the tombstone: %v", err)
	}
	if owner := bus.LeaseOwner(ctx, js, key); owner != "delivery three" {
		t.Fatalf("owner %q", owner)
	}
	c.Release(ctx)
}

// The lease of a delivery worker that died with the message is taken
// over by the worker the message is redelivered to; an administrator
// still waits for it.
func TestLeaseOfADeadDeliveryWorker(t *testing.T) {
	_, js := testutil.StartNATS(t).Connect(t)
	ctx := t.Context()
	if _, err := bus.EnsureSessions(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	key := bus.LeaseKey("Q2", "example_com")
	if _, err := bus.TakeLease(ctx, js, key, bus.LeaseHolder("delivery"), 7); err != nil {
		t.Fatal(err)
	} // never released: its worker died
	if _, err := bus.TakeLease(ctx, js, key, bus.LeaseHolder("admin alice"), 0); !errors.Is(err, bus.ErrLocked) {
		t.Fatalf("admin: %v, want ErrLocked", err)
	}
	l, err := bus.TakeLease(ctx, js, key, bus.LeaseHolder("delivery"), 7)
	if err != nil {
		t.Fatalf("the redelivered message's worker: %v", err)
	}
	l.Release(ctx)
}

// The mta-sessions bucket is in memory, so a server restart or the store
// guard's reopen of JetStream forgets it: the next lease makes it again,
// with the MAIL stream's replicas, instead of failing every attempt.
func TestLeaseRecreatesAForgottenBucket(t *testing.T) {
	_, js := testutil.StartNATS(t).Connect(t)
	ctx := t.Context()
	if err := bus.EnsureStream(ctx, js, bus.Layout{Replicas: 1, BodyTTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.EnsureSessions(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteKeyValue(ctx, bus.BucketSessions); err != nil {
		t.Fatal(err)
	}
	l, err := bus.TakeLease(ctx, js, bus.LeaseKey("Q1", "example_com"), "delivery one", 3)
	if err != nil {
		t.Fatalf("lease with the bucket gone: %v", err)
	}
	defer l.Release(ctx)
	if owner := bus.LeaseOwner(ctx, js, bus.LeaseKey("Q1", "example_com")); owner != "delivery one" {
		t.Fatalf("owner %q after the bucket was made again", owner)
	}
	kv, err := js.KeyValue(ctx, bus.BucketSessions)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config; cfg.Storage != jetstream.MemoryStorage || cfg.Replicas != 1 {
		t.Fatalf("recreated bucket: storage %v, %d replicas", cfg.Storage, cfg.Replicas)
	}
}
