// Package badmail is the last stop of Mailroot's flow: it consumes the
// dead letters on mail.bad (poison messages moved there by any worker,
// double bounces, mail with a null sender that failed, malformed envelopes)
// and writes each one into the Badmail directory in the IIS layout, so an
// operator can inspect it with nothing but a text editor (docs/DESIGN.md §4):
//
//	Badmail/<qid>.BAD   the message exactly as queued
//	Badmail/<qid>.BDR   a plain-text report: why, when, where from, the
//	                    envelope and every original header
//
// Both files are written through internal/badfile (temp file, fsync,
// no-replace move, directory fsync; .BAD before .BDR), and only then is the
// stream message acknowledged (DoubleAck) and its Object Store body
// released. A queue id that goes bad twice (two recipients failing at
// different times) gets a second entry "<qid>-<seq>" named after the
// stream sequence, and a redelivered message finds its own entry and is
// acknowledged without writing a duplicate.
//
// Badmail cannot hand a message on to anyone, so it never gives up: when
// the directory cannot be written (missing, not a directory, disk full) the
// message is Nak'ed with a delay and retried for as long as it takes. The
// badmail consumer therefore has no MaxDeliver (bus.EnsureConsumer) and its
// bus.Worker runs with NoPoison: the usual "move to mail.bad before
// MaxDeliver" rule would only loop here.
package badmail

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/badfile"
	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/dsn"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/metrics"
	"github.com/mailroot/mailroot/internal/notify"
)

// Defaults of the Service knobs.
const (
	// DefaultRetryDelay is how long a message waits after Badmail could not
	// be written.
	DefaultRetryDelay = 10 * time.Second
	// DefaultSlots is how many messages are written at once.
	DefaultSlots = 4
)

// ErrNoJetStream is returned by New without a JetStream context.
var ErrNoJetStream = errors.New("badmail: no JetStream context")

// Service writes mail.bad into the Badmail directory.
type Service struct {
	// RetryDelay is the Nak delay after a failed write (DefaultRetryDelay
	// when zero). Tests shorten it.
	RetryDelay time.Duration
	// Slots is how many messages are handled at once (DefaultSlots when
	// zero).
	Slots int
	// Room publishes the reports to senders (Room.Forward); New makes one
	// that checks the store's limit, `mailroot all` shares its own.
	Room *bus.Room
	// Metrics counts the entries written; nil: metrics of its own that
	// nothing serves.
	Metrics *metrics.Metrics

	m      *metrics.Metrics
	cfg    config.Config
	log    *slog.Logger
	js     jetstream.JetStream
	dir    string
	bodies *bus.Bodies
	notify *notify.Notifier
	// streamCreated tells stream incarnations apart in entry keys, so a
	// recreated stream reusing sequence numbers is not mistaken for a
	// redelivery.
	streamCreated time.Time
	now           func() time.Time
}

// New returns a badmail service writing cfg.BadmailDir(). It does no I/O;
// Run sets up the consumer.
func New(cfg config.Config, log *slog.Logger, js jetstream.JetStream) (*Service, error) {
	if js == nil {
		return nil, ErrNoJetStream
	}
	if log == nil {
		log = slog.Default()
	}
	s := &Service{
		m:      metrics.New(), // until Run takes the node's
		cfg:    cfg,
		log:    log.With("svc", "badmail"),
		js:     js,
		dir:    cfg.BadmailDir(),
		now:    time.Now,
		notify: notify.NewNotifier(cfg, js, nil), // Run adds the bodies
		Room:   &bus.Room{JS: js, Reserve: cfg.NATS.Reserve},
	}
	s.notify.Now = func() time.Time { return s.now() }
	return s, nil
}

// Run consumes mail.bad until ctx is done, then lets the messages in hand
// finish and returns.
func (s *Service) Run(ctx context.Context) error {
	if s.Metrics != nil {
		s.m = s.Metrics
	}
	cons, err := bus.Setup(ctx, s.js, s.cfg, bus.ConsumerBadmail)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return fmt.Errorf("badmail: %w", err)
	}
	if s.bodies, err = bus.OpenBodies(ctx, s.js); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("badmail: %w", err)
	}
	s.notify.Bodies, s.notify.Room = s.bodies, s.Room
	if st, err := s.js.Stream(ctx, bus.StreamMail); err == nil {
		s.streamCreated = st.CachedInfo().Created
	}
	if n := badfile.CleanTemp(s.dir, time.Hour); n > 0 {
		s.log.Info("removed stale temp files", "dir", s.dir, "count", n)
	}
	slots := s.Slots
	if slots <= 0 {
		slots = DefaultSlots
	}
	w := &bus.Worker{
		Room:     s.Room,
		Consumer: cons[bus.ConsumerBadmail],
		Slots:    slots,
		Log:      s.log,
		NoPoison: true,
	}
	s.log.Info("badmail started", "dir", s.dir)
	return w.Run(ctx, s.handle)
}

