package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/testutil"
)

// writeAllConfig writes, at path, a configuration for `mailroot all` on
// dataDir with SMTP on 127.0.0.1:port and local.test delivered to Drop/,
// followed by extra.
func writeAllConfig(t *testing.T, path, dataDir string, port int, extra string) string {
	t.Helper()
	cfg := fmt.Sprintf("hostname = \"mailroot.test\"\ndata_dir = %q\nlocal_domains = [\"local.test\"]\n[metrics]\nlisten = \"127.0.0.1:0\"\n[ingress]\nlisten = [\"127.0.0.1:%d\"]\n%s", dataDir, port, extra)
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// sendLocal waits for an SMTP server on 127.0.0.1:port and sends it one
// message for u@local.test.
func sendLocal(t *testing.T, port int) {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	var c *smtp.Client
	testutil.WaitFor(t, 30*time.Second, "SMTP on "+addr, func() bool {
		var err error
		c, err = smtp.Dial(addr)
		return err == nil
	})
	defer c.Close()
	if err := c.SendMail("s@local.test", []string{"u@local.test"}, strings.NewReader("Subject: lock\r\n\r\nhello\r\n")); err != nil {
		t.Fatal(err)
	}
}

// waitDropFiles waits until Drop/local.test under dataDir holds n files.
func waitDropFiles(t *testing.T, dataDir string, n int) {
	t.Helper()
	testutil.WaitFor(t, 30*time.Second, fmt.Sprintf("%d files in Drop/local.test", n), func() bool {
		entries, _ := os.ReadDir(filepath.Join(dataDir, "Drop", "local.test"))
		return len(entries) == n
	})
}

// runToExit runs cmd to its end and returns its output and exit status. A
// process still running after timeout is killed and fails the test.
func runToExit(t *testing.T, timeout time.Duration, cmd *exec.Cmd) (string, int) {
	t.Helper()
	buf := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%v still running after %v:\n%s", cmd.Args, timeout, buf)
	}
	t.Logf("%v: exit status %d after %v", cmd.Args[1:], cmd.ProcessState.ExitCode(), time.Since(start).Round(time.Millisecond))
	return buf.String(), cmd.ProcessState.ExitCode()
}

// A second `mailroot all` (here `mailroot` without a command, which is the
// same) on a data_dir in use exits 1 at once naming the first one's pid,
// before it opens the store or a port; the first goes on accepting and
// delivering.
func TestSecondInstanceOnDataDirExits(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	port1, port2 := freePort(t), freePort(t)
	first := startProcess(t, "first mailroot all", 30*time.Second, bin, "all", "-config", writeAllConfig(t, filepath.Join(dir, "first.toml"), data, port1, ""))
	sendLocal(t, port1) // the first one is up: it holds the lock
	waitDropFiles(t, data, 1)

	out, code := runToExit(t, 10*time.Second, exec.Command(bin, "-config", writeAllConfig(t, filepath.Join(dir, "second.toml"), data, port2, "")))
	if want := fmt.Sprintf("data_dir %s is in use by process %d", data, first.Process.Pid); code != 1 || !strings.Contains(out, want) {
		t.Fatalf("second instance: exit status %d, want 1 with %q:\n%s", code, want, out)
	}
	if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port2)); err == nil {
		c.Close()
		t.Errorf("something listens on the second instance's port")
	}

	sendLocal(t, port1)
	waitDropFiles(t, data, 2)
}

// A LOCK file left by a killed `mailroot all` holds no lock (the kernel
// dropped it with the process): the next start takes it over and works.
func TestStaleLockFileDoesNotBlockRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	port := freePort(t)
	cfg := writeAllConfig(t, filepath.Join(dir, "mailroot.toml"), data, port, "")
	lockFile := filepath.Join(data, "nats", "LOCK")

	killed := exec.Command(bin, "all", "-config", cfg)
	if err := killed.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = killed.Process.Kill(); _ = killed.Wait() })
	sendLocal(t, port)
	waitDropFiles(t, data, 1)
	if err := killed.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = killed.Wait()
	if b, err := os.ReadFile(lockFile); err != nil || string(b) != strconv.Itoa(killed.Process.Pid)+"\n" {
		t.Fatalf("after kill -9, %s holds %q (%v), want the killed pid %d", lockFile, b, err, killed.Process.Pid)
	}

	restarted := startProcess(t, "restarted mailroot all", 30*time.Second, bin, "all", "-config", cfg)
	sendLocal(t, port)
	waitDropFiles(t, data, 2)
	if b, _ := os.ReadFile(lockFile); string(b) != strconv.Itoa(restarted.Process.Pid)+"\n" {
		t.Errorf("%s holds %q, want the new pid %d", lockFile, b, restarted.Process.Pid)
	}
}

// A start that cannot open its store or its NATS listen address exits 1
// at once with the system's own error, not after a 30 s wait with
// "embedded server not ready".
func TestStartFailuresExit1WithTheCause(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)

	t.Run("store permission denied", func(t *testing.T) {
		// Root ignores directory permissions, so the child runs as nobody.
		// Its binary and configuration must be reachable for nobody: not
		// under t.TempDir, which is 0700.
		base, err := os.MkdirTemp("", "mailroot-perm-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(base) })
		if err := os.Chmod(base, 0o755); err != nil {
			t.Fatal(err)
		}
		data := filepath.Join(base, "data")
		mode := os.FileMode(0o700) // root's own, closed to nobody
		if os.Geteuid() != 0 {
			mode = 0o500 // ours, not writable
		}
		if err := os.Mkdir(data, mode); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(copyFile(t, bin, filepath.Join(base, "mailroot"), 0o755), "all", "-config", writeAllConfig(t, filepath.Join(base, "mailroot.toml"), data, freePort(t), ""))
		if os.Geteuid() == 0 {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		}
		out, code := runToExit(t, 10*time.Second, cmd)
		if want := filepath.Join(data, "nats") + ": permission denied"; code != 1 || !strings.Contains(out, want) {
			t.Errorf("exit status %d, want 1 with %q:\n%s", code, want, out)
		}
	})

	t.Run("store is a file", func(t *testing.T) {
		dir := t.TempDir()
		data := filepath.Join(dir, "data")
		if err := os.MkdirAll(data, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(data, "nats"), nil, 0o640); err != nil {
			t.Fatal(err)
		}
		out, code := runToExit(t, 10*time.Second, exec.Command(bin, "all", "-config", writeAllConfig(t, filepath.Join(dir, "mailroot.toml"), data, freePort(t), "")))
		if want := filepath.Join(data, "nats") + ": not a directory"; code != 1 || !strings.Contains(out, want) {
			t.Errorf("exit status %d, want 1 with %q:\n%s", code, want, out)
		}
	})

	t.Run("nats.listen in use", func(t *testing.T) {
		busy, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		dir := t.TempDir()
		cfg := writeAllConfig(t, filepath.Join(dir, "mailroot.toml"), filepath.Join(dir, "data"), freePort(t), fmt.Sprintf("[nats]\nlisten = %q\n", busy.Addr()))
		out, code := runToExit(t, 10*time.Second, exec.Command(bin, "all", "-config", cfg))
		if code != 1 || !strings.Contains(out, busy.Addr().String()) || !strings.Contains(out, "address already in use") {
			t.Errorf("exit status %d, want 1 saying %s: address already in use:\n%s", code, busy.Addr(), out)
		}
		if strings.Contains(out, "not ready") {
			t.Errorf("reported as a timeout:\n%s", out)
		}
	})
}

// copyFile copies src to dst with mode perm and returns dst.
func copyFile(t *testing.T, src, dst string, perm os.FileMode) string {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}
