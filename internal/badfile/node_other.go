//go:build !unix

package badfile

import (
	"fmt"
	"io/fs"
	"os"
)

// mknod cannot copy special files where there are none to copy.
func mknod(path string, info fs.FileInfo) error {
	return fmt.Errorf("badfile: cannot copy %s (%s) to another file system", path, info.Mode().Type())
}

// openNoBlock opens path for reading.
func openNoBlock(path string) (*os.File, error) { return os.Open(path) }
