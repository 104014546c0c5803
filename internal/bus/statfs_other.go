//go:build !unix

package bus

import "errors"

// Statfs is not available here: free space is not checked (the store's
// own limit still is).
func Statfs(dir string) (free, total int64, err error) {
	return 0, 0, errors.New("bus: statfs not supported on this system")
}