// handle writes one dead letter and acks it, or Naks it for a retry.
func (s *Service) handle(ctx context.Context, m jetstream.Msg) {
	var seq uint64
	var delivered uint64
	if md, err := m.Metadata(); err == nil {
		seq, delivered = md.Sequence.Stream, md.NumDelivered
	}
	h := m.Headers()
	if h == nil {
		h = nats.Header{}
	}
	qid := h.Get(envelope.HdrQueueID)
	if !envelope.ValidQueueID(qid) {
		qid = "seq" + strconv.FormatUint(seq, 10)
	}
	log := s.log.With("qid", qid, "seq", seq)
	env, derr := envelope.Decode(h)

	// Mail with a sender is never parked here in silence: the sender gets
	// a non-delivery report first (idempotent: a redelivery republishes the
	// same id), and the .BDR says so.
	var told string
	if derr == nil {
		var err error
		if told, err = s.tellSender(ctx, seq, env, h.Get(envelope.HdrReason), m.Data()); err != nil {
			s.retry(log, m, delivered, fmt.Errorf("report to the sender: %w", err))
			return
		}
	}

	body, note, err := s.openBody(ctx, h, env, derr, m.Data())
	if err != nil {
		s.retry(log, m, delivered, err)
		return
	}
	defer body.Close()

	report := s.report(m.Subject(), seq, qid, h, env, derr, note, len(m.Data()))
	if told != "" {
		report = strings.Replace(report, "\nOriginal headers:\n", "\n"+told+"\n\nOriginal headers:\n", 1)
	}
	res, err := badfile.Write(s.dir, badfile.Entry{
		Name:   qid,
		Alt:    strconv.FormatUint(seq, 10),
		Key:    s.key(seq),
		Data:   body,
		Report: report,
	})
	if err != nil {
		s.retry(log, m, delivered, err)
		return
	}
	if err := m.DoubleAck(ctx); err != nil {
		// The entry is durable; the redelivery will find it and ack.
		log.Warn("ack after writing badmail failed", "file", res.Name, "err", err)
		return
	}
	if derr == nil && env.Body == envelope.BodyObject {
		if err := s.bodies.Release(ctx, env); err != nil {
			log.Warn("release body failed (the bucket TTL will remove it)", "err", err)
		}
	}
	reason := h.Get(envelope.HdrReason)
	if res.Existed {
		log.Info("badmail entry already written", "file", res.Name, "reason", reason)
		return
	}
	s.m.Badmail.Inc()
	log.Warn("badmail", "reason", reason, "file", res.Name+badfile.ExtBAD, "subject", h.Get(envelope.HdrBadSubject))
}

// tellSender sends the sender of env a failure report for every
// recipient, with the reason the message is in Badmail, and returns the
// line the .BDR gets about it ("" for mail that has no one to tell: the
// null sender, a report itself).
func (s *Service) tellSender(ctx context.Context, seq uint64, env *envelope.Envelope, reason string, data []byte) (string, error) {
	if env.From == "" || env.Source == dsn.Source {
		return "", nil
	}
	status := enhancedRE.FindString(reason)
	if status == "" || status[0] != '5' {
		status = "5.3.0" // other or undefined mail system status (RFC 3463)
	}
	detail := "the message could not be processed and was moved to Badmail: " + reason
	st := make([]dsn.Status, len(env.Rcpts))
	for i, r := range env.Rcpts {
		st[i] = dsn.Status{Rcpt: r, Action: dsn.ActionFailed, Status: status, Detail: detail}
	}
	qid, err := s.notify.Send(ctx, dsn.Notice{
		Kind: dsn.Failure, ID: envelope.BadmailDSNID(env.QueueID, seq), Env: env, Data: data, Rcpts: st, LastAttempt: s.now(),
	})
	if err != nil {
		return "", err
	}
	if qid == "" {
		return "Sender report:   none: the recipients asked for none (NOTIFY=NEVER)", nil
	}
	return "Sender report:   non-delivery report " + qid + " queued to <" + env.From + ">", nil
}

// retry logs a failed write and asks for the message again later. Badmail
// never acks what it has not written.
func (s *Service) retry(log *slog.Logger, m jetstream.Msg, delivered uint64, err error) {
	delay := s.RetryDelay
	if delay <= 0 {
		delay = DefaultRetryDelay
	}
	log.Error("write badmail failed, will retry", "dir", s.dir, "delivered", delivered, "retry_in", delay, "err", err)
	if nerr := m.NakWithDelay(delay); nerr != nil {
		log.Warn("nak failed (AckWait will redeliver)", "err", nerr)
	}
}

// key identifies one stream message across redeliveries.
func (s *Service) key(seq uint64) string {
	k := bus.StreamMail + " seq " + strconv.FormatUint(seq, 10)
	if !s.streamCreated.IsZero() {
		k += " (stream created " + s.streamCreated.UTC().Format(time.RFC3339Nano) + ")"
	}
	return k
}

