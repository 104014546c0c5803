package node

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

var messageIDRe = regexp.MustCompile(`(?m)^Message-ID: <([^>]+)>`)

// A burst of files moved into Pickup at once is delivered exactly once
// each: checked by Message-ID at the remote MX.
func TestPickupBurst(t *testing.T) {
	n := 10000
	if testing.Short() {
		n = 1000
	}
	w := newWorld(t)
	cfg := testConfig(t, w, t.TempDir())
	cfg.Pickup.Interval = config.Duration(200 * time.Millisecond) // backstop scan; inotify does the rest
	cfg.Delivery.SmartHost = w.mx["remote.test"].Addr
	node := startNode(t, cfg)
	if err := os.MkdirAll(cfg.PickupDir(), 0o750); err != nil {
		t.Fatal(err)
	}
	staging := t.TempDir()
	// Write elsewhere, then rename in: the documented safe way.
	for i := range n {
		body := fmt.Sprintf("From: app@local.test\r\nTo: user%d@remote.test\r\nMessage-ID: <burst-%d@app.test>\r\nSubject: %d\r\n\r\nfile %d\r\n", i, i, i, i)
		if err := os.WriteFile(filepath.Join(staging, fmt.Sprintf("m%05d.eml", i)), []byte(body), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	sameFS := filepath.Join(cfg.DataDir, "staging")
	if err := os.Rename(staging, sameFS); err != nil {
		// t.TempDir may be on another file system: copy into one on ours.
		if err := os.MkdirAll(sameFS, 0o750); err != nil {
			t.Fatal(err)
		}
		entries, _ := os.ReadDir(staging)
		for _, e := range entries {
			b, _ := os.ReadFile(filepath.Join(staging, e.Name()))
			if err := os.WriteFile(filepath.Join(sameFS, e.Name()), b, 0o640); err != nil {
				t.Fatal(err)
			}
		}
	}
	start := time.Now()
	for i := range n {
		name := fmt.Sprintf("m%05d.eml", i)
		if err := os.Rename(filepath.Join(sameFS, name), filepath.Join(cfg.PickupDir(), name)); err != nil {
			t.Fatal(err)
		}
	}
	sink := w.mx["remote.test"]
	testutil.WaitFor(t, 5*time.Minute, fmt.Sprintf("%d burst messages delivered", n), func() bool { return sink.Count() >= n })
	t.Logf("%d files picked up and delivered in %v", n, time.Since(start))
	waitEmptyQueue(t, node)
	seen := make(map[string]int, n)
	for _, m := range sink.Mails() {
		id := messageIDRe.FindSubmatch(m.Data)
		if id == nil {
			t.Fatalf("delivered message without Message-ID:\n%s", m.Data)
		}
		seen[string(id[1])]++
	}
	for i := range n {
		if c := seen[fmt.Sprintf("burst-%d@app.test", i)]; c != 1 {
			t.Errorf("burst-%d delivered %d times", i, c)
		}
	}
	if sink.Count() != n {
		t.Errorf("%d deliveries for %d files", sink.Count(), n)
	}
	// A file is deleted after its PubAck, which races with the delivery of
	// its message: poll for the last deletions rather than look once.
	testutil.WaitFor(t, 10*time.Second, "Pickup and .work empty", func() bool {
		entries, _ := os.ReadDir(cfg.PickupDir())
		left, _ := os.ReadDir(filepath.Join(cfg.PickupDir(), ".work"))
		return len(entries) == 1 && entries[0].Name() == ".work" && len(left) == 0
	})
}
