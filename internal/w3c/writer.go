// Package w3c writes SMTP transaction logs in the W3C Extended Log File
// Format (https://www.w3.org/TR/WD-logfile.html), as IIS's SMTP service
// wrote them by default: one file per site and UTC day named exYYMMDD.log,
// a block of directives (#Software, #Version: 1.0, #Date, #Fields) at the
// top of every file and again each time the file is opened, then one line
// per SMTP command with its reply (see Entry and Fields).
//
// Writing never slows the SMTP session nor fails mail: Log hands the
// entry to a queue and returns; one goroutine per Writer formats the
// lines into a buffer of whole lines, written every FlushInterval, when
// it holds 64 KiB, and on Close; the file is opened O_APPEND and every
// write is whole lines, so ingress processes sharing a log_dir never
// split each other's lines. When the queue is full, entries are dropped
// and counted (Dropped). A write error (a full disk) is logged once;
// lines are dropped until the file can be written again, which is tried
// once a minute, and the recovery is logged.
//
// Never logged: AUTH payloads (the caller gives the mechanism alone) and
// message content (a DATA line carries the queue id).
package w3c

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Fields are the fields of every line, in order: IIS's SMTP set.
//
//   - c-ip, s-ip, s-port: the client's address, and the address and port
//     it connected to.
//   - cs-username: the client's EHLO/HELO name, as IIS wrote it ("-"
//     before it greeted).
//   - s-sitename, s-computername: the site's name and host name.
//   - cs-method, cs-uri-query: the command's verb and its argument (for
//     AUTH the mechanism alone; for DATA and BDAT the queue id of the
//     accepted message).
//   - sc-status: the reply code (the last line of the reply, the final
//     one for DATA and AUTH); sc-bytes and cs-bytes: reply bytes and
//     bytes from the client for the command (message content included).
//   - time-taken: milliseconds from the command to its reply.
//   - cs-version: "SMTP", or "ESMTP" after EHLO; cs(User-Agent): "-".
var Fields = []string{"date", "time", "c-ip", "cs-username", "s-sitename", "s-computername", "s-ip", "s-port",
	"cs-method", "cs-uri-query", "sc-status", "sc-bytes", "cs-bytes", "time-taken", "cs-version", "cs(User-Agent)"}

// Entry is one line: one SMTP command and its reply.
type Entry struct {
	// Time is when the reply was given; zero: the Writer's clock now.
	Time time.Time
	// ClientIP is the client's address; ServerIP and ServerPort what it
	// connected to.
	ClientIP, ServerIP string
	ServerPort         int
	// Username is the EHLO/HELO name (cs-username, as IIS had it).
	Username string
	// Method is the command verb, Query its argument.
	Method, Query string
	// Status is the reply code.
	Status int
	// BytesSent and BytesReceived are sc-bytes and cs-bytes.
	BytesSent, BytesReceived int64
	// TimeTaken is from the command to its reply.
	TimeTaken time.Duration
	// Version is cs-version ("SMTP" or "ESMTP"); UserAgent cs(User-Agent).
	Version, UserAgent string
}

// Options configure a Writer.
type Options struct {
	// Dir holds the files, created if missing.
	Dir string
	// Site and Computer are s-sitename and s-computername of every line.
	Site, Computer string
	// Software is the #Software directive; "" is "Mailroot".
	Software string
	// FlushInterval is how long a line waits in the buffer at most; 0 is
	// one second.
	FlushInterval time.Duration
	// QueueLen is how many entries wait for the writer before Log drops;
	// 0 is 8192.
	QueueLen int
	// Now is the clock stamping entries and directives; nil is time.Now.
	Now func() time.Time
	// Log is told about write errors, once until writing works again.
	Log *slog.Logger
}

// RetryAfter is how long after a write error the file is tried again.
const RetryAfter = time.Minute

// FileName is the file of day t (UTC): exYYMMDD.log, as IIS named it.
func FileName(t time.Time) string { return t.UTC().Format("ex060102.log") }

// Writer writes one site's log. Its methods are safe for concurrent use.
type Writer struct {
	o       Options
	ch      chan Entry
	done    chan struct{}
	mu      sync.RWMutex // closed, and sends on ch
	closed  bool
	dropped atomic.Uint64
	lines   atomic.Uint64

	// Used by the writer goroutine only.
	f         *os.File
	pend      []byte // whole lines not yet written
	pendLines uint64 // entries among them
	day       string // YYMMDD of the open file
	failing   bool   // lines are dropped until retryAt
	reported  bool   // the error is logged; cleared by a successful write
	retryAt   time.Time
	lastDrops uint64
	warnedAt  time.Time
	buf       []byte
}

// Open creates o.Dir if needed and starts the writer; the first file is
// opened with the first entry.
func Open(o Options) (*Writer, error) {
	if o.Software == "" {
		o.Software = "Mailroot"
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = time.Second
	}
	if o.QueueLen <= 0 {
		o.QueueLen = 8192
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	o.Log = o.Log.With("site", o.Site, "dir", o.Dir)
	if err := os.MkdirAll(o.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("w3c: %w", err)
	}
	w := &Writer{o: o, ch: make(chan Entry, o.QueueLen), done: make(chan struct{})}
	go w.run()
	return w, nil
}

// Log queues e; it never blocks. After Close, or with the queue full, e
// is dropped and counted.
func (w *Writer) Log(e Entry) {
	if e.Time.IsZero() {
		e.Time = w.o.Now()
	}
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		w.dropped.Add(1)
		return
	}
	select {
	case w.ch <- e:
	default:
		w.dropped.Add(1)
	}
}

