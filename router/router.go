// Package router is the second stage of the pipeline (docs/DESIGN.md §4,
// "Router"): it consumes mail.in, checks the message, splits its recipients
// per destination domain and publishes one envelope per domain — local
// domains to mail.drop, held domains to mail.hold.<tok>, others to
// mail.out.<tok> — with Nats-Msg-Id "<qid>.<tok>", and acks the input only
// after every part was stored. A
// crash in between is harmless: the redelivered input republishes the same
// ids, which JetStream deduplicates.
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/dsn"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/metrics"
	"github.com/mailroot/mailroot/internal/notify"
)

// Service is the router.
type Service struct {
	live   *config.Live
	log    *slog.Logger
	js     jetstream.JetStream
	bodies *bus.Bodies
	notify *notify.Notifier
	// Slots is the number of messages routed at once.
	Slots int
	// Room publishes the routed parts (Room.Forward); New makes one that
	// checks the store's limit, `mailroot all` shares its own.
	Room *bus.Room
	// Metrics counts what was routed where; nil: metrics of its own that
	// nothing serves.
	Metrics *metrics.Metrics
	m       *metrics.Metrics
}

// New returns a router.
func New(cfg config.Config, log *slog.Logger, js jetstream.JetStream) (*Service, error) {
	return &Service{live: config.NewLive(cfg), log: log.With("svc", "router"), js: js, Slots: 64, Room: &bus.Room{JS: js, Reserve: cfg.NATS.Reserve}}, nil
}

// conf is the configuration in force (Apply).
func (s *Service) conf() *config.Config { return s.live.Get() }

// Apply puts a changed configuration in force (the live configuration,
// internal/liveconfig): messages routed from now on follow it.
func (s *Service) Apply(cfg config.Config) { s.live.Set(cfg) }

// Run routes until ctx is done.
func (s *Service) Run(ctx context.Context) error {
	cons, err := bus.Setup(ctx, s.js, *s.conf(), bus.ConsumerRouter)
	if err != nil {
		return err
	}
	if s.bodies, err = bus.OpenBodies(ctx, s.js); err != nil {
		return err
	}
	s.notify = notify.NewNotifier(*s.conf(), s.js, s.bodies)
	s.notify.Room = s.Room
	s.m = metrics.Or(s.Metrics)
	w := &bus.Worker{Room: s.Room, Consumer: cons[bus.ConsumerRouter], Slots: s.Slots, Log: s.log}
	return w.Run(ctx, s.route)
}

// errReject marks input that can never be routed: it goes to Badmail.
var errReject = errors.New("router: rejected")

// part is the envelope for one destination.
type part struct {
	subject string
	env     *envelope.Envelope
}

func (s *Service) route(ctx context.Context, m jetstream.Msg) {
	env, parts, err := s.plan(m.Headers(), m.Data())
	if be := (*bounceError)(nil); errors.As(err, &be) && env.From != "" {
		s.bounce(ctx, m, env, be)
		return
	}
	if err != nil {
		qid := m.Headers().Get(envelope.HdrQueueID)
		if merr := bus.MoveToBad(ctx, s.Room, m, err.Error()); merr != nil {
			s.log.Error("move to badmail failed", "qid", qid, "err", merr)
			_ = m.NakWithDelay(10 * time.Second)
			return
		}
		s.m.RoutedBad.Inc()
		s.log.Warn("rejected to badmail", "qid", qid, "reason", err.Error())
		return
	}
	if env.Body == envelope.BodyObject {
		if err := bus.WaitForRoom(ctx, "share body "+env.QueueID, func() error { return s.bodies.Share(ctx, env.QueueID, len(parts)) }); err != nil {
			s.log.Error("share body failed", "qid", env.QueueID, "err", err)
			_ = m.NakWithDelay(5 * time.Second)
			return
		}
	}
	// The events go out before the parts: sent first on this
	// connection, they are stored before anything delivery emits about
	// a part, which a PubAck could not promise (the server may hand a
	// part to delivery before its PubAck reaches us). Should a part
	// fail, the redelivered input repeats them, with the same ids, until
	// every part is stored.
	for _, ev := range routedEvents(env, parts) {
		bus.Emit(s.js, ev)
	}
	for _, p := range parts {
		msg, err := p.env.Msg(p.subject, m.Data())
		if err == nil {
			_, err = s.Room.Forward(ctx, msg, p.env.MsgID)
		}
		if err != nil {
			s.log.Error("publish failed, will retry", "qid", env.QueueID, "subject", p.subject, "err", err)
			_ = m.NakWithDelay(5 * time.Second)
			return
		}
	}
	if err := m.DoubleAck(ctx); err != nil {
		// The parts are stored; a redelivery republishes the same ids.
		s.log.Warn("ack failed", "qid", env.QueueID, "err", err)
		return
	}
	for _, p := range parts {
		switch {
		case p.subject == bus.SubjDrop:
			s.m.RoutedDrop.Inc()
		case strings.HasPrefix(p.subject, bus.SubjHoldPrefix):
			s.m.RoutedHold.Inc()
		default:
			s.m.RoutedRemote.Inc()
		}
		s.log.Info("routed", "qid", env.QueueID, "to", p.subject, "rcpts", len(p.env.Rcpts))
	}
}

