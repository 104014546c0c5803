package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/mailroot/mailroot/internal/testutil"
)

var killMsgID = regexp.MustCompile(`(?m)^Message-ID: <([^>]+)>`)

// The pickupwatcher process is killed with SIGKILL at random moments while a
// burst of files arrives, and restarted: every file is delivered, none
// twice (checked by Message-ID at the remote MX).
func TestPickupSurvivesKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	const files, kills = 1500, 5
	bin := buildBinary(t)
	n := testutil.StartNATS(t)
	sink := testutil.StartSink(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "mailroot.toml")
	cfg := fmt.Sprintf(`hostname = "mailroot.test"
data_dir = %q
local_domains = ["local.test"]
log_level = "warn"
[ingress]
listen = ["127.0.0.1:%d"]
[delivery]
smart_host = %q
[pickup]
interval = "100ms"
stable_for = "200ms"
`, filepath.Join(dir, "data"), freePort(t), sink.Addr)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	start := func(actor string) *exec.Cmd {
		cmd := exec.Command(bin, actor, "-config", cfgPath, "-nats", n.URL())
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	stopAll := []*exec.Cmd{start("router"), start("delivery")}
	t.Cleanup(func() {
		for _, c := range stopAll {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	})
	pickup := filepath.Join(dir, "data", "Pickup")
	staging := filepath.Join(dir, "data", "staging")
	if err := os.MkdirAll(staging, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(pickup, 0o750); err != nil {
		t.Fatal(err)
	}
	// Files arrive over about two seconds while the watcher is killed and
	// restarted at random moments.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range files {
			name := fmt.Sprintf("k%05d.eml", i)
			body := fmt.Sprintf("From: cron@local.test\r\nTo: r%d@remote.test\r\nMessage-ID: <kill-%d@app.test>\r\nSubject: %d\r\n\r\nbody\r\n", i, i, i)
			tmp := filepath.Join(staging, name)
			if err := os.WriteFile(tmp, []byte(body), 0o640); err != nil {
				t.Error(err)
				return
			}
			if err := os.Rename(tmp, filepath.Join(pickup, name)); err != nil {
				t.Error(err)
				return
			}
			if i%100 == 0 {
				time.Sleep(100 * time.Millisecond) // a burst that lasts a while
			}
		}
	}()
	w := start("pickupwatcher")
	for k := range kills {
		time.Sleep(time.Duration(100+rand.IntN(400)) * time.Millisecond) // a random moment
		_ = w.Process.Signal(syscall.SIGKILL)
		_ = w.Wait()
		t.Logf("kill %d: %d delivered so far", k+1, sink.Count())
		w = start("pickupwatcher")
	}
	stopAll = append(stopAll, w)
	<-done
	testutil.WaitFor(t, 2*time.Minute, "every file delivered", func() bool { return sink.Count() >= files })
	// Everything handled: no file waits to be (re)sent.
	testutil.WaitFor(t, 30*time.Second, "Pickup and .work empty", func() bool {
		a, _ := os.ReadDir(pickup)
		b, _ := os.ReadDir(filepath.Join(pickup, ".work"))
		return len(a) == 1 && len(b) == 0
	})
	seen := map[string]int{}
	for _, m := range sink.Mails() {
		if id := killMsgID.FindSubmatch(m.Data); id != nil {
			seen[string(id[1])]++
		}
	}
	dups := 0
	for i := range files {
		switch c := seen[fmt.Sprintf("kill-%d@app.test", i)]; {
		case c == 0:
			t.Errorf("kill-%d never delivered", i)
		case c > 1:
			dups += c - 1
		}
	}
	if dups > 0 {
		t.Errorf("%d duplicate deliveries after %d kills", dups, kills)
	}
	t.Logf("%d files, %d kills -9: %d delivered, %d duplicates", files, kills, sink.Count(), dups)
}
