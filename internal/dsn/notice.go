package dsn

import (
	"time"

	"github.com/mailroot/mailroot/internal/envelope"
)

// Kind, Status and Notice describe a notification about a queued envelope;
// internal/notify turns them into a report (Write) and publishes it.

// Kind is the kind of notification.
type Kind int

// Kinds of notification (RFC 3461 §4.1 NOTIFY keywords).
const (
	// Failure is a non-delivery report: NOTIFY=FAILURE.
	Failure Kind = iota
	// Delay says delivery is taking long but goes on: NOTIFY=DELAY.
	Delay
	// Success says the message was delivered, or relayed to a server that
	// does not report further: NOTIFY=SUCCESS.
	Success
)

func (k Kind) String() string {
	switch k {
	case Failure:
		return "failure"
	case Delay:
		return "delay"
	default:
		return "success"
	}
}

// Source is the Mta-Source of notifications: mail with this source and the
// null sender that fails goes to Badmail as a double bounce.
const Source = "dsn"

// Status is what became of one recipient.
type Status struct {
	// Rcpt is the recipient with its DSN parameters.
	Rcpt envelope.Rcpt
	// Action is one of the Action* constants.
	Action string
	// Status is the enhanced status code, e.g. "5.1.1".
	Status string
	// Remote names the server that answered, "host[ip]" or "[ip]", or is
	// empty.
	Remote string
	// Reply is the remote's SMTP reply ("550 5.1.1 user unknown"), empty
	// for local outcomes.
	Reply string
	// Detail is the full description of the outcome, e.g.
	// "550 5.1.1 user unknown (mx.example[192.0.2.1])" or "5.4.6 mail for
	// example.test loops back to myself: …".
	Detail string
}

// Notice is one notification about an envelope.
type Notice struct {
	// Kind says what is reported.
	Kind Kind
	// ID is the idempotency key, used as Nats-Msg-Id of the notification
	// and to derive its queue id, e.g. "<qid>.<tok>.dsn3".
	ID string
	// Env is the envelope reported on; Data is its message payload (the
	// inline body; nil when the body is in the Object Store).
	Env  *envelope.Envelope
	Data []byte
	// Rcpts are the outcomes; only recipients that asked for Kind
	// (notify.Wants) are reported.
	Rcpts []Status
	// LastAttempt is the time of the last delivery attempt.
	LastAttempt time.Time
	// RetryUntil is, for Delay, when delivery will be given up.
	RetryUntil time.Time
}
