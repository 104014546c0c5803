//go:build unix

package pickupwatcher

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mailroot/mailroot/internal/badfile"
)

const validMessage = "From: a@example.com\nTo: b@example.net\n\nx\n"

// Anything in Pickup/ that is not a regular file is moved to Badmail once,
// as it is, with its reason, and logged once: a symlink is moved, not
// followed (its target, a valid message, is never sent), a FIFO is never
// opened (opening it for reading would block the watcher, and the test
// with it), a directory goes whole.
func TestNotRegularGoesToBadmail(t *testing.T) {
	for _, tc := range []struct {
		kind, reason string
		make         func(t *testing.T, path string)
		check        func(t *testing.T, bad string)
	}{
		{
			kind:   "symlink",
			reason: `it is a symbolic link to "`,
			make: func(t *testing.T, path string) {
				target := filepath.Join(t.TempDir(), "message.eml")
				if err := os.WriteFile(target, []byte(validMessage), 0o640); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(target, path); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T, bad string) {
				target, err := os.Readlink(bad)
				if err != nil {
					t.Fatalf(".BAD is not the link: %v", err)
				}
				if got, err := os.ReadFile(target); err != nil || string(got) != validMessage {
					t.Errorf("link target changed: %q %v", got, err)
				}
			},
		},
		{
			kind:   "fifo",
			reason: "it is a named pipe (FIFO)",
			make: func(t *testing.T, path string) {
				if err := syscall.Mkfifo(path, 0o640); err != nil {
					t.Fatal(err)
				}
			},
			check: wantMode(fs.ModeNamedPipe),
		},
		{
			kind:   "directory",
			reason: "it is a directory",
			make: func(t *testing.T, path string) {
				// Made beside and renamed in: the running watcher could
				// move an empty directory before the file is in it.
				tmp := filepath.Join(t.TempDir(), "dir")
				if err := os.Mkdir(tmp, 0o750); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(tmp, "inside.eml"), []byte(validMessage), 0o640); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(tmp, path); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T, bad string) {
				if got, err := os.ReadFile(filepath.Join(bad, "inside.eml")); err != nil || string(got) != validMessage {
					t.Errorf("directory contents: %q %v", got, err)
				}
			},
		},
		{
			kind:   "socket",
			reason: "it is a socket",
			make: func(t *testing.T, path string) {
				if err := syscall.Mknod(path, syscall.S_IFSOCK|0o640, 0); err != nil {
					t.Fatal(err)
				}
			},
			check: wantMode(fs.ModeSocket),
		},
		{
			kind:   "device",
			reason: "it is a device",
			make: func(t *testing.T, path string) {
				// The null device's numbers: harmless even if opened.
				if err := syscall.Mknod(path, syscall.S_IFCHR|0o640, int(unix.Mkdev(1, 3))); err != nil {
					t.Skipf("cannot make a device node here: %v", err)
				}
			},
			check: wantMode(fs.ModeDevice),
		},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			h := newHarness(t, time.Second)
			name := "odd-" + tc.kind
			stop := h.run(t)
			tc.make(t, filepath.Join(h.dir, name))
			bdr := h.waitBadmail(t, 1)[0]
			// A probe queued after the move shows that later scans passed.
			h.drop(t, "probe.eml", validMessage)
			h.settle(t, 1, stop) // the probe only: the link target is not sent

			bad := strings.TrimSuffix(bdr, badfile.ExtBDR) + badfile.ExtBAD
			tc.check(t, bad)
			report, err := os.ReadFile(bdr)
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{
				"Reason:           pickupwatcher: not a regular file: " + tc.reason,
				`Original file:    "` + name + `"`,
			} {
				if !strings.Contains(string(report), want) {
					t.Errorf(".BDR lacks %q:\n%s", want, report)
				}
			}
			if n := h.logs.Count(name); n != 1 || h.logs.Count(`msg="pickup file rejected"`) != 1 {
				t.Errorf("%d log lines name %s, want the one rejection:\n%s", n, name, h.logs.String())
			}
		})
	}
}

// wantMode checks that the .BAD has the type bits of m.
func wantMode(m fs.FileMode) func(t *testing.T, bad string) {
	return func(t *testing.T, bad string) {
		t.Helper()
		info, err := os.Lstat(bad)
		if err != nil || info.Mode()&m == 0 {
			t.Errorf(".BAD %s: %v %v, want type %v", bad, info.Mode(), err, m)
		}
	}
}

// A FIFO left in .work/ by a watcher that died is moved to Badmail by the
// next one at start, without opening it.
func TestNotRegularInWorkRecovered(t *testing.T) {
	h := newHarness(t, time.Second)
	fifo := filepath.Join(h.dir, WorkDir, "claimed-fifo")
	if err := os.MkdirAll(filepath.Dir(fifo), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(fifo, 0o640); err != nil {
		t.Fatal(err)
	}
	stop := h.run(t)
	bdr := h.waitBadmail(t, 1)[0]
	stop()
	wantMode(fs.ModeNamedPipe)(t, strings.TrimSuffix(bdr, badfile.ExtBDR)+badfile.ExtBAD)
	if _, err := os.Lstat(fifo); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("FIFO still in .work: %v", err)
	}
}
