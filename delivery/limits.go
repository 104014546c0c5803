package delivery

import (
	"context"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/limits"
)

// Per-destination limits (internal/limits): the connections open at once
// to a destination domain and the messages a minute sent to it, across
// every delivery worker of the cluster. Mail over a limit waits its turn
// in its worker (the worker keeps its ack deadline, bus.Worker
// KeepAlive): it is neither deferred nor bounced. A connection kept open
// for reuse holds its slot until it closes.

// openLimits opens the limits' buckets (Run).
func (s *Service) openLimits(ctx context.Context) error {
	host, _ := os.Hostname()
	l, err := limits.Open(ctx, s.js, s.conf().NATS.Replicas, host+"-"+strconv.Itoa(os.Getpid()))
	if err != nil {
		return err
	}
	s.limits = l
	return nil
}

// limitOf is a domain's override (-1: no cap, 0: the default's) over def.
func limitOf(override, def int) int {
	switch {
	case override < 0:
		return 0
	case override > 0:
		return override
	}
	return def
}

// connLimit is the connection cap of domain (0: none).
func (s *Service) connLimit(domain string) int {
	cfg := s.conf()
	d, _ := cfg.Domain(domain)
	return limitOf(d.MaxConnections, cfg.Delivery.MaxConnectionsPerDomain)
}

// rateLimit is the messages-a-minute cap of domain (0: none).
func (s *Service) rateLimit(domain string) int {
	cfg := s.conf()
	d, _ := cfg.Domain(domain)
	return limitOf(d.MessagesPerMinute, cfg.Delivery.MessagesPerMinute)
}

// waitTurn waits for the domain's next turn under its rate cap.
func (s *Service) waitTurn(ctx context.Context, env *envelope.Envelope, domain string) *Error {
	n := s.rateLimit(domain)
	if n <= 0 || s.limits == nil {
		return nil
	}
	if err := s.limits.Turn(ctx, bus.Token(domain), n); err != nil {
		s.log.Warn("rate limit: no turn", "qid", env.QueueID, "domain", domain, "err", err)
		return tempErr("4.4.5", "", err, "waiting for a turn to send to %s (%d a minute): %v", domain, n, err)
	}
	return nil
}

// slotDial is dial whose connection holds slot: closing the connection
// (after its last message, or when the pool drops it) frees the slot,
// and so does a failed dial.
func slotDial(dial func(ctx context.Context, network, addr string) (net.Conn, error), slot *limits.Slot) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if dial == nil {
			var d net.Dialer
			dial = d.DialContext
		}
		c, err := dial(ctx, network, addr)
		if err != nil {
			slot.Release()
			return nil, err
		}
		return &slotConn{Conn: c, slot: slot}, nil
	}
}

type slotConn struct {
	net.Conn
	slot *limits.Slot
	once sync.Once
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.slot.Release)
	return err
}

// masquerade is env with the domain of its sender replaced by
// delivery.masquerade_domain (IIS's masquerade domain) when it applies:
// mail leaving over SMTP from a sender of masquerade_senders (every
// sender when empty), never the null sender. The envelope the queue
// keeps, and its reports, are unchanged.
func (s *Service) masquerade(env *envelope.Envelope) *envelope.Envelope {
	d := s.conf().Delivery
	if d.MasqueradeDomain == "" || env.From == "" {
		return env
	}
	local, dom, err := envelope.Split(env.From)
	if err != nil {
		return env
	}
	dom = envelope.NormalizeDomain(dom)
	if len(d.MasqueradeSenders) > 0 && !slices.ContainsFunc(d.MasqueradeSenders, func(x string) bool { return envelope.NormalizeDomain(x) == dom }) {
		return env
	}
	out := env.Clone()
	out.From = local + "@" + envelope.NormalizeDomain(d.MasqueradeDomain)
	return out
}
