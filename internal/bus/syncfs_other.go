//go:build !linux

package bus

import (
	"errors"
	"os"
)

func syncFS(*os.File) error { return errors.ErrUnsupported }

func fdatasync(f *os.File) error { return f.Sync() }

func fsyncDir(d *os.File) error { return d.Sync() }

// HaveSyncFS says whether the group commit can run here; elsewhere the
// server fsyncs every write itself (SyncAlways).
const HaveSyncFS = false
