// Package badfile writes Badmail entries: the IIS layout of one
// "<name>.BAD" file holding the message exactly as it was and one
// "<name>.BDR" plain-text report saying why (docs/DESIGN.md §4, Badmail).
//
// Both the badmail service (dead letters from mail.bad) and the pickup
// watcher (files it cannot take) write through Write, so an entry is made
// the same way everywhere:
//
//   - each file is written to a hidden temp file in the Badmail directory,
//     fsynced, then moved to its final name without ever replacing an
//     existing file (hard link, or an existence check plus rename where the
//     file system has no hard links), and the directory is fsynced after
//     each move; the .BAD is made durable before the .BDR;
//   - names never collide: when "<name>.BAD" belongs to another entry (the
//     same queue id went bad twice, say for two recipients failing at
//     different times), the entry is written as "<name>-<alt>", then
//     "<name>-<alt>-2", … — derived from the entry, not from a counter, so
//     a retry of the same entry walks the same names;
//   - writing is idempotent: the first line of every .BDR records the
//     entry's Key, and an entry whose Key and message content are already
//     in Badmail is not written again (a redelivered message, a pickup file
//     handled again after a crash);
//   - on any error, temp files are removed and nothing half-written is
//     left under a final name, so the caller can simply retry later.
//
// An entry can also move a file-system object that cannot be copied (a
// symbolic link, a FIFO, a directory, a device) into Badmail as its .BAD:
// see Entry.Path.
package badfile

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// File name extensions of a Badmail entry.
const (
	ExtBAD = ".BAD"
	ExtBDR = ".BDR"
)

// KeyPrefix starts the first line of every .BDR; the rest of that line is
// the entry's Key.
const KeyPrefix = "Badmail-Entry: "

// tempPrefix starts the names of temp files in the Badmail directory.
const tempPrefix = ".badfile-"

// maxCandidates bounds the names tried for one entry.
const maxCandidates = 1000

// ErrNoName is returned when an entry has no usable name.
var ErrNoName = errors.New("badfile: entry name must be [0-9A-Za-z_-]{1,64}")

// Entry is one Badmail item.
type Entry struct {
	// Name is the preferred base file name, normally the queue id. It must
	// be 1 to 64 of [0-9A-Za-z_-].
	Name string
	// Alt names the entry when Name is taken by another entry; the files
	// are then "<Name>-<Alt>" (and "-2", "-3", … after that). It should be
	// unique per entry, e.g. the stream sequence. Characters outside
	// [0-9A-Za-z_-] are replaced by "_". Empty means "x".
	Alt string
	// Key identifies the entry across retries: the same message delivered
	// again has the same Key, another message has another. It is recorded
	// on the first line of the .BDR; CR and LF are replaced by spaces.
	Key string
	// Data is the message, copied byte for byte into the .BAD file.
	Data io.Reader
	// Path, when not empty, names a file-system object of any kind (a
	// symbolic link, a FIFO, a directory, a device) on the same file
	// system that becomes the .BAD as it is: it is moved, never opened
	// and never followed. Data is then ignored. The .BDR is put in place
	// first, so a retry after a crash finds its name by the Key.
	Path string
	// Report is the text of the .BDR after the key line.
	Report string
}

// Result tells where an entry went.
type Result struct {
	// Name is the base name used: the files are Name+ExtBAD and Name+ExtBDR.
	Name string
	// Existed is true when the entry was already in Badmail (same Key and
	// same content) and nothing was written.
	Existed bool
}

