package bus

import (
	"os"

	"golang.org/x/sys/unix"
)

// syncFS flushes the whole file system that f is on (syncfs(2)): one call
// covers every block, index and object file the server wrote.
func syncFS(f *os.File) error { return unix.Syncfs(int(f.Fd())) }

// fdatasync flushes f's data (and the metadata needed to read it back).
func fdatasync(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }

// fsyncDir makes a directory's entries durable.
func fsyncDir(d *os.File) error { return d.Sync() }

// HaveSyncFS says whether the group commit can run here; elsewhere the
// server fsyncs every write itself (SyncAlways).
const HaveSyncFS = true
