//go:build unix

package badfile

import (
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// mknod makes at path a FIFO, socket or device node like the one info
// describes.
func mknod(path string, info fs.FileInfo) error {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("badfile: cannot copy %s: no file type", path)
	}
	if err := unix.Mknod(path, uint32(st.Mode), int(st.Rdev)); err != nil {
		return &os.PathError{Op: "mknod", Path: path, Err: err}
	}
	return nil
}

// openNoBlock opens path for reading without following a symbolic link
// and without blocking should it have become a FIFO.
func openNoBlock(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
}