// Write stores e in dir (created with mode 0o750 when missing) and returns
// once both files and their directory entries are durable. It never
// overwrites another entry's files.
func Write(dir string, e Entry) (Result, error) {
	if !validName(e.Name) {
		return Result{}, fmt.Errorf("%w: %q", ErrNoName, e.Name)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return Result{}, fmt.Errorf("badfile: create %s: %w", dir, err)
	}
	key := oneLine(e.Key)
	if e.Path != "" {
		return writeMoved(dir, e, key)
	}
	data := e.Data
	if data == nil {
		data = bytes.NewReader(nil)
	}
	var temps []string
	defer func() {
		for _, t := range temps {
			_ = os.Remove(t)
		}
	}()
	tmpBAD, sum, err := writeTemp(dir, ExtBAD, data)
	if tmpBAD != "" {
		temps = append(temps, tmpBAD)
	}
	if err != nil {
		return Result{}, err
	}
	tmpBDR, _, err := writeTemp(dir, ExtBDR, strings.NewReader(report(key, e.Report)))
	if tmpBDR != "" {
		temps = append(temps, tmpBDR)
	}
	if err != nil {
		return Result{}, err
	}

	for i := 0; i < maxCandidates; i++ {
		name := candidate(e, i)
		bad, bdr := filepath.Join(dir, name+ExtBAD), filepath.Join(dir, name+ExtBDR)
		err := MoveNoReplace(tmpBAD, bad)
		switch {
		case err == nil:
			// The name is ours: the .BAD is in place, now the report.
			if err := SyncDir(dir); err != nil {
				return Result{}, err
			}
			if err := MoveNoReplace(tmpBDR, bdr); err != nil {
				if errors.Is(err, fs.ErrExist) {
					// A stray .BDR without its .BAD (or a concurrent writer
					// adopted our .BAD, which has the same content): leave
					// both alone, and write the entry under the next name.
					if k, kerr := readKey(bdr); kerr == nil && k == key {
						// Our own report from an earlier try whose .BAD
						// was removed by hand: the pair is whole again.
						return Result{Name: name}, SyncDir(dir)
					}
					if tmpBAD, err = copyTemp(dir, bad); tmpBAD != "" {
						temps = append(temps, tmpBAD)
					}
					if err != nil {
						return Result{}, err
					}
					continue
				}
				return Result{}, err
			}
			if err := SyncDir(dir); err != nil {
				return Result{}, err
			}
			return Result{Name: name}, nil
		case !errors.Is(err, fs.ErrExist):
			return Result{}, err
		}
		// name.BAD exists: ours from an earlier try, an orphan of a crash
		// between the two moves, or another entry's.
		k, kerr := readKey(bdr)
		switch {
		case kerr == nil:
			if k == key {
				same, err := sameContent(bad, sum)
				if err != nil {
					return Result{}, err
				}
				if same {
					return Result{Name: name, Existed: true}, nil
				}
			}
			continue
		case errors.Is(kerr, fs.ErrNotExist):
			same, err := sameContent(bad, sum)
			if err != nil {
				return Result{}, err
			}
			if !same {
				continue
			}
			// An orphaned .BAD with exactly our message: complete it.
			err = MoveNoReplace(tmpBDR, bdr)
			if errors.Is(err, fs.ErrExist) {
				if k, kerr := readKey(bdr); kerr == nil && k == key {
					return Result{Name: name, Existed: true}, nil
				}
				continue
			}
			if err != nil {
				return Result{}, err
			}
			if err := SyncDir(dir); err != nil {
				return Result{}, err
			}
			return Result{Name: name}, nil
		default:
			return Result{}, fmt.Errorf("badfile: read %s: %w", bdr, kerr)
		}
	}
	return Result{}, fmt.Errorf("badfile: no free name for %s after %d tries", e.Name, maxCandidates)
}

// writeMoved is Write for an entry whose .BAD is the object at e.Path.
// Unlike a copied message it cannot be compared with a .BAD already in
// place, so a name is taken only when neither file exists, or when its
// .BDR carries the entry's Key (an earlier try put the report there).
func writeMoved(dir string, e Entry, key string) (Result, error) {
	tmpBDR, _, err := writeTemp(dir, ExtBDR, strings.NewReader(report(key, e.Report)))
	if tmpBDR != "" {
		defer os.Remove(tmpBDR)
	}
	if err != nil {
		return Result{}, err
	}
	for i := 0; i < maxCandidates; i++ {
		name := candidate(e, i)
		bad, bdr := filepath.Join(dir, name+ExtBAD), filepath.Join(dir, name+ExtBDR)
		k, kerr := readKey(bdr)
		earlier := kerr == nil && k == key
		switch {
		case kerr == nil && k != key:
			continue // another entry's
		case earlier:
			// Our report from an earlier try: the object goes beside it.
		case !errors.Is(kerr, fs.ErrNotExist):
			return Result{}, fmt.Errorf("badfile: read %s: %w", bdr, kerr)
		default:
			if _, err := os.Lstat(bad); err == nil {
				continue // another entry's .BAD, its report lost
			}
			if err := MoveNoReplace(tmpBDR, bdr); errors.Is(err, fs.ErrExist) {
				continue
			} else if err != nil {
				return Result{}, err
			}
			if err := SyncDir(dir); err != nil {
				return Result{}, err
			}
		}
		err := moveObject(dir, e.Path, bad)
		switch {
		case err == nil:
			return Result{Name: name}, SyncDir(dir)
		case earlier && errors.Is(err, fs.ErrNotExist):
			if _, serr := os.Lstat(bad); serr == nil {
				return Result{Name: name, Existed: true}, nil // moved by that try
			}
		case earlier && errors.Is(err, fs.ErrExist):
			// That try got the object whole under its name (only a whole
			// copy gets it) and died before removing the original.
			if err := os.RemoveAll(e.Path); err != nil {
				return Result{}, fmt.Errorf("badfile: remove %s, already in %s: %w", e.Path, dir, err)
			}
			return Result{Name: name, Existed: true}, nil
		}
		return Result{}, fmt.Errorf("badfile: move %s into %s: %w", e.Path, dir, err)
	}
	return Result{}, fmt.Errorf("badfile: no free name for %s after %d tries", e.Name, maxCandidates)
}

