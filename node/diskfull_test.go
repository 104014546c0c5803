package node

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

// smallDisk mounts a tmpfs of size bytes on a fresh directory and returns
// it. It needs root (CI runs as root); elsewhere the test is skipped.
func smallDisk(t *testing.T, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP: mounting a small file system for the disk-full test needs root")
	}
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+strconv.FormatInt(size, 10), "mailroot-test", dir).CombinedOutput()
	if err != nil {
		t.Skipf("SKIP: cannot mount a tmpfs for the disk-full test: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// fillDisk writes a file in dir until the file system is full, but for
// leave bytes, and returns its path.
func fillDisk(t *testing.T, dir string, leave int64) string {
	t.Helper()
	free, _, err := bus.Statfs(dir)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.CreateTemp(dir, "filler")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	path := f.Name()
	buf := make([]byte, 64<<10)
	for n := free - leave; n > 0; n -= int64(len(buf)) {
		if _, err := f.Write(buf[:min(int64(len(buf)), n)]); err != nil {
			break // full already: the store grew meanwhile
		}
	}
	return path
}

// diskFullNode runs a node whose data_dir is a 40 MiB file system,
// relaying to h.
func diskFullNode(t *testing.T, h *smartHost) (*Node, config.Config, string) {
	t.Helper()
	disk := smallDisk(t, 96<<20)
	w := newWorld(t)
	cfg := testConfig(t, w, filepath.Join(disk, "data"))
	cfg.Delivery.SmartHost = h.Addr
	cfg.Delivery.DelayNotice = 0
	return startNode(t, cfg), cfg, disk
}

// A full disk: new mail is refused at once (452 4.3.1) while the reserve is
// left; when the disk fills up all the same (another program), the store's
// write error is caught, new mail is still refused at once, and within
// seconds of space coming back intake resumes without a restart. Every
// mail that got a 250 is delivered.
func TestDiskFull(t *testing.T) {
	h := startSmartHost(t)
	h.down.Store(true)
	n, cfg, disk := diskFullNode(t, h)
	addr := n.Ingress.Addrs()[0]

	// Leave the reserve (bus.MinDiskReserve on this small disk) and
	// 8 MiB, then fill up to the reserve with mail.
	_, total, _ := bus.Statfs(disk)
	reserve := max(cfg.NATS.Reserve.Of(total), bus.MinDiskReserve)
	first := fillDisk(t, disk, reserve+8<<20)
	accepted := fill(t, addr, 32<<10, 1000)
	t.Logf("%d mails accepted before the 452", len(accepted))
	if free, _, _ := bus.Statfs(disk); free < reserve/2 {
		t.Errorf("%d bytes free at the first 452, want about the reserve of %d", free, reserve)
	}

	// Another program takes the rest: the retries the pipeline writes fail.
	second := fillDisk(t, disk, 0)
	storeWriteFails(t, n)
	refused(t, addr)

	// Space comes back: intake resumes by itself within 10 s.
	if err := os.Remove(second); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(first); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	testutil.WaitFor(t, 10*time.Second, "new mail accepted after space came back", func() bool {
		qid, err := submitFrom(addr, "", "sender@local.test", []string{"rcpt@remote.test"}, "Subject: again\r\n\r\nx\r\n")
		if err == nil {
			accepted = append(accepted, qid)
		}
		return err == nil
	})
	t.Logf("intake resumed %v after space came back", time.Since(freed).Round(time.Millisecond))
	// The guard clears the fault before JetStream is enabled again, and
	// streams take mail as they come back, so the first 250 can come a
	// moment before the reopen is counted.
	testutil.WaitFor(t, 10*time.Second, "the store reopened", func() bool { return n.Guard.Restarts() > 0 })

	h.down.Store(false)
	allDelivered(t, h, cfg, accepted)
}

// refused checks that new mail gets 452 4.3.1, at MAIL FROM.
func refused(t *testing.T, addr string) {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	err = c.Mail("sender@local.test", nil)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 452 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 1}) {
		t.Fatalf("MAIL FROM on a full disk: %v, want 452 4.3.1", err)
	}
}

// Shutdown on a full disk completes within the grace period.
func TestDiskFullShutdown(t *testing.T) {
	h := startSmartHost(t)
	h.down.Store(true)
	n, _, disk := diskFullNode(t, h)
	addr := n.Ingress.Addrs()[0]
	fillDisk(t, disk, bus.MinDiskReserve+4<<20)
	fill(t, addr, 32<<10, 1000)
	fillDisk(t, disk, 0)
	storeWriteFails(t, n)

	done := make(chan struct{})
	start := time.Now()
	go func() { n.Stop(); close(done) }()
	select {
	case <-done:
		t.Logf("stopped in %v", time.Since(start).Round(time.Millisecond))
	case <-time.After(ShutdownGrace + 15*time.Second):
		t.Fatalf("Stop on a full disk still running after %v", time.Since(start))
	}
}

// storeWriteFails waits for the store guard to catch a write error on the
// full disk. Mail is refused before it reaches the store (the reserve),
// and the leases live in memory, so what writes is the events of the
// attempts, when there are any: a large event stands for the next of
// them.
func storeWriteFails(t *testing.T, n *Node) {
	t.Helper()
	big := bytes.Repeat([]byte("x"), 512<<10)
	testutil.WaitFor(t, 30*time.Second, "the store's write error caught", func() bool {
		if n.Guard.Err() != nil {
			return true
		}
		_ = n.Conn.Publish(bus.EventSubject("test", ""), big)
		return false
	})
}
