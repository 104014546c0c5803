package pickupwatcher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/badfile"
	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/message"
	"github.com/mailroot/mailroot/internal/metrics"
)

// WorkDir is the name of the claim folder inside Pickup/.
const WorkDir = ".work"

// Source is the envelope Source (and ClientIP) of picked-up mail.
const Source = "pickup"

// MsgIDPrefix starts the Nats-Msg-Id of picked-up mail: "pickup.<qid>".
const MsgIDPrefix = envelope.PickupIDPrefix

// envelopeAllowance is how much larger than the message size limit a file
// may be, for its X-Sender/X-Receiver lines and CR/LF normalisation,
// before it is refused without being read.
const envelopeAllowance = 64 << 10

// DefaultOrphanAge is how long a file may sit in .work/ before a watcher
// that did not claim it takes it over (its claimer died and did not come
// back).
const DefaultOrphanAge = 5 * time.Minute

// ErrNoJetStream is returned by New without a JetStream context.
var ErrNoJetStream = errors.New("pickupwatcher: no JetStream context")

// ErrNotRegular is the Badmail reason for anything in Pickup/ that is not
// a regular file: a symbolic link (never followed), a FIFO, a directory,
// a device or a socket. It is moved to Badmail as it is.
var ErrNotRegular = errors.New("pickupwatcher: not a regular file")

// DefaultWorkers is how many claimed files are parsed and queued at once.
const DefaultWorkers = 8

// Service watches the Pickup directory.
type Service struct {
	// OrphanAge is how long a file left in .work/ by another watcher waits
	// before this one handles it (DefaultOrphanAge when zero).
	OrphanAge time.Duration
	// Workers is how many claimed files are handled at once
	// (DefaultWorkers when zero): a burst of files is queued in parallel.
	Workers int
	// Room says whether there is room for new mail (nats.reserve); while
	// there is not, files stay where they are and are tried again later.
	Room *bus.Room
	// Metrics, when set, is told the files waiting (Backlog) at scrape
	// time.
	Metrics *metrics.Metrics

	cfg       config.Config
	log       *slog.Logger
	js        jetstream.JetStream
	dir, work string
	badDir    string
	domain    string // default domain for addresses without one
	bodies    *bus.Bodies
	kick      chan struct{}
	now       func() time.Time

	// movedIn holds Pickup/ files that inotify saw renamed in: complete,
	// to be taken without waiting for StableFor. Written by the event
	// goroutine, so guarded by mu.
	movedIn map[string]bool

	// mu guards pending, sent and workSeen while workers handle files;
	// the rest of the scan state is only touched by the scan goroutine.
	mu sync.Mutex

	// State of the scan loop.
	stable    map[string]observation // Pickup/ files not yet stable
	workSeen  map[string]time.Time   // .work/ files and when first seen
	pending   map[string]bool        // .work/ files this watcher must retry
	sent      map[string]bool        // qids queued whose file could not be deleted
	warned    map[string]bool        // file names already warned about
	dirWarned map[string]bool        // directories already warned about
}

// observation is what a scan saw of a file.
type observation struct {
	size  int64
	mtime time.Time
	since time.Time // when this size and mtime were first seen
}

// New returns a watcher of cfg.PickupDir(), creating it and its work
// folder (mode 0o750).
func New(cfg config.Config, log *slog.Logger, js jetstream.JetStream) (*Service, error) {
	if js == nil {
		return nil, ErrNoJetStream
	}
	if log == nil {
		log = slog.Default()
	}
	s := &Service{
		cfg:       cfg,
		log:       log.With("svc", "pickupwatcher"),
		js:        js,
		Room:      &bus.Room{JS: js, Reserve: cfg.NATS.Reserve},
		dir:       cfg.PickupDir(),
		work:      filepath.Join(cfg.PickupDir(), WorkDir),
		badDir:    cfg.BadmailDir(),
		domain:    cfg.Hostname,
		kick:      make(chan struct{}, 1),
		now:       time.Now,
		stable:    map[string]observation{},
		movedIn:   map[string]bool{},
		workSeen:  map[string]time.Time{},
		pending:   map[string]bool{},
		sent:      map[string]bool{},
		warned:    map[string]bool{},
		dirWarned: map[string]bool{},
	}
	if len(cfg.LocalDomains) > 0 {
		s.domain = cfg.LocalDomains[0]
	}
	if err := os.MkdirAll(s.work, 0o750); err != nil {
		return nil, fmt.Errorf("pickupwatcher: create %s: %w", s.work, err)
	}
	return s, nil
}

