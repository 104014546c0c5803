// Package release is the ETRN release worker (RFC 1985; docs/DESIGN.md §4
// "Hold / ETRN / ATRN"). It runs inside every delivery
// process and answers core NATS requests on mta.ctl.release (queue group
// "release", so one worker takes each request): for each domain it counts
// the held mail and pending retries, replies with that count at once, and
// then, in the background,
//
//   - moves every message of mail.hold.<tok> (pulled from the durable
//     consumer hold_<tok>) to mail.out.<tok>, publishing the successor with
//     Nats-Msg-Id "<qid>.<tok>.rel<seq>" before acking the held copy, so a
//     crash in between repeats the move and JetStream drops the duplicate;
//   - re-publishes every retry schedule mail.defer.<tok>.<qid> to fire now,
//     guarded by the schedule's last sequence so that one that fired in the
//     meantime is not fired twice.
//
// Delivery then handles the released mail like any other.
package release

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
)

// Service is the release worker.
type Service struct {
	cfg config.Config
	log *slog.Logger
	js  jetstream.JetStream
	// room publishes the released messages (Room.Forward).
	room *bus.Room

	// Batch is how many held messages are pulled at once.
	Batch int

	mu      sync.Mutex
	running map[string]bool // domain tokens being released by this process
	wg      sync.WaitGroup
}

// New returns a release worker publishing through room.
func New(cfg config.Config, log *slog.Logger, room *bus.Room) *Service {
	return &Service{cfg: cfg, log: log.With("svc", "release"), js: room.JS, room: room, Batch: 50, running: map[string]bool{}}
}

// Run answers release requests until ctx is done, then waits for releases
// in progress (each message move is short; they stop between messages).
func (s *Service) Run(ctx context.Context) error {
	nc := s.js.Conn()
	if nc == nil {
		return errors.New("release: no NATS connection")
	}
	// The message leases live there (move).
	if _, err := bus.EnsureSessions(ctx, s.js, s.cfg.NATS.Replicas); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	sub, err := nc.QueueSubscribe(bus.SubjCtlRelease, bus.QueueRelease, func(m *nats.Msg) { s.handle(ctx, m) })
	if err != nil {
		return fmt.Errorf("release: subscribe %s: %w", bus.SubjCtlRelease, err)
	}
	<-ctx.Done()
	_ = sub.Unsubscribe()
	s.wg.Wait()
	return nil
}

