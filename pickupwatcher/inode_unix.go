//go:build unix

package pickupwatcher

import (
	"io/fs"
	"syscall"
)

// inode returns the file's inode number, part of its pickup identity.
func inode(info fs.FileInfo) uint64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Ino)
	}
	return 0
}