// Kick asks for a scan now rather than at the next tick. An event source
// (fsnotify, an admin request) calls it; it never blocks.
func (s *Service) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Run scans the Pickup directory every pickup.interval until ctx is done.
// The first scan also handles everything left in .work/ by a previous
// run. The file in hand when ctx ends is finished first.
func (s *Service) Run(ctx context.Context) error {
	if err := os.MkdirAll(s.work, 0o750); err != nil {
		return fmt.Errorf("pickupwatcher: create %s: %w", s.work, err)
	}
	if _, err := bus.Setup(ctx, s.js, s.cfg); err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return fmt.Errorf("pickupwatcher: %w", err)
	}
	var err error
	if s.bodies, err = bus.OpenBodies(ctx, s.js); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("pickupwatcher: %w", err)
	}
	if s.Metrics != nil {
		s.Metrics.WatchPickup(s.Backlog)
	}
	interval := s.cfg.Pickup.Interval.D()
	if interval <= 0 {
		interval = time.Second
	}
	go func() {
		moved := func(name string) {
			s.mu.Lock()
			s.movedIn[name] = true
			s.mu.Unlock()
		}
		if err := watchDir(ctx, s.dir, moved, s.Kick); err != nil {
			s.log.Warn("no directory events, relying on the periodic scan", "dir", s.dir, "err", err)
		}
	}()
	s.log.Info("pickup started", "dir", s.dir, "interval", interval, "stable_for", s.cfg.Pickup.StableFor.D())
	t := time.NewTicker(interval)
	defer t.Stop()
	for first := true; ; first = false {
		s.scan(ctx, first)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-s.kick:
		}
	}
}

// scan makes one pass over .work/ and Pickup/.
func (s *Service) scan(ctx context.Context, recovering bool) {
	// .work/ may have been removed by hand since the last scan; without it
	// every claim would fail as if another watcher had taken the file.
	if err := os.MkdirAll(s.work, 0o750); err != nil {
		if !s.dirWarned[s.work] {
			s.log.Error("cannot create work folder", "dir", s.work, "err", err)
			s.dirWarned[s.work] = true
		}
		return
	}
	now := s.now()
	orphanAge := s.OrphanAge
	if orphanAge <= 0 {
		orphanAge = DefaultOrphanAge
	}
	workers := s.Workers
	if workers <= 0 {
		workers = DefaultWorkers
	}
	sem := make(chan struct{}, workers)
	var wg sync.WaitGroup
	dispatch := func(name string) {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			s.process(ctx, name)
		}()
	}
	// .work/: crash recovery at start, our own retries, and files whose
	// claimer died.
	present := map[string]bool{}
	for _, e := range s.list(s.work) {
		name := e.Name()
		present[name] = true
		s.mu.Lock()
		first, ok := s.workSeen[name]
		if !ok {
			s.workSeen[name], first = now, now
		}
		retry := s.pending[name]
		s.mu.Unlock()
		if recovering || retry || now.Sub(first) >= orphanAge {
			if ctx.Err() != nil {
				break
			}
			dispatch(name)
		}
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	for name := range s.workSeen {
		if !present[name] {
			delete(s.workSeen, name)
			delete(s.pending, name)
		}
	}

	// Pickup/: new files. Anything but a regular file is claimed at once,
	// to be moved to Badmail: it will never become a message.
	clear(present)
	for _, e := range s.list(s.dir) {
		name := e.Name()
		present[name] = true
		if e.Type().IsRegular() {
			info, err := os.Lstat(filepath.Join(s.dir, name))
			if err != nil {
				continue // gone already
			}
			if !s.isStable(name, info, now) {
				continue
			}
		}
		if ctx.Err() != nil {
			break
		}
		if s.claim(name) {
			dispatch(name)
		}
	}
	wg.Wait()
	for name := range s.stable {
		if !present[name] {
			delete(s.stable, name)
		}
	}
	s.mu.Lock()
	for name := range s.movedIn {
		if !present[name] {
			delete(s.movedIn, name)
		}
	}
	s.mu.Unlock()
	for name := range s.warned {
		if !present[name] && s.workSeen[name].IsZero() {
			delete(s.warned, name)
		}
	}
}