// report is the text of a .BDR: the key line, then the report.
func report(key, text string) string {
	r := KeyPrefix + key + "\n" + text
	if !strings.HasSuffix(r, "\n") {
		r += "\n"
	}
	return r
}

// copyTemp copies the file at path into a new temp file in dir.
func copyTemp(dir, path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("badfile: reopen %s: %w", path, err)
	}
	defer f.Close()
	tmp, _, err := writeTemp(dir, ExtBAD, f)
	return tmp, err
}

// candidate returns the i-th name tried for e.
func candidate(e Entry, i int) string {
	if i == 0 {
		return e.Name
	}
	alt := sanitizeAlt(e.Alt)
	name := e.Name + "-" + alt
	if i > 1 {
		name += "-" + strconv.Itoa(i)
	}
	return name
}

func sanitizeAlt(s string) string {
	if s == "" {
		return "x"
	}
	b := []byte(s)
	for i, c := range b {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == '-') {
			b[i] = '_'
		}
	}
	if len(b) > 64 {
		b = b[:64]
	}
	return string(b)
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	return sanitizeAlt(s) == s
}

func oneLine(s string) string {
	return strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
}

// writeTemp copies r into a new hidden temp file in dir, fsyncs and closes
// it, and returns its path and the SHA-256 of what was written. On error
// the path (if any) is still returned so the caller can remove it.
func writeTemp(dir, ext string, r io.Reader) (string, [sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	path := tempPath(dir, ext)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return "", sum, fmt.Errorf("badfile: create temp file in %s: %w", dir, err)
	}
	h := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(f, h), 64<<10)
	_, err = io.Copy(w, r)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return path, sum, fmt.Errorf("badfile: write %s: %w", path, err)
	}
	copy(sum[:], h.Sum(nil))
	return path, sum, nil
}

// tempPath returns a new hidden temp name in dir, one CleanTemp removes.
func tempPath(dir, ext string) string {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	return filepath.Join(dir, tempPrefix+hex.EncodeToString(rnd[:])+ext+".tmp")
}

// readKey returns the Key recorded in the .BDR at path.
func readKey(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	line, err := bufio.NewReaderSize(f, 4096).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	k, ok := strings.CutPrefix(strings.TrimRight(line, "\r\n"), KeyPrefix)
	if !ok {
		return "", nil // not one of ours: a key no entry has
	}
	return k, nil
}

// sameContent reports whether the file at path has SHA-256 sum. A .BAD
// that is not a regular file (moved in through Entry.Path) is never the
// same, and never opened: a FIFO would block the read.
func sameContent(path string, sum [sha256.Size]byte) (bool, error) {
	if info, err := os.Lstat(path); err == nil && !info.Mode().IsRegular() {
		return false, nil
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("badfile: read %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, fmt.Errorf("badfile: read %s: %w", path, err)
	}
	return bytes.Equal(h.Sum(nil), sum[:]), nil
}

// MoveNoReplace renames oldpath to newpath, failing with an error that
// wraps fs.ErrExist when newpath already exists, and with fs.ErrNotExist
// when oldpath is gone. Unlike os.Rename it never replaces a file: it makes
// a hard link and then removes oldpath. On file systems without hard links
// it checks for newpath and renames, which leaves only a narrow race
// between processes moving the same file.
func MoveNoReplace(oldpath, newpath string) error {
	err := os.Link(oldpath, newpath)
	if err == nil {
		if err := os.Remove(oldpath); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("badfile: remove %s after linking: %w", oldpath, err)
		}
		return nil
	}
	if errors.Is(err, fs.ErrExist) || errors.Is(err, fs.ErrNotExist) {
		return err
	}
	// No hard links here (some network and FUSE file systems).
	if _, serr := os.Lstat(newpath); serr == nil {
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: fs.ErrExist}
	}
	if err := os.Rename(oldpath, newpath); err != nil {
		return err
	}
	return nil
}

// SyncDir fsyncs a directory so that the entries created or renamed in it
// survive a crash.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("badfile: sync dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("badfile: sync dir %s: %w", dir, err)
	}
	return nil
}

// CleanTemp removes temp files that Write left in dir when its process
// died, if they are older than age. It is best effort and returns the
// number removed.
func CleanTemp(dir string, age time.Duration) int {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	n := 0
	for _, de := range entries {
		if !strings.HasPrefix(de.Name(), tempPrefix) || !strings.HasSuffix(de.Name(), ".tmp") {
			continue
		}
		info, err := de.Info()
		if err != nil || time.Since(info.ModTime()) < age {
			continue
		}
		// RemoveAll: the copy of a directory moved in is a directory.
		if os.RemoveAll(filepath.Join(dir, de.Name())) == nil {
			n++
		}
	}
	return n
}
