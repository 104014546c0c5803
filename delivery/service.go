package delivery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/release"
)

// DropSlots is how many Drop files are written at once.
const DropSlots = 4

// shutdownNakDelay is how long a message interrupted by shutdown waits
// before redelivery: just past bus.Worker's 5 s pull expiry, so that it goes
// to a live worker rather than to this process's abandoned pull requests.
const shutdownNakDelay = 6 * time.Second

// settleTimeout bounds the publishes and acks that settle a message after
// its SMTP transaction, which run even while shutting down.
const settleTimeout = 30 * time.Second

// Service delivers queued mail to remote servers and writes local mail to
// the Drop directory. The exported fields are test seams; New sets them to
// working defaults.
type Service struct {
	// Now returns the current time: retry times and expiry use it.
	Now func() time.Time
	// Dial opens a TCP connection to a remote SMTP server; ctx carries the
	// connect timeout.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// DropRetryDelay is how long a message waits before the Drop writer
	// tries again after a write error (default 30 s).
	DropRetryDelay time.Duration
	// Grace is how long in-flight messages may finish after Run's context
	// is done (default: bus.Worker's 10 s).
	Grace time.Duration

	cfg    config.Config
	log    *slog.Logger
	js     jetstream.JetStream
	dns    *resolver
	bodies *bus.Bodies
	stream jetstream.Stream
}

// New returns a delivery service for cfg. It does not touch the network;
// Run does.
func New(cfg config.Config, log *slog.Logger, js jetstream.JetStream) (*Service, error) {
	if js == nil {
		return nil, errors.New("delivery: no JetStream context")
	}
	if log == nil {
		log = slog.Default()
	}
	if strings.TrimSpace(cfg.Hostname) == "" {
		return nil, errors.New("delivery: hostname is empty")
	}
	if len(cfg.Delivery.Retry) == 0 {
		return nil, errors.New("delivery: retry ladder is empty")
	}
	server := cfg.Delivery.DNSServer
	if server == "" {
		var err error
		server, err = systemDNS()
		if err != nil {
			if cfg.Delivery.SmartHost == "" {
				return nil, err
			}
			log.Warn("no DNS server, smart host must be an IP address", "err", err)
		}
	}
	dialer := &net.Dialer{Timeout: cfg.Delivery.ConnectTimeout.D()}
	return &Service{
		Now:            time.Now,
		Dial:           dialer.DialContext,
		DropRetryDelay: 30 * time.Second,
		cfg:            cfg,
		log:            log.With("svc", "delivery"),
		js:             js,
		dns:            &resolver{server: server, timeout: cfg.Delivery.ConnectTimeout.D()},
	}, nil
}

// Run creates the stream and consumers if needed and works the delivery
// and drop consumers until ctx is done. It then stops pulling, lets
// in-flight messages finish and returns.
func (s *Service) Run(ctx context.Context) error {
	cons, err := bus.Setup(ctx, s.js, s.cfg, bus.ConsumerDelivery, bus.ConsumerDrop)
	if err == nil {
		s.bodies, err = bus.OpenBodies(ctx, s.js)
	}
	if err == nil {
		s.stream, err = s.js.Stream(ctx, bus.StreamMail)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil // shut down before we started
		}
		return fmt.Errorf("delivery: start: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	workers := []struct {
		w *bus.Worker
		h bus.Handler
	}{
		{&bus.Worker{JS: s.js, Consumer: cons[bus.ConsumerDelivery], Slots: s.cfg.Delivery.Concurrency, Log: s.log, Grace: s.Grace}, s.handleOut},
		{&bus.Worker{JS: s.js, Consumer: cons[bus.ConsumerDrop], Slots: DropSlots, Log: s.log.With("part", "drop"), Grace: s.Grace}, s.handleDrop},
	}
	errs := make([]error, len(workers))
	var wg sync.WaitGroup
	// ETRN release worker (issue 6): answers mta.ctl.release requests.
	wg.Go(func() { _ = release.New(s.cfg, s.log, s.js).Run(ctx) })
	for i, w := range workers {
		wg.Go(func() {
			if errs[i] = w.w.Run(ctx, w.h); errs[i] != nil {
				cancel() // one loop failed to start: stop the other
			}
		})
	}
	s.log.Info("delivery running", "slots", s.cfg.Delivery.Concurrency, "smart_host", s.cfg.Delivery.SmartHost, "dns", s.dns.server)
	wg.Wait()
	return errors.Join(errs...)
}