// list returns the entries of dir whose names do not start with ".", in
// name order.
func (s *Service) list(dir string) []fs.DirEntry {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if !s.dirWarned[dir] {
			s.log.Error("cannot read directory", "dir", dir, "err", err)
			s.dirWarned[dir] = true
		}
		return nil
	}
	delete(s.dirWarned, dir)
	return slices.DeleteFunc(entries, func(e fs.DirEntry) bool { return strings.HasPrefix(e.Name(), ".") })
}

// isStable reports whether a file in Pickup/ is complete: its size and
// mtime have not changed for StableFor. A file renamed in is usually
// stable at once (its mtime is older than that); a file written in place
// becomes stable once its writer has been quiet for StableFor. When the
// mtime lies in the future (clock skew on a network file system), the
// watcher's own observations count instead.
func (s *Service) isStable(name string, info fs.FileInfo, now time.Time) bool {
	s.mu.Lock()
	moved := s.movedIn[name]
	s.mu.Unlock()
	if moved {
		return true // renamed in: complete by the safe-write convention
	}
	o, seen := s.stable[name]
	if !seen || o.size != info.Size() || !o.mtime.Equal(info.ModTime()) {
		o = observation{size: info.Size(), mtime: info.ModTime(), since: now}
		s.stable[name] = o
		if seen {
			return false // it changed since the last scan: still being written
		}
	}
	need := s.cfg.Pickup.StableFor.D()
	return need <= 0 || now.Sub(o.mtime) >= need || now.Sub(o.since) >= need
}

// claim moves Pickup/name into .work/ and reports whether this watcher
// now owns it.
func (s *Service) claim(name string) bool {
	src, dst := filepath.Join(s.dir, name), filepath.Join(s.work, name)
	err := badfile.MoveNoReplace(src, dst)
	switch {
	case err == nil:
		delete(s.stable, name)
		return true
	case errors.Is(err, fs.ErrNotExist):
		return false // another watcher took it
	case errors.Is(err, fs.ErrExist):
		a, aerr := os.Lstat(src)
		b, berr := os.Lstat(dst)
		if aerr == nil && berr == nil && os.SameFile(a, b) {
			// Claimed by another watcher that has not unlinked it yet, or
			// by one that died in between: .work/ is where it is handled.
			_ = os.Remove(src)
			return false
		}
		if !s.warned[name] {
			s.log.Warn("a file of the same name is still in .work, waiting for it", "file", name)
			s.warned[name] = true
		}
		return false
	default:
		s.log.Error("cannot claim file", "file", src, "err", err)
		return false
	}
}

// process queues (or badmails) the claimed file .work/name and deletes it.
// On a temporary failure it stays in .work/ and is retried next scan.
func (s *Service) process(ctx context.Context, name string) {
	// Finish the file in hand even when ctx ends meanwhile.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bus.PublishTimeout+30*time.Second)
	defer cancel()
	path := filepath.Join(s.work, name)
	// Lstat before any open: a link is not followed, a FIFO not opened
	// (that would block until a writer came).
	info, err := os.Lstat(path)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.log.Error("cannot stat claimed file", "file", path, "err", err)
			s.setPending(name)
		}
		return
	}
	if !info.Mode().IsRegular() {
		s.setAside(name, path, info)
		return
	}
	f, err := os.Open(path)
	if err != nil {
		s.log.Error("cannot open claimed file", "file", path, "err", err)
		s.setPending(name)
		return
	}
	defer f.Close()
	limit := s.cfg.Ingress.MaxMessageSize
	var data []byte
	var perr error
	if limit > 0 && info.Size() > limit+envelopeAllowance {
		perr = fmt.Errorf("%w: the file is %d bytes, over the limit of %d bytes", message.ErrTooBig, info.Size(), limit)
	} else {
		r := io.Reader(f)
		if limit > 0 {
			r = io.LimitReader(f, limit+envelopeAllowance+1)
		}
		if data, err = io.ReadAll(r); err != nil {
			s.log.Error("cannot read claimed file", "file", path, "err", err)
			s.setPending(name)
			return
		}
		if limit > 0 && int64(len(data)) > limit+envelopeAllowance {
			perr = fmt.Errorf("%w: the file grew past %d bytes, over the limit of %d bytes", message.ErrTooBig, len(data), limit)
			data = nil
		}
	}
	qid := fileQID(name, info, data)
	log := s.log.With("qid", qid, "file", name)
	s.mu.Lock()
	sent := s.sent[qid]
	s.mu.Unlock()
	if sent {
		s.remove(log, name, path, qid)
		return
	}
	now := s.now()
	var p *message.Parsed
	if perr == nil {
		p, perr = message.Parse(data, message.Options{
			DefaultDomain: s.domain,
			Hostname:      s.cfg.Hostname,
			QueueID:       qid,
			Now:           now,
			MaxSize:       limit,
		})
	}
	dup := false
	if perr == nil {
		var err error
		dup, err = s.publish(ctx, qid, p, now)
		if errors.Is(err, envelope.ErrMalformed) {
			perr = err
		} else if err != nil {
			log.Warn("publish failed, will retry", "err", err)
			s.setPending(name)
			return
		}
	}
	if perr != nil {
		if err := s.badmail(path, name, qid, info, perr); err != nil {
			log.Error("write badmail failed, will retry", "dir", s.badDir, "reason", perr.Error(), "err", err)
			s.setPending(name)
			return
		}
		s.remove(log, name, path, qid)
		return
	}
	s.mu.Lock()
	s.sent[qid] = true
	s.mu.Unlock()
	s.remove(log, name, path, qid)
	if dup {
		// Queued before a crash, or by another watcher at the same time.
		log.Info("pickup file was already queued", "from", p.From, "rcpts", len(p.Rcpts))
		return
	}
	log.Info("picked up", "from", p.From, "rcpts", len(p.Rcpts), "size", len(p.Message))
	bus.Emit(s.js, bus.Event{Type: bus.EventPickedUp, Time: now.UTC(), QueueID: qid, Domain: bus.DomainOf(p.Rcpts),
		File: filepath.Join(s.dir, name), Sender: p.From, Rcpts: p.Rcpts, RcptCount: len(p.Rcpts), Size: int64(len(p.Message))})
}