// routedEvents are the routing's events in MAIL_EVENTS: one routed event
// with every part, and a held event per part waiting for ETRN/ATRN.
func routedEvents(env *envelope.Envelope, parts []part) []bus.Event {
	ev := bus.Event{Type: bus.EventRouted, QueueID: env.QueueID, Sender: env.From, Parts: make([]bus.RoutedPart, len(parts))}
	for i, p := range parts {
		ev.Parts[i] = bus.RoutedPart{Domain: p.env.Domain, Rcpts: bus.Addrs(p.env.Rcpts), Subject: p.subject}
	}
	if len(parts) == 1 {
		ev.Domain = parts[0].env.Domain
	}
	out := []bus.Event{ev}
	for _, p := range parts {
		if strings.HasPrefix(p.subject, bus.SubjHoldPrefix) {
			out = append(out, bus.Event{Type: bus.EventHeld, QueueID: env.QueueID, Domain: p.env.Domain,
				Rcpts: bus.Addrs(p.env.Rcpts), Subject: p.subject, Sender: env.From})
		}
	}
	return out
}

// plan validates an incoming message and splits it per destination.
func (s *Service) plan(h map[string][]string, data []byte) (*envelope.Envelope, []part, error) {
	cfg := s.conf() // one configuration for the whole message
	h = directDefaults(h)
	env, err := envelope.Decode(h)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", errReject, err)
	}
	switch env.Body {
	case envelope.BodyInline:
		if len(data) == 0 {
			return nil, nil, fmt.Errorf("%w: empty message body", errReject)
		}
		if int64(len(data)) > cfg.Ingress.MaxMessageSize+64<<10 {
			return nil, nil, fmt.Errorf("%w: message of %d bytes exceeds the maximum size %d", errReject, len(data), cfg.Ingress.MaxMessageSize)
		}
		if hops := envelope.CountReceived(data); hops > env.Hops {
			env.Hops = hops
		}
	case envelope.BodyObject:
		if len(data) != 0 {
			return nil, nil, fmt.Errorf("%w: Mta-Body obj with a non-empty payload", errReject)
		}
	}
	if env.Hops > cfg.Router.MaxHopCount {
		return env, nil, &bounceError{status: "5.4.6", text: fmt.Sprintf("routing loop detected: message has %d Received: headers, more than the maximum hop count %d", env.Hops, cfg.Router.MaxHopCount)}
	}
	if env.ReceivedAt.IsZero() {
		env.ReceivedAt = time.Now()
	}
	if env.ExpiresAt.IsZero() {
		env.ExpiresAt = env.ReceivedAt.Add(cfg.Delivery.Expire.D())
	}
	byDomain := map[string][]envelope.Rcpt{}
	seen := map[string]bool{}
	for _, r := range env.Rcpts {
		if addr, ok := cfg.Unalias(r.Addr); ok {
			// Mail from Pickup or NATS for an alias domain: the default
			// domain, as ingress does for SMTP.
			if r.ORcpt == "" {
				r.ORcpt = "rfc822;" + dsn.EncodeXtext(r.Addr)
			}
			r.Addr = addr
		}
		d := envelope.Domain(r.Addr)
		if d == "" {
			return nil, nil, fmt.Errorf("%w: recipient %q has no domain", errReject, r.Addr)
		}
		key := r.Addr // exact duplicates are delivered once
		if seen[key] {
			continue
		}
		seen[key] = true
		byDomain[d] = append(byDomain[d], r)
	}
	domains := make([]string, 0, len(byDomain))
	for d := range byDomain {
		domains = append(domains, d)
	}
	sort.Strings(domains)
	parts := make([]part, 0, len(domains))
	for _, d := range domains {
		p := env.Clone()
		p.Rcpts = byDomain[d]
		p.Domain = d
		tok := bus.Token(d)
		p.MsgID = envelope.RouteID(env.QueueID, tok)
		subject := bus.Out(tok)
		if cfg.IsLocal(d) {
			subject = bus.SubjDrop
		} else if dom, ok := cfg.Domain(d); ok && dom.Type == config.DomainRemote && dom.Hold {
			// Held for ETRN/ATRN (RFC 1985, RFC 2645): it waits on
			// mail.hold.<tok> until released.
			subject = bus.Hold(tok)
		}
		parts = append(parts, part{subject: subject, env: p})
	}
	return env, parts, nil
}

// directDefaults completes what an application publishing straight onto
// mail.in may leave out (README, "Publishing mail onto NATS"): the queue
// id is derived from its Nats-Msg-Id, and the source is "nats".
func directDefaults(h nats.Header) nats.Header {
	if h.Get(envelope.HdrQueueID) != "" || h.Get(envelope.HdrMsgID) == "" {
		return h
	}
	c := make(nats.Header, len(h)+2)
	for k, v := range h {
		c[k] = v
	}
	c.Set(envelope.HdrQueueID, envelope.QueueIDFor(h.Get(envelope.HdrMsgID)))
	if c.Get(envelope.HdrSource) == "" {
		c.Set(envelope.HdrSource, "nats")
	}
	return c
}
