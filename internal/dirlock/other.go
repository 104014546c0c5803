//go:build !(darwin || dragonfly || freebsd || linux || netbsd || openbsd || solaris)

package dirlock

import "os"

// lock is a no-op where flock(2) does not exist: the LOCK file still
// records the pid, but nothing keeps a second process out.
func lock(*os.File) error { return nil }
