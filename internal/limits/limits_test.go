package limits

import (
	"testing"
	"time"

	"github.com/mailroot/mailroot/internal/testutil"
)

// Slots are exclusive; released, a slot is free again; the slot of a
// worker that died (no renewal, no release) frees itself within the TTL.
func TestSlots(t *testing.T) {
	ns := testutil.StartNATS(t)
	_, js := ns.Connect(t)
	ctx := t.Context()
	l, err := open(ctx, js, 1, "w1", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.TryConn(ctx, "d_test", 1)
	if err != nil || s == nil {
		t.Fatalf("first slot: %v %v", s, err)
	}
	if s2, err := l.TryConn(ctx, "d_test", 1); err != nil || s2 != nil {
		t.Fatalf("a second slot of one: %v %v", s2, err)
	}
	s.Release()
	dead, err := l.TryConn(ctx, "d_test", 1)
	if err != nil || dead == nil {
		t.Fatalf("after release: %v %v", dead, err)
	}
	close(dead.stop) // the worker dies: no renewal, no release
	t0 := time.Now()
	testutil.WaitFor(t, 10*time.Second, "the dead worker's slot to age out", func() bool {
		s, err := l.TryConn(ctx, "d_test", 1)
		if s != nil {
			s.Release()
		}
		return err == nil && s != nil
	})
	if took := time.Since(t0); took < 500*time.Millisecond {
		t.Fatalf("the slot came free after %v, before its TTL", took)
	}
}

// A held slot is renewed: it outlives its TTL while held.
func TestSlotRenewed(t *testing.T) {
	ns := testutil.StartNATS(t)
	_, js := ns.Connect(t)
	ctx := t.Context()
	l, err := open(ctx, js, 1, "w1", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.TryConn(ctx, "r_test", 1)
	if err != nil || s == nil {
		t.Fatal(err)
	}
	defer s.Release()
	deadline := time.Now().Add(2500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if other, err := l.TryConn(ctx, "r_test", 1); err != nil || other != nil {
			t.Fatalf("the held slot was taken: %v %v", other, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
