//go:build darwin || dragonfly || freebsd || linux || netbsd || openbsd || solaris

package users

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// lockFile takes an exclusive flock on the file at path (created 0600),
// polling until wait has passed, and returns its release.
func lockFile(path string, wait time.Duration) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(wait)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		switch {
		case err == nil:
			return func() { _ = f.Close() }, nil // closing drops the flock
		case errors.Is(err, unix.EINTR):
			continue
		case !errors.Is(err, unix.EWOULDBLOCK):
			_ = f.Close()
			return nil, err
		case time.Now().After(deadline):
			_ = f.Close()
			return nil, fmt.Errorf("another edit of the users file holds the lock for more than %v", wait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