// setAside moves the claimed .work/name, which is not a regular file, to
// Badmail as it is, with the reason.
func (s *Service) setAside(name, path string, info fs.FileInfo) {
	qid := fileQID(name, info, nil)
	reason := fmt.Errorf("%w: it is %s", ErrNotRegular, kind(info.Mode()))
	if info.Mode()&fs.ModeSymlink != 0 {
		target, _ := os.Readlink(path)
		reason = fmt.Errorf("%w: it is a symbolic link to %q, which is never followed: put the file itself in Pickup", ErrNotRegular, target)
	}
	if err := s.badmail(path, name, qid, info, reason); err != nil {
		s.log.Error("write badmail failed, will retry", "qid", qid, "file", name, "dir", s.badDir, "reason", reason.Error(), "err", err)
		s.setPending(name)
		return
	}
	s.forget(name, qid)
}

// kind names what a file mode describes, for a Badmail report.
func kind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	case m.IsRegular():
		return "a regular file"
	}
	return "of type " + m.Type().String()
}

// remove deletes a handled file from .work/. If that fails it is retried
// next scan, without handling the file again.
func (s *Service) remove(log *slog.Logger, name, path, qid string) {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.Error("cannot delete handled file, will retry", "err", err)
		s.setPending(name)
		return
	}
	s.forget(name, qid)
}

// forget drops the state of a handled file.
func (s *Service) forget(name, qid string) {
	s.mu.Lock()
	delete(s.sent, qid)
	delete(s.pending, name)
	delete(s.workSeen, name)
	s.mu.Unlock()
}

// setPending marks a .work/ file for another try at the next scan.
func (s *Service) setPending(name string) {
	s.mu.Lock()
	s.pending[name] = true
	s.mu.Unlock()
}

// publish queues the parsed file on mail.in and waits for the PubAck.
// dup reports that JetStream already had it (same Nats-Msg-Id).
func (s *Service) publish(ctx context.Context, qid string, p *message.Parsed, now time.Time) (dup bool, err error) {
	if err := s.Room.Check(ctx, int64(len(p.Message))); err != nil {
		return false, err
	}
	env := &envelope.Envelope{
		QueueID:    qid,
		MsgID:      envelope.PickupID(qid),
		From:       p.From,
		ReceivedAt: now,
		ExpiresAt:  now.Add(s.cfg.Delivery.Expire.D()),
		Source:     Source,
		ClientIP:   Source,
		Hops:       p.Hops,
		SMTPUTF8:   p.SMTPUTF8,
		Body:       envelope.BodyInline,
		BodySize:   int64(len(p.Message)),
	}
	if p.EightBit {
		env.BodyType = "8BITMIME"
	}
	for _, r := range p.Rcpts {
		env.Rcpts = append(env.Rcpts, envelope.Rcpt{Addr: r})
	}
	data := p.Message
	if len(data) > envelope.InlineMax {
		env.Body = envelope.BodyObject
		if err := s.putBody(ctx, qid, data); err != nil {
			return false, err
		}
		data = nil
	}
	msg, err := env.Msg(bus.SubjIn, data)
	if err != nil {
		return false, err
	}
	ack, err := s.Room.Publish(ctx, msg, env.MsgID)
	if err != nil {
		return false, err
	}
	return ack.Duplicate, nil
}

