package bus

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// MailStreams are the streams whose records a 250 (or the ack of a
// predecessor) depends on: the mail itself, the bodies of big mail and
// their reference counts (docs/DESIGN.md, the table of durable writes).
// Everything else the server writes (events, sessions, consumer state,
// the configuration) is made durable by the server's own periodic sync
// (nats.sync_interval); a tombstone or an ack lost in a crash means a
// duplicate at worst (docs/DESIGN.md, "Durable writes").
var MailStreams = []string{StreamMail, "OBJ_" + BucketBodies, "KV_" + BucketRefs, StreamFailed}

// fileSync is the group commit's sync by files (Postfix's way): it
// fdatasyncs the message block files of MailStreams that changed since it
// last looked, and a block directory when a block appeared in it, instead
// of the whole file system (syncfs), whose cost grows with whatever else
// writes to it — logs, another program's files.
type fileSync struct {
	root    string // the server's store directory
	streams []string
	dirs    map[string]*os.File  // msgs directory → open handle
	files   map[string]*blkState // block file → what was synced
	now     func() time.Time
	// datasync and dirsync are fdatasync and fsyncDir (test seams).
	datasync func(*os.File) error
	dirsync  func(*os.File) error
}

type blkState struct {
	f     *os.File
	size  int64
	mtime time.Time
}

// recentWindow: a block modified this recently is synced even if its
// size and time look unchanged (file systems with coarse time stamps).
const recentWindow = 2 * time.Second

func newFileSync(root string, streams []string) *fileSync {
	return &fileSync{root: root, streams: streams, dirs: map[string]*os.File{}, files: map[string]*blkState{},
		now: time.Now, datasync: fdatasync, dirsync: fsyncDir}
}

// msgsDirs are the block directories of the streams (under every account
// directory of the store: <root>/jetstream/<account>/streams/<name>/msgs).
func (s *fileSync) msgsDirs() []string {
	var out []string
	for _, name := range s.streams {
		m, _ := filepath.Glob(filepath.Join(s.root, "jetstream", "*", "streams", name, "msgs"))
		out = append(out, m...)
	}
	return out
}

// sync makes every record written to the streams' blocks before it was
// called durable. The blocks that changed are fdatasynced at once, side by
// side, not one after the other: the file system commits their metadata
// in one journal commit, so a sync costs about one flush however many
// blocks it covers.
func (s *fileSync) sync() error {
	var errs []error
	seen := map[string]bool{}
	type job struct {
		path string
		st   *blkState
		size int64
		mod  time.Time
	}
	var jobs []job
	for _, dir := range s.msgsDirs() {
		d, ok := s.dirs[dir]
		if !ok {
			var err error
			if d, err = os.Open(dir); err != nil {
				errs = append(errs, err)
				continue
			}
			s.dirs[dir] = d
			// A new stream directory: its entries up to the store root
			// are made durable once.
			for p := dir; p != s.root && strings.HasPrefix(p, s.root); p = filepath.Dir(p) {
				if err := s.syncPath(filepath.Dir(p)); err != nil {
					errs = append(errs, err)
				}
			}
		}
		ents, err := d.ReadDir(-1)
		if _, serr := d.Seek(0, 0); serr != nil && err == nil {
			err = serr
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", dir, err))
			continue
		}
		newBlock := false
		for _, e := range ents {
			if !strings.HasSuffix(e.Name(), ".blk") {
				continue
			}
			path := filepath.Join(dir, e.Name())
			info, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed meanwhile (a WorkQueue block emptied)
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
			seen[path] = true
			st, ok := s.files[path]
			if !ok {
				f, err := os.Open(path)
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				if err != nil {
					errs = append(errs, err)
					continue
				}
				st = &blkState{f: f, size: -1}
				s.files[path] = st
				newBlock = true
			}
			if st.size == info.Size() && st.mtime.Equal(info.ModTime()) && s.now().Sub(info.ModTime()) > recentWindow {
				continue
			}
			jobs = append(jobs, job{path, st, info.Size(), info.ModTime()})
		}
		if newBlock {
			if err := s.dirsync(d); err != nil {
				errs = append(errs, fmt.Errorf("fsync %s: %w", dir, err))
			}
		}
	}
	jerrs := make([]error, len(jobs))
	var wg sync.WaitGroup
	for i, j := range jobs {
		run := func() {
			if err := s.datasync(j.st.f); err != nil {
				jerrs[i] = fmt.Errorf("fdatasync %s: %w", j.path, err)
			}
		}
		if i == len(jobs)-1 {
			run() // the last one here: no goroutine for the usual single block
		} else {
			wg.Go(run)
		}
	}
	wg.Wait()
	for i, j := range jobs {
		if jerrs[i] == nil {
			j.st.size, j.st.mtime = j.size, j.mod
		}
	}
	errs = append(errs, jerrs...)
	for path, st := range s.files {
		if !seen[path] {
			_ = st.f.Close()
			delete(s.files, path)
		}
	}
	return errors.Join(errs...)
}

// close releases every handle.
func (s *fileSync) close() error {
	for _, st := range s.files {
		_ = st.f.Close()
	}
	for _, d := range s.dirs {
		_ = d.Close()
	}
	s.files, s.dirs = map[string]*blkState{}, map[string]*os.File{}
	return nil
}

func (s *fileSync) syncPath(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return s.dirsync(d)
}
