//go:build linux

package pickupwatcher

import (
	"context"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// watchDir reports activity in dir through inotify until ctx is done:
// moved is called with the name of each file renamed into dir (complete,
// by the safe-write convention), and activity after each batch of events
// (a file created, closed after writing, or an event queue overflow, after
// which only a full scan can tell what happened).
func watchDir(ctx context.Context, dir string, moved func(name string), activity func()) error {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return fmt.Errorf("inotify: %w", err)
	}
	// A non-blocking descriptor goes to Go's poller: Read blocks the
	// goroutine only, and Close wakes it.
	f := os.NewFile(uintptr(fd), "inotify")
	defer f.Close()
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE|unix.IN_CREATE); err != nil {
		return fmt.Errorf("inotify watch %s: %w", dir, err)
	}
	go func() {
		<-ctx.Done()
		_ = f.Close()
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := f.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("inotify read: %w", err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := ""
			if ev.Len > 0 {
				raw := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
				for i, c := range raw {
					if c == 0 {
						raw = raw[:i]
						break
					}
				}
				name = string(raw)
			}
			if ev.Mask&unix.IN_MOVED_TO != 0 && name != "" {
				moved(name)
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
		activity()
	}
}