func (s *Service) handle(ctx context.Context, m *nats.Msg) {
	var req bus.ReleaseRequest
	reply := func(r bus.ReleaseReply) {
		b, _ := json.Marshal(r)
		_ = m.Respond(b)
	}
	if err := json.Unmarshal(m.Data, &req); err != nil || len(req.Domains) == 0 {
		reply(bus.ReleaseReply{Error: "bad request"})
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	total := 0
	toks := make([]string, 0, len(req.Domains))
	for _, d := range req.Domains {
		tok := bus.Token(d)
		held, err := bus.HeldCount(rctx, s.js, tok)
		if err == nil {
			var deferred []string
			deferred, err = bus.DeferredSubjects(rctx, s.js, tok)
			held += len(deferred)
		}
		if err != nil {
			s.log.Error("release count failed", "domain", d, "err", err)
			reply(bus.ReleaseReply{Error: "cannot read the queue"})
			return
		}
		total += held
		toks = append(toks, tok)
	}
	reply(bus.ReleaseReply{Pending: total})
	s.log.Info("release requested", "domains", req.Domains, "client", req.Client, "pending", total)
	for _, tok := range toks {
		s.mu.Lock()
		busy := s.running[tok]
		s.running[tok] = true
		s.mu.Unlock()
		if busy {
			continue // this process is already releasing it; it pulls until empty
		}
		s.wg.Go(func() {
			defer func() {
				s.mu.Lock()
				delete(s.running, tok)
				s.mu.Unlock()
			}()
			n, err := s.Release(ctx, tok)
			if err != nil && ctx.Err() == nil {
				s.log.Error("release failed", "domain_tok", tok, "released", n, "err", err)
				return
			}
			s.log.Info("released", "domain_tok", tok, "messages", n)
		})
	}
}

// Release moves the held mail and pending retries of domain token tok to
// mail.out.<tok> and returns how many it moved.
func (s *Service) Release(ctx context.Context, tok string) (int, error) {
	cons, err := bus.EnsureHoldConsumer(ctx, s.js, tok, s.cfg.NATS.Replicas)
	if err != nil {
		return 0, err
	}
	n := 0
	for ctx.Err() == nil {
		batch, err := cons.Fetch(max(s.Batch, 1), jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return n, fmt.Errorf("release: fetch %s: %w", bus.HoldConsumer(tok), err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			if err := s.move(ctx, tok, m); err != nil {
				_ = m.NakWithDelay(5 * time.Second)
				return n, err
			}
			n++
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) {
			return n, fmt.Errorf("release: fetch %s: %w", bus.HoldConsumer(tok), err)
		}
		if got == 0 {
			break
		}
	}
	d, err := s.fireDeferred(ctx, tok)
	return n + d, err
}

// move publishes a held message to mail.out.<tok>, then acks it.
func (s *Service) move(ctx context.Context, tok string, m jetstream.Msg) error {
	md, err := m.Metadata()
	if err != nil {
		return fmt.Errorf("release: metadata: %w", err)
	}
	out := &nats.Msg{Subject: bus.Out(tok), Header: nats.Header{}, Data: m.Data()}
	for k, vs := range m.Headers() {
		if len(k) >= 5 && k[:5] == "Nats-" {
			continue
		}
		out.Header[k] = append([]string(nil), vs...)
	}
	qid := out.Header.Get(envelope.HdrQueueID)
	// The part's lease (docs/DESIGN.md §4 "Queue administration"): an
	// administrator deleting, holding or bouncing it meanwhile wins.
	lease, err := bus.TakeLease(ctx, s.js, bus.LeaseKey(qid, tok), bus.LeaseHolder("release"), md.Sequence.Stream)
	switch {
	case errors.Is(err, bus.ErrRemoved), errors.Is(err, bus.ErrLocked):
		s.log.Info("held message being changed by an administrator: not released", "qid", qid, "lease", err)
		if errors.Is(err, bus.ErrRemoved) {
			return m.Term()
		}
		return m.NakWithDelay(5 * time.Second)
	case err != nil:
		return fmt.Errorf("release: lease %s: %w", qid, err)
	}
	defer lease.ReleaseAsync()
	id := envelope.ReleaseID(qid, tok, md.Sequence.Stream)
	if _, err := s.room.Forward(ctx, out, id); err != nil {
		return fmt.Errorf("release: publish %s: %w", out.Subject, err)
	}
	if err := m.DoubleAck(ctx); err != nil {
		return fmt.Errorf("release: ack: %w", err)
	}
	s.log.Info("released held message", "qid", qid, "to", out.Subject)
	ev := bus.Event{Type: bus.EventReleased, QueueID: qid, Domain: envelope.NormalizeDomain(out.Header.Get(envelope.HdrDomain)), Subject: out.Subject}
	if env, err := envelope.Decode(out.Header); err == nil {
		// The attempt tells a release after a held retry from the first.
		ev.Rcpts, ev.Sender, ev.Attempt = bus.Addrs(env.Rcpts), env.From, env.Attempt
	}
	bus.Emit(s.js, ev)
	return nil
}

// fireDeferred makes every pending retry schedule of tok fire now.
func (s *Service) fireDeferred(ctx context.Context, tok string) (int, error) {
	subjects, err := bus.DeferredSubjects(ctx, s.js, tok)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, subj := range subjects {
		qid, fired, err := bus.FireDeferred(ctx, s.room, tok, subj, func(qid string, seq uint64) string {
			return envelope.ETRNID(qid, tok, seq)
		})
		if err != nil {
			return n, fmt.Errorf("release: %w", err)
		}
		if fired {
			s.log.Info("released deferred message", "qid", qid, "to", bus.Out(tok))
			n++
		}
	}
	return n, nil
}
