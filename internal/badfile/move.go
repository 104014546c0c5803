package badfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// moveObject moves the object at src to dst in dir without replacing
// anything, whatever its kind. Within one file system it is
// MoveNoReplace. Across file systems (Pickup and Badmail are separate
// volumes in the compose deployment) it does what mv(1) does: it copies
// the object, of the same kind, to a temp name in dir, gives the copy its
// final name once it is whole, and then removes src. Only a complete copy
// ever has the name dst.
func moveObject(dir, src, dst string) error {
	err := MoveNoReplace(src, dst)
	if !errors.Is(err, syscall.EXDEV) {
		return err
	}
	tmp := tempPath(dir, ExtBAD)
	if err := copyObject(src, tmp); err != nil {
		_ = os.RemoveAll(tmp)
		return err
	}
	if err := MoveNoReplace(tmp, dst); err != nil {
		_ = os.RemoveAll(tmp)
		return err
	}
	if err := SyncDir(dir); err != nil {
		return err
	}
	if err := os.RemoveAll(src); err != nil {
		return fmt.Errorf("badfile: remove %s after copying it: %w", src, err)
	}
	return nil
}

// copyObject makes dst a copy of the object at src: a symbolic link with
// the same target (never followed), a directory with its contents copied
// the same way, a regular file with its bytes, a FIFO, socket or device
// node of the same mode. Only regular files are opened, without blocking.
func copyObject(src, dst string) error {
	info, err := os.Lstat(src)
	if err != nil {
		return err
	}
	mode := info.Mode()
	switch {
	case mode&fs.ModeSymlink != 0:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		return os.Symlink(target, dst)
	case mode.IsDir():
		entries, err := os.ReadDir(src)
		if err != nil {
			return err
		}
		if err := os.Mkdir(dst, mode.Perm()|0o700); err != nil {
			return err
		}
		for _, e := range entries {
			if err := copyObject(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
				return err
			}
		}
		if err := SyncDir(dst); err != nil {
			return err
		}
		return os.Chmod(dst, mode.Perm())
	case mode.IsRegular():
		return copyFile(src, dst, mode.Perm())
	default:
		return mknod(dst, info)
	}
}

// copyFile copies the regular file src to a new file dst and fsyncs it.
func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := openNoBlock(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if st, err := in.Stat(); err != nil || !st.Mode().IsRegular() {
		return fmt.Errorf("badfile: %s is no longer a regular file", src)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
