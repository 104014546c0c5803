package badfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func entry(name, key, data, report string) Entry {
	return Entry{Name: name, Alt: "7", Key: key, Data: strings.NewReader(data), Report: report}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// names lists dir, failing on leftover temp files.
func names(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temp file left behind: %s", e.Name())
		}
		out = append(out, e.Name())
	}
	return out
}

func TestWrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "Badmail")
	res, err := Write(dir, entry("Q1", "key one", "Subject: x\r\n\r\nbody\r\n", "Reason: because\n"))
	if err != nil {
		t.Fatal(err)
	}
	if res != (Result{Name: "Q1"}) {
		t.Fatalf("result %+v", res)
	}
	if got := read(t, filepath.Join(dir, "Q1.BAD")); got != "Subject: x\r\n\r\nbody\r\n" {
		t.Errorf(".BAD = %q", got)
	}
	if got := read(t, filepath.Join(dir, "Q1.BDR")); got != "Badmail-Entry: key one\nReason: because\n" {
		t.Errorf(".BDR = %q", got)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("dir mode %v %v", fi.Mode(), err)
	}

	// The same entry again (a redelivery): nothing new.
	res, err = Write(dir, entry("Q1", "key one", "Subject: x\r\n\r\nbody\r\n", "Reason: other time\n"))
	if err != nil || res != (Result{Name: "Q1", Existed: true}) {
		t.Fatalf("rewrite: %+v %v", res, err)
	}
	// Another entry with the same queue id: the alt name, and again
	// idempotent there.
	for range 2 {
		res, err = Write(dir, entry("Q1", "key two", "Subject: x\r\n\r\nbody\r\n", "Reason: second rcpt\n"))
		if err != nil || res.Name != "Q1-7" {
			t.Fatalf("second entry: %+v %v", res, err)
		}
	}
	// A third with the same alt (same key, other content: a recreated
	// stream reusing the sequence) goes further.
	res, err = Write(dir, entry("Q1", "key two", "other", "Reason: third\n"))
	if err != nil || res != (Result{Name: "Q1-7-2"}) {
		t.Fatalf("third entry: %+v %v", res, err)
	}
	if got := read(t, filepath.Join(dir, "Q1.BDR")); !strings.Contains(got, "because") {
		t.Errorf("first report overwritten: %q", got)
	}
	got := strings.Join(names(t, dir), " ")
	if want := "Q1-7-2.BAD Q1-7-2.BDR Q1-7.BAD Q1-7.BDR Q1.BAD Q1.BDR"; got != want {
		t.Errorf("files %q, want %q", got, want)
	}
}

func TestWriteAdoptsOrphanBAD(t *testing.T) {
	dir := t.TempDir()
	// A crash between the two moves left the .BAD alone.
	if err := os.WriteFile(filepath.Join(dir, "Q.BAD"), []byte("msg"), 0o640); err != nil {
		t.Fatal(err)
	}
	res, err := Write(dir, entry("Q", "k", "msg", "r"))
	if err != nil || res != (Result{Name: "Q"}) {
		t.Fatalf("%+v %v", res, err)
	}
	if got := read(t, filepath.Join(dir, "Q.BDR")); got != "Badmail-Entry: k\nr\n" {
		t.Errorf(".BDR = %q", got)
	}
	// An orphan with other content belongs to someone else.
	if err := os.WriteFile(filepath.Join(dir, "P.BAD"), []byte("theirs"), 0o640); err != nil {
		t.Fatal(err)
	}
	res, err = Write(dir, entry("P", "k2", "mine", "r"))
	if err != nil || res.Name != "P-7" {
		t.Fatalf("%+v %v", res, err)
	}
	if got := read(t, filepath.Join(dir, "P.BAD")); got != "theirs" {
		t.Errorf("orphan overwritten: %q", got)
	}
	names(t, dir)
}

func TestWriteErrors(t *testing.T) {
	base := t.TempDir()
	// The Badmail path is a regular file: MkdirAll fails (root ignores
	// permissions, so this is how a test makes a directory unwritable).
	dir := filepath.Join(base, "Badmail")
	if err := os.WriteFile(dir, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(dir, entry("Q", "k", "m", "r")); err == nil {
		t.Fatal("no error with a file in the way")
	}
	if _, err := Write(base, entry("../x", "k", "m", "r")); !errors.Is(err, ErrNoName) {
		t.Fatalf("bad name: %v", err)
	}
	// A reader failing half-way leaves nothing behind.
	d2 := filepath.Join(base, "d2")
	_, err := Write(d2, Entry{Name: "Q", Key: "k", Data: failingReader{}, Report: "r"})
	if err == nil {
		t.Fatal("no error from a failing reader")
	}
	if n := names(t, d2); len(n) != 0 {
		t.Fatalf("files left: %v", n)
	}
}

type failingReader struct{}

func (failingReader) Read(p []byte) (int, error) { return 0, errors.New("disk on fire") }

func TestMoveNoReplace(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	os.WriteFile(a, []byte("A"), 0o640)
	os.WriteFile(b, []byte("B"), 0o640)
	if err := MoveNoReplace(a, b); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("replace: %v", err)
	}
	if read(t, b) != "B" || read(t, a) != "A" {
		t.Fatal("files changed")
	}
	c := filepath.Join(dir, "c")
	if err := MoveNoReplace(a, c); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(a); !errors.Is(err, fs.ErrNotExist) || read(t, c) != "A" {
		t.Fatalf("not moved: %v", err)
	}
	if err := MoveNoReplace(a, filepath.Join(dir, "d")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing source: %v", err)
	}
}

func TestCleanTemp(t *testing.T) {
	dir := t.TempDir()
	old := filepath.Join(dir, tempPrefix+"1.BAD.tmp")
	young := filepath.Join(dir, tempPrefix+"2.BAD.tmp")
	other := filepath.Join(dir, "Q.BAD")
	for _, p := range []string{old, young, other} {
		os.WriteFile(p, nil, 0o640)
	}
	past := time.Now().Add(-2 * time.Hour)
	os.Chtimes(old, past, past)
	os.Chtimes(other, past, past)
	if n := CleanTemp(dir, time.Hour); n != 1 {
		t.Fatalf("removed %d", n)
	}
	if _, err := os.Stat(old); err == nil {
		t.Error("old temp kept")
	}
	for _, p := range []string{young, other} {
		if _, err := os.Stat(p); err != nil {
			t.Error(err)
		}
	}
}