// handleOut makes one delivery attempt for a message of mail.out.<tok>
// and settles it: ack, retry schedule, or Badmail.
func (s *Service) handleOut(ctx context.Context, m jetstream.Msg) {
	env, err := envelope.Decode(m.Headers())
	if err != nil {
		s.toBad(ctx, m, "delivery: undecodable envelope")
		return
	}
	tok := strings.TrimPrefix(m.Subject(), bus.SubjOutPrefix)
	domain := envelope.NormalizeDomain(env.Domain)
	if domain == "" {
		domain = envelope.Domain(env.Rcpts[0].Addr)
	}
	log := s.log.With("qid", env.QueueID, "domain", domain)
	if md, err := m.Metadata(); err == nil && md.NumDelivered > 1 && s.alreadyRescheduled(ctx, tok, env) {
		// A previous worker published the retry schedule but died
		// before acking this message (nats-notes §4.4).
		log.Info("retry already scheduled, dropping redelivered copy", "attempt", env.Attempt)
		_ = m.DoubleAck(ctx)
		return
	}
	if env.Body != envelope.BodyObject && env.BodySize == 0 {
		env.BodySize = int64(len(m.Data()))
	}
	open := func(ctx context.Context) (io.ReadCloser, error) { return s.bodies.Open(ctx, env, m.Data()) }

	res := s.deliver(ctx, env, domain, open)
	now := s.Now()

	var delivered, temp []envelope.Rcpt
	var tempErrs []*Error
	var perm []failure
	for i, e := range res.errs {
		switch {
		case e == nil:
			delivered = append(delivered, env.Rcpts[i])
		case e.Permanent:
			perm = addFailure(perm, env.Rcpts[i], e)
		default:
			temp = append(temp, env.Rcpts[i])
			tempErrs = append(tempErrs, e)
		}
	}
	if ctx.Err() != nil && len(temp) > 0 {
		// Shut down mid-transaction: give the message back so another
		// worker takes it soon. Not a plain Nak: bus.Worker has stopped
		// its iterator, but its pull requests stay on the server until
		// they expire, and the server would hand the message straight
		// back to one of them, where it would sit until AckWait.
		log.Info("delivery interrupted, message returned to the queue")
		if err := m.NakWithDelay(shutdownNakDelay); err != nil {
			log.Warn("nak failed", "err", err)
		}
		return
	}
	// From here on the message is settled even if shutdown began.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()

	attempt := env.Attempt + 1
	expires := env.ExpiresAt
	if expires.IsZero() {
		if !env.ReceivedAt.IsZero() {
			expires = env.ReceivedAt.Add(s.cfg.Delivery.Expire.D())
		} else {
			expires = now.Add(s.cfg.Delivery.Expire.D())
		}
	}
	if len(temp) > 0 && !now.Before(expires) {
		for i, r := range temp {
			perm = addFailure(perm, r, &Error{
				Permanent: true,
				Enhanced:  "4.4.7",
				Message:   fmt.Sprintf("message expired after %d attempts: %s", attempt, tempErrs[i].Error()),
				Err:       tempErrs[i],
			})
		}
		temp, tempErrs = nil, nil
	}

	// Every envelope published below refers to the body; the message
	// being settled held one reference.
	successors := len(perm)
	if len(temp) > 0 {
		successors++
	}
	if successors > 1 {
		if err := s.bodies.Retain(sctx, env, successors-1); err != nil {
			log.Error("retain body failed", "err", err)
			_ = m.NakWithDelay(time.Minute)
			return
		}
	}
	for i, f := range perm {
		id := fmt.Sprintf("%s.%s.bad%d", env.QueueID, tok, attempt)
		if i > 0 {
			id += fmt.Sprintf("-%d", i)
		}
		if err := s.permanentFailure(sctx, env, m.Data(), f, attempt, now, id); err != nil {
			log.Error("publish to badmail failed", "err", err)
			_ = m.NakWithDelay(time.Minute)
			return
		}
		log.Warn("delivery failed permanently", "rcpts", describe(f.rcpts), "remote", f.err.Remote, "attempt", attempt, "reason", f.err.Error())
	}
	if len(temp) > 0 {
		at, err := s.reschedule(sctx, env, tok, m.Data(), temp, tempErrs[0], attempt, now, expires)
		if err != nil {
			log.Error("publish retry schedule failed", "err", err)
			_ = m.NakWithDelay(time.Minute)
			return
		}
		log.Info("delivery deferred", "rcpts", describe(temp), "remote", tempErrs[0].Remote, "attempt", attempt, "next", at, "err", tempErrs[0].Error())
	}
	if err := m.DoubleAck(sctx); err != nil {
		// Redelivery is safe: the successors are deduplicated by id and
		// the crash-window guard drops the copy.
		log.Warn("ack failed", "err", err)
		return
	}
	if len(delivered) > 0 {
		log.Info("delivered", "remote", res.remote, "tls", res.tls, "rcpts", describe(delivered), "attempt", attempt)
	}
	if successors == 0 {
		if err := s.bodies.Release(sctx, env); err != nil {
			log.Warn("release body failed", "err", err)
		}
	}
}

