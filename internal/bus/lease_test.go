package bus_test

import (
	"errors"
	"strings"
	"testing"

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