// putBody stores a large body unless an earlier try already did: a body
// the router may be reading must not be replaced under it.
func (s *Service) putBody(ctx context.Context, qid string, data []byte) error {
	r, err := s.bodies.Open(ctx, &envelope.Envelope{QueueID: qid, Body: envelope.BodyObject}, nil)
	if err == nil {
		r.Close()
		return nil
	}
	if !errors.Is(err, jetstream.ErrObjectNotFound) {
		return err
	}
	_, err = s.bodies.Put(ctx, qid, bytes.NewReader(data))
	return err
}

// badmail writes the claimed file as it is into Badmail with the reason:
// a regular file is copied, anything else moved in (never opened).
func (s *Service) badmail(path, name, qid string, info fs.FileInfo, reason error) error {
	entry := badfile.Entry{Name: qid, Alt: "pickup", Key: "pickup " + qid}
	if info.Mode().IsRegular() {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		entry.Data = f
	} else {
		entry.Path = path
	}
	var b strings.Builder
	b.WriteString("Mailroot Badmail report\n\n")
	fmt.Fprintf(&b, "The Pickup directory could not take this file:\n  %s\n\n", reason.Error())
	row := func(k, v string) { fmt.Fprintf(&b, "%-17s %s\n", k+":", v) }
	row("Time", s.now().UTC().Format(time.RFC3339))
	row("Reason", reason.Error())
	row("Original file", fmt.Sprintf("%q", name))
	row("Pickup dir", s.dir)
	row("File type", kind(info.Mode()))
	row("File size", fmt.Sprintf("%d bytes", info.Size()))
	row("File modified", info.ModTime().UTC().Format(time.RFC3339Nano))
	row("Queue ID", qid)
	row("Host", s.cfg.Hostname)
	entry.Report = b.String()
	res, err := badfile.Write(s.badDir, entry)
	if err != nil {
		return err
	}
	s.log.Warn("pickup file rejected", "qid", qid, "file", name, "reason", reason.Error(), "badmail", res.Name+badfile.ExtBAD)
	bus.Emit(s.js, bus.Event{Type: bus.EventBadmail, QueueID: qid, Reason: reason.Error(), File: filepath.Join(s.dir, name)})
	return nil
}

// qidEncoding renders queue ids: upper-case base32, valid in subjects,
// file names and headers.
var qidEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// fileQID derives the queue id of a claimed file from what identifies it
// across a crash: name, size, mtime, inode and the bytes read. The same
// file handled twice gets the same id, so its publish is deduplicated.
func fileQID(name string, info fs.FileInfo, data []byte) string {
	h := sha256.New()
	var n [8]byte
	h.Write([]byte(name))
	h.Write([]byte{0})
	binary.BigEndian.PutUint64(n[:], uint64(info.Size()))
	h.Write(n[:])
	binary.BigEndian.PutUint64(n[:], uint64(info.ModTime().UnixNano()))
	h.Write(n[:])
	binary.BigEndian.PutUint64(n[:], inode(info))
	h.Write(n[:])
	sum := sha256.Sum256(data)
	h.Write(sum[:])
	return qidEncoding.EncodeToString(h.Sum(nil))[:26]
}

// Backlog is how many files wait in Pickup/ and its work folder, not
// yet queued (names starting with "." other than the work folder's files
// are not mail). It reads the directories' names, nothing more.
func (s *Service) Backlog() int {
	return countNames(s.dir) + countNames(s.work)
}

func countNames(dir string) int {
	f, err := os.Open(dir)
	if err != nil {
		return 0
	}
	defer f.Close()
	n := 0
	for {
		names, err := f.Readdirnames(1024)
		for _, name := range names {
			if !strings.HasPrefix(name, ".") {
				n++
			}
		}
		if err != nil {
			return n
		}
	}
}
