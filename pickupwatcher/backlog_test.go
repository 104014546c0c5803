package pickupwatcher

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailroot/mailroot/internal/metrics"
	mrtest "github.com/mailroot/mailroot/internal/testutil"
)

// The backlog is the files waiting in Pickup/ and .work/, hidden names
// aside; the gauge reads it at scrape time and goes to 0 once the
// watcher has queued them.
func TestBacklogGauge(t *testing.T) {
	h := newHarness(t, 10*time.Millisecond)
	svc, err := New(h.cfg, mrtest.Discard(), h.js)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a.eml", "b.eml"} {
		h.drop(t, name, "From: s@example.org\nTo: r@example.org\n\nhi\n")
	}
	if err := os.WriteFile(filepath.Join(h.dir, ".partial"), []byte("x"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.dir, WorkDir, "c.eml"), []byte("From: s@example.org\nTo: r@example.org\n\nhi\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if n := svc.Backlog(); n != 3 {
		t.Fatalf("backlog %d, want 3 (two in Pickup/, one in .work/)", n)
	}
	m := metrics.New()
	svc.Metrics = m
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	defer func() { cancel(); <-done }()
	gauge := func() float64 {
		fams, err := m.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fams {
			if f.GetName() == "mailroot_pickup_files" {
				return f.GetMetric()[0].GetGauge().GetValue()
			}
		}
		return -1
	}
	mrtest.WaitFor(t, 20*time.Second, "the backlog queued", func() bool { return gauge() == 0 })
	h.waitQueued(t, 3)
	if n, err := testutil.GatherAndCount(m.Registry, "mailroot_pickup_files"); err != nil || n != 1 {
		t.Errorf("pickup files series %d (%v)", n, err)
	}
}
