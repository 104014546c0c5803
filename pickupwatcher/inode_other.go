//go:build !unix

package pickupwatcher

import "io/fs"

// inode returns 0 where the platform has no inode numbers; the name, size,
// mtime and content still identify the file.
func inode(fs.FileInfo) uint64 { return 0 }
