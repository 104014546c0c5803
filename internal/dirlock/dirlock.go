// Package dirlock keeps a directory to one process at a time: an exclusive
// flock(2) on a file named LOCK in it, which also holds the owner's pid
// for the message a second process prints. The kernel drops the lock when
// the process ends, however it ends, so a LOCK file left behind by a
// killed process does not block the next start. The file is never
// removed: removing it would let two processes lock two different files.
package dirlock

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// Name is the lock file's name in the locked directory.
const Name = "LOCK"

// BusyError says another process holds the lock.
type BusyError struct {
	// Path is the lock file.
	Path string
	// PID is the holder's process id, 0 when it has not written it yet.
	PID int
}

func (e *BusyError) Error() string {
	if e.PID > 0 {
		return fmt.Sprintf("%s is held by process %d", e.Path, e.PID)
	}
	return fmt.Sprintf("%s is held by another process", e.Path)
}

// Lock is a held lock.
type Lock struct{ f *os.File }

// errBusy is what lock returns when another open file holds the lock.
var errBusy = errors.New("held by another process")

// Acquire creates dir if needed and takes its lock without waiting: a
// *BusyError if another process (or another Acquire in this one) has it.
// Creating the directory and the file first also makes an unusable
// directory fail here, with the system's own error naming the path.
func Acquire(dir string) (*Lock, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, Name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, err
	}
	if err := lock(f); err != nil {
		_ = f.Close()
		if errors.Is(err, errBusy) {
			return nil, &BusyError{Path: path, PID: readPID(path)}
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	// One write, then the truncate: a reader meanwhile sees this pid on
	// the first line, at worst followed by the rest of a longer stale one.
	pid := []byte(strconv.Itoa(os.Getpid()) + "\n")
	if _, err := f.WriteAt(pid, 0); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Truncate(int64(len(pid))); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	return &Lock{f: f}, nil
}

// Release gives the lock up. It is safe on a nil Lock and more than once.
func (l *Lock) Release() {
	if l == nil || l.f == nil {
		return
	}
	_ = l.f.Close() // closing the last descriptor drops the flock
	l.f = nil
}

// readPID returns the pid on the first line of the lock file, 0 if none.
func readPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	pid, err := strconv.Atoi(string(line))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}