// failure is a group of recipients that failed permanently with one error.
type failure struct {
	rcpts []envelope.Rcpt
	err   *Error
}

// addFailure adds r to the group with the same error text, or a new one.
func addFailure(fs []failure, r envelope.Rcpt, e *Error) []failure {
	for i := range fs {
		if fs[i].err.Error() == e.Error() {
			fs[i].rcpts = append(fs[i].rcpts, r)
			return fs
		}
	}
	return append(fs, failure{rcpts: []envelope.Rcpt{r}, err: e})
}

// permanentFailure is where recipients leave the delivery flow for good:
// it publishes a copy of env with just those recipients and the reason to
// mail.bad (msgID makes it idempotent). The copy refers to the same body: the
// same inline data, or the same Object Store object, whose reference it now
// holds. Non-delivery reports to the sender will be generated from here.
func (s *Service) permanentFailure(ctx context.Context, env *envelope.Envelope, data []byte, f failure, attempt int, now time.Time, msgID string) error {
	bad := env.Clone()
	bad.MsgID = msgID
	bad.Rcpts = f.rcpts
	bad.Attempt = attempt
	bad.LastAttemptAt = now
	bad.Reason = f.err.Error()
	bad.Remote = f.err.Remote
	if bad.Remote == "" {
		var inner *Error
		if errors.As(f.err.Err, &inner) {
			bad.Remote = inner.Remote
		}
	}
	if env.Body == envelope.BodyObject {
		data = nil
	}
	msg, err := bad.Msg(bus.SubjBad, data)
	if err != nil {
		return fmt.Errorf("badmail envelope: %w", err)
	}
	_, err = bus.Publish(ctx, s.js, msg, msgID)
	return err
}

// reschedule publishes the pending recipients as a message schedule on
// mail.defer.<tok>.<qid> that fires into mail.out.<tok> at the next step of
// the retry ladder, and returns when it fires. The message is built from
// the envelope alone, so no Nats-* header of the fired schedule is carried
// over.
func (s *Service) reschedule(ctx context.Context, env *envelope.Envelope, tok string, data []byte, rcpts []envelope.Rcpt, last *Error, attempt int, now, expires time.Time) (time.Time, error) {
	next := env.Clone()
	next.MsgID = fmt.Sprintf("%s.%s.a%d", env.QueueID, tok, attempt)
	next.Rcpts = rcpts
	next.Attempt = attempt
	next.LastError = last.Error()
	next.LastAttemptAt = now
	next.ExpiresAt = expires
	next.Remote = last.Remote
	next.Reason = ""
	if env.Body == envelope.BodyObject {
		data = nil
	}
	at := retryAt(now, s.cfg.Delivery.RetryDelay(attempt), expires)
	msg, err := next.Msg(bus.Defer(tok, env.QueueID), data)
	if err != nil {
		return at, fmt.Errorf("retry envelope: %w", err)
	}
	_, err = bus.Publish(ctx, s.js, msg, next.MsgID,
		jetstream.WithScheduleAt(at), jetstream.WithScheduleTarget(bus.Out(tok)))
	return at, err
}

// retryAt is now+delay with ±10 % jitter, no later than expires (one last
// try at expiry) and at least a second ahead. Schedules have whole-second
// resolution, so it is rounded up to the next second.
func retryAt(now time.Time, delay time.Duration, expires time.Time) time.Time {
	jitter := time.Duration((rand.Float64()*0.2 - 0.1) * float64(delay))
	at := now.Add(delay + jitter)
	if at.After(expires) {
		at = expires
	}
	if earliest := now.Add(time.Second); at.Before(earliest) {
		at = earliest
	}
	if t := at.Truncate(time.Second); !t.Equal(at) {
		at = t.Add(time.Second)
	}
	return at
}

// alreadyRescheduled reports whether a retry schedule newer than env's
// attempt is pending for it.
func (s *Service) alreadyRescheduled(ctx context.Context, tok string, env *envelope.Envelope) bool {
	raw, err := s.stream.GetLastMsgForSubject(ctx, bus.Defer(tok, env.QueueID))
	if err != nil {
		if !errors.Is(err, jetstream.ErrMsgNotFound) {
			s.log.Warn("crash-window check failed", "qid", env.QueueID, "err", err)
		}
		return false
	}
	next, err := envelope.Decode(raw.Header)
	return err == nil && next.Attempt > env.Attempt
}

// toBad moves an unusable message to mail.bad, or leaves it for a later
// try if even that fails.
func (s *Service) toBad(ctx context.Context, m jetstream.Msg, reason string) {
	if err := bus.MoveToBad(ctx, s.js, m, reason); err != nil {
		s.log.Error("move to badmail failed", "subject", m.Subject(), "err", err)
		_ = m.NakWithDelay(time.Minute)
		return
	}
	s.log.Warn("message moved to badmail", "subject", m.Subject(), "reason", reason)
}