// openBody returns the message bytes to write: the inline data, or the
// Object Store body. A body that is gone from the Object Store cannot come
// back, so the (empty) data is written with a note rather than retrying for
// ever; any other error is temporary.
func (s *Service) openBody(ctx context.Context, h nats.Header, env *envelope.Envelope, derr error, data []byte) (io.ReadCloser, string, error) {
	if derr != nil {
		// Malformed envelope: the data as it is, unless it plainly points
		// at a stored body that still exists.
		qid := h.Get(envelope.HdrQueueID)
		if h.Get(envelope.HdrBody) != envelope.BodyObject || len(data) > 0 || !envelope.ValidQueueID(qid) {
			return io.NopCloser(bytes.NewReader(data)), "", nil
		}
		env = &envelope.Envelope{QueueID: qid, Body: envelope.BodyObject}
	}
	if env.Body != envelope.BodyObject {
		return io.NopCloser(bytes.NewReader(data)), "", nil
	}
	r, err := s.bodies.Open(ctx, env, data)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return io.NopCloser(bytes.NewReader(data)), "body " + env.QueueID + " is no longer in the Object Store " + bus.BucketBodies + "; the .BAD file holds only what the message carried", nil
	}
	if err != nil {
		return nil, "", err
	}
	return r, "from Object Store " + bus.BucketBodies, nil
}

// enhancedRE finds an RFC 3463 enhanced status code in a reply text.
var enhancedRE = regexp.MustCompile(`\b[245]\.\d{1,3}\.\d{1,3}\b`)

// report renders the .BDR text.
func (s *Service) report(subject string, seq uint64, qid string, h nats.Header, env *envelope.Envelope, derr error, bodyNote string, dataLen int) string {
	var b strings.Builder
	field := func(name, v string) {
		if v == "" {
			return
		}
		fmt.Fprintf(&b, "%-17s %s\n", name+":", printable(v))
	}
	reason := h.Get(envelope.HdrReason)
	if reason == "" {
		reason = "(no reason given)"
	}
	b.WriteString("Mailroot Badmail report\n\n")
	fmt.Fprintf(&b, "Unable to deliver this message because of the following error:\n  %s\n\n", printable(reason))

	field("Time", s.now().UTC().Format(time.RFC3339))
	field("Reason", reason)
	status := enhancedRE.FindString(reason)
	if status == "" {
		status = enhancedRE.FindString(h.Get(envelope.HdrLastError))
	}
	field("Enhanced status", status)
	field("Last error", h.Get(envelope.HdrLastError))
	field("Remote host", h.Get(envelope.HdrRemote))
	field("Attempts", h.Get(envelope.HdrAttempt))
	field("Moved from", h.Get(envelope.HdrBadSubject))
	field("Queue ID", qid)
	field("Stream", fmt.Sprintf("%s seq %d, subject %s", bus.StreamMail, seq, subject))
	if derr == nil {
		field("Sender", "<"+env.From+">")
		for _, r := range h.Values(envelope.HdrRcpt) {
			field("Recipient", r)
		}
		field("Client IP", env.ClientIP)
		field("Client HELO", env.Helo)
		field("Auth user", env.AuthUser)
		field("Source", env.Source)
		if !env.ReceivedAt.IsZero() {
			field("Received at", env.ReceivedAt.UTC().Format(time.RFC3339))
		}
		if !env.ExpiresAt.IsZero() {
			field("Expires at", env.ExpiresAt.UTC().Format(time.RFC3339))
		}
		field("Envelope", "well-formed")
	} else {
		// Show what is there, as it is.
		for _, v := range h.Values(envelope.HdrMailFrom) {
			field("Sender", v)
		}
		for _, v := range h.Values(envelope.HdrRcpt) {
			field("Recipient", v)
		}
		field("Client IP", h.Get(envelope.HdrClientIP))
		field("Client HELO", h.Get(envelope.HdrHelo))
		field("Source", h.Get(envelope.HdrSource))
		field("Envelope", "MALFORMED: "+derr.Error())
	}
	size := fmt.Sprintf("%d bytes inline", dataLen)
	if bodyNote != "" {
		size = bodyNote
		if bs := h.Get(envelope.HdrBodySize); bs != "" {
			size = bs + " bytes, " + bodyNote
		}
	}
	field("Message", size)

	b.WriteString("\nOriginal headers:\n")
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range h[k] {
			fmt.Fprintf(&b, "  %s: %s\n", printable(k), printable(v))
		}
	}
	return b.String()
}

// printable returns s, or s quoted Go-style when it holds control or other
// non-printing characters, so the report stays one field per line.
func printable(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) && r != ' ' {
			return strconv.Quote(s)
		}
	}
	return s
}
