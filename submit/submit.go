// Package submit lets a Go program hand mail to Mailroot by publishing it
// onto NATS, without SMTP. The JetStream acknowledgement is the equivalent
// of SMTP's "250 queued": once Submit returns a queue id, the message is
// stored (fsynced on a default single node, on a quorum in a cluster) and
// Mailroot will deliver it, bounce it to the sender, or put it in Badmail.
//
// The wire contract, for publishers in other languages (README "Publishing
// mail onto NATS"): publish the RFC 5322 message as the payload to subject
// "mail.in" of stream MAIL with headers
//
//	Nats-Msg-Id:   your idempotency key (the same key within 10 minutes is stored once)
//	Mta-Mail-From: <sender@example.org>      (or <> for the null sender)
//	Mta-Rcpt:      <rcpt@example.net>        (one header value per recipient;
//	               optional " NOTIFY=FAILURE,DELAY ORCPT=rfc822;rcpt@example.net")
//
// and optionally Mta-Queue-Id (26 characters [0-9A-Z], else derived from
// the key), Mta-Ret (FULL or HDRS) and Mta-Envid. Payloads are limited to
// 1 MiB; larger bodies go to the "mail-bodies" Object Store under the queue
// id with "Mta-Body: obj" and an empty payload, which Submit does for you.
package submit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
)

// Message is one message to submit.
type Message struct {
	// ID is the idempotency key: submitting the same ID again within the
	// 10-minute duplicate window stores the message once and returns the
	// same queue id. Empty: a fresh one is made (no idempotency).
	ID string
	// From is the envelope sender (bounces go there); "" is the null sender.
	From string
	// To are the envelope recipients.
	To []string
	// Data is the RFC 5322 message with CRLF line ends.
	Data []byte
	// Notify sets the DSN NOTIFY parameter (NEVER, or any of SUCCESS,
	// FAILURE, DELAY) for every recipient; empty is the default (FAILURE).
	Notify []string
	// Ret is the DSN RET parameter: FULL, HDRS or empty.
	Ret string
	// EnvID is the DSN envelope id (xtext), returned in reports.
	EnvID string
}

// Errors returned by Submit.
var (
	// ErrInvalid means the message can never be accepted as given.
	ErrInvalid = errors.New("submit: invalid message")
	// ErrStoreFull means JetStream has no room now; try again later.
	ErrStoreFull = bus.ErrStoreFull
)

// QueueID returns the queue id Submit uses for an idempotency key.
func QueueID(id string) string { return envelope.QueueIDFor(id) }

// Submit validates msg, stores it on mail.in and returns its queue id once
// JetStream has acknowledged it. It retries through NATS leader elections
// with the same id, so a message is never stored twice.
func Submit(ctx context.Context, js jetstream.JetStream, msg *Message) (string, error) {
	id := msg.ID
	if id == "" {
		id = envelope.NewQueueID()
	}
	if strings.ContainsAny(id, "\r\n\x00") || len(id) > 256 {
		return "", fmt.Errorf("%w: ID must be at most 256 characters without CR, LF or NUL", ErrInvalid)
	}
	if len(msg.Data) == 0 {
		return "", fmt.Errorf("%w: empty message", ErrInvalid)
	}
	if msg.From != "" {
		if err := envelope.CheckAddress(msg.From); err != nil {
			return "", fmt.Errorf("%w: sender: %v", ErrInvalid, err)
		}
	}
	if len(msg.To) == 0 {
		return "", fmt.Errorf("%w: no recipients", ErrInvalid)
	}
	qid := QueueID(id)
	now := time.Now()
	env := &envelope.Envelope{
		QueueID: qid, MsgID: id, From: msg.From, Ret: strings.ToUpper(msg.Ret), EnvID: msg.EnvID,
		ReceivedAt: now, Source: "nats", ClientIP: "nats", BodySize: int64(len(msg.Data)),
	}
	for _, to := range msg.To {
		if err := envelope.CheckAddress(to); err != nil {
			return "", fmt.Errorf("%w: recipient: %v", ErrInvalid, err)
		}
		env.Rcpts = append(env.Rcpts, envelope.Rcpt{Addr: to, Notify: msg.Notify})
	}
	// The same reserve as SMTP and Pickup: new mail leaves room for the
	// mail already queued.
	room := &bus.Room{JS: js, Reserve: config.Default().NATS.Reserve}
	if err := room.Check(ctx, int64(len(msg.Data))); err != nil {
		return "", err
	}
	data := msg.Data
	if len(data) > envelope.InlineMax {
		bodies, err := bus.OpenBodies(ctx, js)
		if err != nil {
			return "", err
		}
		if _, err := bodies.Put(ctx, qid, bytes.NewReader(data)); err != nil {
			return "", err
		}
		env.Body, data = envelope.BodyObject, nil
	}
	nm, err := env.Msg(bus.SubjIn, data)
	if err == nil {
		// What the router will check: refuse it here rather than bounce it there.
		_, err = envelope.Decode(nm.Header)
	}
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if _, err := bus.Publish(ctx, js, nm, id); err != nil {
		return "", err
	}
	// Durable before the caller is told: `mailroot all` and `mailroot
	// nats` sync the store for it (group commit); another server syncs by
	// its own configuration.
	if err := bus.RequestSync(ctx, js.Conn()); err != nil && !errors.Is(err, nats.ErrNoResponders) {
		return "", err
	}
	return qid, nil
}
