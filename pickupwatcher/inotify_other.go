//go:build !linux

package pickupwatcher

import (
	"context"
	"errors"
)

// watchDir has no event source on this system: the periodic scan finds
// every file, and files are taken once stable.
func watchDir(ctx context.Context, dir string, moved func(name string), activity func()) error {
	return errors.New("no directory events on this system: scanning only")
}
