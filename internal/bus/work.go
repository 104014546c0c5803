package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/envelope"
)

// Handler processes one message. It owns the message's disposition: it
// must ack it (after publishing any successor) or Nak it. ctx is cancelled
// when the worker is shutting down past its grace period.
type Handler func(ctx context.Context, m jetstream.Msg)

// Worker pulls a durable consumer with a bounded number of handlers in
// flight, keeps long handlers alive with InProgress, recovers panics and
// moves poison messages to mail.bad before they reach MaxDeliver.
type Worker struct {
	// Room publishes poison messages to mail.bad.
	Room *Room
	// Consumer is the durable pull consumer to work.
	Consumer jetstream.Consumer
	// Slots is how many handlers run at once.
	Slots int
	// Log receives one line per recovered panic or poison message.
	Log *slog.Logger
	// Grace is how long in-flight handlers may finish after ctx is done
	// before their context is cancelled (default 10 s).
	Grace time.Duration
	// NoPoison turns the poison check off: the handler sees every delivery,
	// however often it was redelivered. The badmail worker sets it, because
	// moving a mail.bad message "to mail.bad" would only loop (its consumer
	// has no MaxDeliver instead, see EnsureConsumer).
	NoPoison bool
	// KeepAlive is how often a handler still working on a message tells
	// the server so (InProgress), which restarts the consumer's AckWait;
	// it must be well below AckWait. Zero means 30 s.
	KeepAlive time.Duration
}

// Run works the consumer until ctx is done, then stops pulling, lets
// in-flight handlers finish within Grace and returns.
func (w *Worker) Run(ctx context.Context, h Handler) error {
	slots := max(w.Slots, 1)
	grace := w.Grace
	if grace == 0 {
		grace = 10 * time.Second
	}
	it, err := w.Consumer.Messages(jetstream.PullMaxMessages(slots), jetstream.PullExpiry(5*time.Second))
	if err != nil {
		return fmt.Errorf("bus: pull: %w", err)
	}
	// Handlers get their own context: it outlives ctx by the grace period
	// so in-flight work can finish and ack.
	hctx, hcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hcancel()
	stopped := make(chan struct{})
	go func() {
		<-ctx.Done()
		it.Stop()
		close(stopped)
	}()

	sem := make(chan struct{}, slots)
	var wg sync.WaitGroup
	for {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		m, err := it.Next()
		if err != nil {
			<-sem
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				break
			}
			w.Log.Warn("pull failed", "err", err)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			w.handle(hctx, m, h)
		}()
	}
	<-stopped
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		hcancel()
		<-done
	}
	return nil
}

func (w *Worker) handle(ctx context.Context, m jetstream.Msg, h Handler) {
	md, err := m.Metadata()
	if err == nil && !w.NoPoison && md.NumDelivered >= MaxDeliver-1 {
		w.poison(ctx, m, fmt.Sprintf("delivery attempted %d times by workers that crashed or failed (poison message)", md.NumDelivered))
		return
	}
	defer func() {
		if r := recover(); r != nil {
			w.Log.Error("handler panic", "subject", m.Subject(), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			_ = m.NakWithDelay(5 * time.Second)
		}
	}()
	every := w.KeepAlive
	if every <= 0 {
		every = 30 * time.Second
	}
	stop := keepAlive(m, every)
	defer stop()
	h(ctx, m)
}

func (w *Worker) poison(ctx context.Context, m jetstream.Msg, reason string) {
	if err := MoveToBad(ctx, w.Room, m, reason); err != nil {
		w.Log.Error("move poison message to badmail failed", "subject", m.Subject(), "err", err)
		_ = m.NakWithDelay(30 * time.Second)
		return
	}
	w.Log.Warn("poison message moved to badmail", "subject", m.Subject(), "qid", m.Headers().Get(envelope.HdrQueueID), "reason", reason)
}

// keepAlive sends InProgress every interval until stop is called. It is
// a timer, not a goroutine with a ticker: nearly every handler is done in
// milliseconds, long before the first InProgress is due, and a goroutine
// and a ticker per message were a measurable share of the pipeline's
// scheduling under load (issue #12).
func keepAlive(m jetstream.Msg, every time.Duration) (stop func()) {
	var mu sync.Mutex // guards t and stopped: the timer's func reads t
	stopped := false
	var t *time.Timer
	mu.Lock()
	t = time.AfterFunc(every, func() {
		_ = m.InProgress()
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			t.Reset(every)
		}
	})
	mu.Unlock()
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		t.Stop()
	}
}

// MoveToBad publishes a copy of m to mail.bad with reason, then acks m.
// It works for messages whose envelope does not even decode: the original
// headers are kept as they are (minus Nats-*), so Badmail can show them.
func MoveToBad(ctx context.Context, room *Room, m jetstream.Msg, reason string) error {
	md, err := m.Metadata()
	seq := uint64(0)
	if err == nil {
		seq = md.Sequence.Stream
	}
	bad := &nats.Msg{Subject: SubjBad, Header: nats.Header{}, Data: m.Data()}
	for k, vs := range m.Headers() {
		if len(k) >= 5 && k[:5] == "Nats-" {
			continue
		}
		bad.Header[k] = append([]string(nil), vs...)
	}
	qid := bad.Header.Get(envelope.HdrQueueID)
	if _, derr := envelope.Decode(m.Headers()); derr != nil {
		reason += "; envelope: " + derr.Error()
		if !envelope.ValidQueueID(qid) {
			qid = "seq" + strconv.FormatUint(seq, 10)
			bad.Header.Set(envelope.HdrQueueID, qid)
		}
	}
	bad.Header.Set(envelope.HdrReason, sanitize(reason))
	bad.Header.Set(envelope.HdrBadSubject, m.Subject())
	if _, err := room.Forward(ctx, bad, envelope.PoisonID(seq, qid)); err != nil {
		return err
	}
	Emit(room.JS, Event{Type: EventBadmail, QueueID: qid, Domain: envelope.NormalizeDomain(bad.Header.Get(envelope.HdrDomain)),
		Reason: bad.Header.Get(envelope.HdrReason), Subject: m.Subject()})
	return m.DoubleAck(ctx)
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '\r' || c == '\n' || c == 0 {
			b[i] = ' '
		}
	}
	return string(b)
}