// Dropped is how many entries were not written: queue full, write
// errors, or logged after Close.
func (w *Writer) Dropped() uint64 { return w.dropped.Load() }

// Lines is how many lines were handed to the file (buffered or written).
func (w *Writer) Lines() uint64 { return w.lines.Load() }

// Close writes what is queued, flushes and closes the file.
func (w *Writer) Close() error {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.ch)
	}
	w.mu.Unlock()
	<-w.done
	return nil
}

func (w *Writer) run() {
	defer close(w.done)
	t := time.NewTicker(w.o.FlushInterval)
	defer t.Stop()
	for {
		select {
		case e, ok := <-w.ch:
			if !ok {
				w.flush()
				w.closeFile()
				return
			}
			w.write(e)
		case <-t.C:
			w.flush()
			// Lines dropped with the queue full (the writer behind): said
			// at most once a minute.
			if d := w.dropped.Load(); d != w.lastDrops && !w.reported && time.Since(w.warnedAt) >= time.Minute {
				w.o.Log.Warn("transaction log lines dropped: the writer cannot keep up", "dropped_total", d)
				w.lastDrops, w.warnedAt = d, time.Now()
			}
		}
	}
}

// write appends e to the file of its day, opening (rotating) as needed.
func (w *Writer) write(e Entry) {
	t := e.Time.UTC()
	day := t.Format("060102")
	if w.failing {
		if w.o.Now().Before(w.retryAt) {
			w.dropped.Add(1)
			return
		}
		w.failing, w.day = false, "" // try again: reopen
	}
	if w.f == nil || day != w.day {
		w.flush()
		w.closeFile()
		if err := w.open(t); err != nil {
			w.fail(err)
			w.dropped.Add(1)
			return
		}
		w.day = day
	}
	w.buf = appendLine(w.buf[:0], &w.o, &e, t)
	if len(w.pend)+len(w.buf) > bufSize {
		w.flush()
		if w.f == nil {
			w.dropped.Add(1)
			return
		}
	}
	w.pend = append(w.pend, w.buf...)
	w.pendLines++
	w.lines.Add(1)
}

// open opens the file of day t for appending and writes the directives.
func (w *Writer) open(t time.Time) error {
	name := filepath.Join(w.o.Dir, FileName(t))
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	w.f = f
	now := w.o.Now().UTC()
	if now.Format("060102") != t.Format("060102") {
		now = t // an entry of another day than the clock's: its own time
	}
	w.pend = fmt.Appendf(w.pend[:0], "#Software: %s\r\n#Version: 1.0\r\n#Date: %s\r\n#Fields:", w.o.Software, now.Format("2006-01-02 15:04:05"))
	for _, f := range Fields {
		w.pend = append(append(w.pend, ' '), f...)
	}
	w.pend = append(w.pend, '\r', '\n')
	w.pendLines = 0
	return nil
}

// fail notes a write error: logged once, then lines are dropped until
// RetryAfter has passed.
func (w *Writer) fail(err error) {
	if !w.reported {
		w.reported = true
		w.o.Log.Error("transaction log write failed, its lines are dropped until it can be written again", "err", err, "retry_in", RetryAfter)
	}
	w.failing = true
	w.retryAt = w.o.Now().Add(RetryAfter)
	if w.f != nil {
		_ = w.f.Close()
	}
	w.f = nil
	w.dropped.Add(w.pendLines)
	w.pend, w.pendLines = w.pend[:0], 0
}

// bufSize is how many bytes of lines wait for a write at most.
const bufSize = 64 << 10

// flush writes the pending lines in one write: only whole lines, so that
// processes appending to one file (O_APPEND) never split each other's.
func (w *Writer) flush() {
	if w.f == nil || len(w.pend) == 0 {
		return
	}
	if _, err := w.f.Write(w.pend); err != nil {
		w.fail(err) // counts the pending lines as dropped
		return
	}
	w.pend, w.pendLines = w.pend[:0], 0
	if w.reported {
		w.reported = false
		w.lastDrops = w.dropped.Load()
		w.o.Log.Info("transaction log writable again", "file", w.f.Name(), "dropped_total", w.lastDrops)
	}
}

func (w *Writer) closeFile() {
	if w.f == nil {
		return
	}
	if err := w.f.Close(); err != nil && !w.failing {
		w.o.Log.Error("transaction log close failed", "err", err)
	}
	w.f = nil
}

// appendLine formats e as one line with every field of Fields.
func appendLine(b []byte, o *Options, e *Entry, t time.Time) []byte {
	b = t.AppendFormat(b, "2006-01-02 15:04:05")
	b = appendField(b, e.ClientIP)
	b = appendField(b, e.Username)
	b = appendField(b, o.Site)
	b = appendField(b, o.Computer)
	b = appendField(b, e.ServerIP)
	b = appendNum(b, int64(e.ServerPort))
	b = appendField(b, e.Method)
	b = appendField(b, e.Query)
	b = append(b, ' ')
	if e.Status >= 100 && e.Status <= 999 {
		b = strconv.AppendInt(b, int64(e.Status), 10)
	} else {
		b = append(b, None...)
	}
	b = appendNum(b, e.BytesSent)
	b = appendNum(b, e.BytesReceived)
	b = appendNum(b, e.TimeTaken.Milliseconds())
	b = appendField(b, e.Version)
	b = appendField(b, e.UserAgent)
	return append(b, '\r', '\n')
}

func appendField(b []byte, s string) []byte {
	return append(append(b, ' '), Escape(s)...)
}

func appendNum(b []byte, n int64) []byte {
	b = append(b, ' ')
	if n < 0 {
		return append(b, None...)
	}
	return strconv.AppendInt(b, n, 10)
}
