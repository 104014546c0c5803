package dirlock

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func pidFile(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, Name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A held lock keeps every other open of the file out, in this process too
// (flock belongs to the open file, not the process), and says who holds
// it; released, it can be taken again.
func TestSecondAcquireIsBusy(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store") // created by Acquire
	l, err := Acquire(dir)
	if err != nil {
		t.Fatal(err)
	}
	self := strconv.Itoa(os.Getpid())
	if got := pidFile(t, dir); got != self+"\n" {
		t.Errorf("LOCK holds %q, want our pid %s", got, self)
	}
	_, err = Acquire(dir)
	var busy *BusyError
	if !errors.As(err, &busy) || busy.PID != os.Getpid() || busy.Path != filepath.Join(dir, Name) {
		t.Fatalf("second Acquire: %v, want a BusyError naming pid %s", err, self)
	}
	if !strings.Contains(err.Error(), "process "+self) {
		t.Errorf("message %q does not name the holder", err)
	}
	l.Release()
	l.Release()
	l2, err := Acquire(dir)
	if err != nil {
		t.Fatalf("Acquire after Release: %v", err)
	}
	l2.Release()
	var none *Lock
	none.Release()
}

// A LOCK file whose process is gone holds no flock: it is taken over and
// its stale pid replaced (a longer one leaves nothing behind).
func TestStaleFileIsTakenOver(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, Name), []byte("2147483646\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	l, err := Acquire(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	if got, want := pidFile(t, dir), strconv.Itoa(os.Getpid())+"\n"; got != want {
		t.Errorf("LOCK holds %q, want %q", got, want)
	}
}

// A directory that cannot be made fails with the system's error.
func TestUnusableDirectory(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	_, err := Acquire(filepath.Join(file, "store"))
	if !errors.Is(err, syscall.ENOTDIR) || !strings.Contains(err.Error(), file) {
		t.Errorf("Acquire under a file: %v, want ENOTDIR naming %s", err, file)
	}
}
