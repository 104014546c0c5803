//go:build unix

package badfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// makeObjects makes in dir one object of each kind that cannot be copied
// as bytes, and returns their paths by kind.
func makeObjects(t *testing.T, dir string) map[string]string {
	t.Helper()
	objs := map[string]string{
		"symlink":   filepath.Join(dir, "link"),
		"fifo":      filepath.Join(dir, "fifo"),
		"directory": filepath.Join(dir, "dir"),
	}
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("not to be followed"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, objs["symlink"]); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(objs["fifo"], 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(objs["directory"], "sub"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(objs["directory"], "sub", "f"), []byte("inside"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../f", filepath.Join(objs["directory"], "sub", "l")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(objs["directory"], "p"), 0o640); err != nil {
		t.Fatal(err)
	}
	return objs
}

// checkMoved checks that the object of kind is now at bad, as it was.
func checkMoved(t *testing.T, kind, bad, orig string) {
	t.Helper()
	if _, err := os.Lstat(orig); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s still at %s: %v", kind, orig, err)
	}
	info, err := os.Lstat(bad)
	if err != nil {
		t.Fatalf("%s not in Badmail: %v", kind, err)
	}
	switch kind {
	case "symlink":
		target, err := os.Readlink(bad)
		if info.Mode()&fs.ModeSymlink == 0 || err != nil || filepath.Base(target) != "target" {
			t.Errorf("symlink became %v -> %q %v", info.Mode(), target, err)
		}
	case "fifo":
		if info.Mode()&fs.ModeNamedPipe == 0 {
			t.Errorf("fifo became %v", info.Mode())
		}
	case "directory":
		if !info.IsDir() || read(t, filepath.Join(bad, "sub", "f")) != "inside" {
			t.Errorf("directory became %v", info.Mode())
		}
		if l, err := os.Readlink(filepath.Join(bad, "sub", "l")); err != nil || l != "../f" {
			t.Errorf("link inside the directory: %q %v", l, err)
		}
		if p, err := os.Lstat(filepath.Join(bad, "p")); err != nil || p.Mode()&fs.ModeNamedPipe == 0 {
			t.Errorf("fifo inside the directory: %v", err)
		}
	}
}

// An object that cannot be copied as bytes is moved in as the .BAD, on
// the same file system and across file systems, never opened or followed
// (a FIFO opened for reading would block the test).
func TestWriteMovesObject(t *testing.T) {
	bases := map[string]string{"same file system": t.TempDir()}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		shm, err := os.MkdirTemp("/dev/shm", "badfile-test-")
		if err == nil {
			t.Cleanup(func() { os.RemoveAll(shm) })
			a, _ := os.Stat(shm)
			b, _ := os.Stat(bases["same file system"])
			if a.Sys().(*syscall.Stat_t).Dev != b.Sys().(*syscall.Stat_t).Dev {
				bases["across file systems"] = shm
			}
		}
	}
	if len(bases) == 1 {
		t.Log("no second file system (/dev/shm): the copy across file systems is not tested")
	}
	for what, src := range bases {
		t.Run(what, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "Badmail")
			for kind, path := range makeObjects(t, src) {
				res, err := Write(dir, Entry{Name: "Q" + kind, Key: "k " + kind, Path: path, Report: "Reason: " + kind + "\n"})
				if err != nil || res != (Result{Name: "Q" + kind}) {
					t.Fatalf("%s: %+v %v", kind, res, err)
				}
				checkMoved(t, kind, filepath.Join(dir, "Q"+kind+ExtBAD), path)
				if got := read(t, filepath.Join(dir, "Q"+kind+ExtBDR)); got != "Badmail-Entry: k "+kind+"\nReason: "+kind+"\n" {
					t.Errorf("%s .BDR = %q", kind, got)
				}
			}
			if got, err := os.ReadFile(filepath.Join(src, "target")); err != nil || string(got) != "not to be followed" {
				t.Errorf("link target changed: %q %v", got, err)
			}
			names(t, dir)
		})
	}
}

// A retry after a crash at any point of a move finishes the entry under
// the same name, and a name whose files belong to another entry is
// skipped.
func TestWriteMovesObjectRetries(t *testing.T) {
	src, dir := t.TempDir(), t.TempDir()
	fifo := filepath.Join(src, "fifo")
	mk := func() {
		if err := syscall.Mkfifo(fifo, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	e := Entry{Name: "Q", Alt: "7", Key: "k", Path: fifo, Report: "r"}
	write := func(want Result) {
		t.Helper()
		if res, err := Write(dir, e); err != nil || res != want {
			t.Fatalf("got %+v %v, want %+v", res, err, want)
		}
	}

	// Crash after the report, before the move: the object joins it.
	mk()
	if err := os.WriteFile(filepath.Join(dir, "Q.BDR"), []byte("Badmail-Entry: k\nr\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	write(Result{Name: "Q"})
	checkMoved(t, "fifo", filepath.Join(dir, "Q.BAD"), fifo)
	// Handled again once moved: nothing to do.
	write(Result{Name: "Q", Existed: true})
	// Crash after the copy got its name, before the original was removed.
	mk()
	write(Result{Name: "Q", Existed: true})
	checkMoved(t, "fifo", filepath.Join(dir, "Q.BAD"), fifo)

	// Another entry's report, then another entry's lone .BAD, hold the
	// next names: neither is paired with this object.
	e.Key = "k2"
	mk()
	if err := os.WriteFile(filepath.Join(dir, "Q-7.BAD"), []byte("theirs"), 0o640); err != nil {
		t.Fatal(err)
	}
	write(Result{Name: "Q-7-2"})
	checkMoved(t, "fifo", filepath.Join(dir, "Q-7-2.BAD"), fifo)
	if _, err := os.Lstat(filepath.Join(dir, "Q-7.BDR")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a report was paired with another entry's .BAD: %v", err)
	}

	// A message whose name is held by a FIFO .BAD without a report is
	// written under the next name, without opening the FIFO.
	if err := os.Remove(filepath.Join(dir, "Q.BDR")); err != nil {
		t.Fatal(err)
	}
	res, err := Write(dir, entry("Q", "k3", "msg", "r"))
	if err != nil || res.Name == "Q" {
		t.Fatalf("%+v %v", res, err)
	}
	names(t, dir)
}
