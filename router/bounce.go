package router

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/dsn"
	"github.com/mailroot/mailroot/internal/envelope"
)

// bounceError is a routing failure the sender is told about with a
// non-delivery report (a mail loop), rather than Badmail. Mail from the
// null sender cannot be answered and still goes to Badmail, with the same
// text as reason.
type bounceError struct {
	status string // enhanced status code, e.g. "5.4.6"
	text   string
}

func (e *bounceError) Error() string { return e.status + " " + e.text }

// bounce answers m with a non-delivery report for all its recipients
// (Nats-Msg-Id "<qid>.route.dsn"), then acks it and releases its body:
// the report carries its own copy of the message.
func (s *Service) bounce(ctx context.Context, m jetstream.Msg, env *envelope.Envelope, be *bounceError) {
	log := s.log.With("qid", env.QueueID)
	st := make([]dsn.Status, len(env.Rcpts))
	for i, r := range env.Rcpts {
		st[i] = dsn.Status{Rcpt: r, Action: dsn.ActionFailed, Status: be.status, Detail: be.Error()}
	}
	qid, err := s.notify.Send(ctx, dsn.Notice{
		Kind: dsn.Failure, ID: envelope.RouteDSNID(env.QueueID), Env: env, Data: m.Data(), Rcpts: st, LastAttempt: time.Now(),
	})
	if err != nil {
		log.Error("non-delivery report failed, will retry", "reason", be.Error(), "err", err)
		_ = m.NakWithDelay(5 * time.Second)
		return
	}
	rcpts := bus.Addrs(env.Rcpts)
	bus.Emit(s.js, bus.Event{Type: bus.EventBounced, QueueID: env.QueueID, Domain: bus.DomainOf(rcpts), Sender: env.From,
		Rcpts: rcpts, ReportQID: qid, Reason: be.Error()})
	if err := m.DoubleAck(ctx); err != nil {
		// The report is stored; a redelivery republishes the same id.
		log.Warn("ack failed", "err", err)
		return
	}
	s.m.RoutedBounce.Inc()
	if qid == "" {
		log.Warn("not routed, no report: the recipients asked for none (NOTIFY)", "reason", be.Error())
	} else {
		log.Warn("not routed, non-delivery report queued", "reason", be.Error(), "dsn_qid", qid, "to", env.From)
	}
	if err := s.bodies.Release(ctx, env); err != nil {
		log.Warn("release body failed", "err", err)
	}
}
