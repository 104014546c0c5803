package bus

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/envelope"
)

// StreamEvents is the replayable mail log: one JSON Event per mail event
// on events.<type>.<domain token>, kept by age (docs/DESIGN.md §2, README
// "Events": the schema is a public contract).
const StreamEvents = "MAIL_EVENTS"

// SubjEventsPrefix starts every event subject.
const SubjEventsPrefix = "events."

// Event types, the second token of the subject.
const (
	EventReceived  = "received"  // accepted over SMTP (after the 250's PubAck)
	EventPickedUp  = "pickedup"  // a Pickup file became mail on mail.in
	EventRouted    = "routed"    // split per destination and forwarded
	EventDelivered = "delivered" // one recipient accepted by the remote, or written to Drop
	EventDeferred  = "deferred"  // recipients failed temporarily, a retry is scheduled
	EventBounced   = "bounced"   // recipients failed for good, a report went to the sender
	EventExpired   = "expired"   // the queue lifetime ran out (a bounced event follows)
	EventHeld      = "held"      // routed to a held domain, waiting for ETRN/ATRN
	EventReleased  = "released"  // held mail released by ETRN
	EventDropped   = "dropped"   // written to a Drop directory
	EventBadmail   = "badmail"   // moved to mail.bad
	EventConfig    = "config"    // a live configuration key changed (mailroot config set, the admin console)
	EventAdmin     = "admin"     // an administrator's action in the admin console (disconnect, ETRN release): Admin and Reason

	// An administrator's queue actions (internal/queue, `mailroot queue`,
	// `mailroot redrive`); Admin says who. `queue bounce` emits bounced,
	// with Admin set.
	EventDeleted       = "deleted"       // removed from the queue for good (queue delete)
	EventAdminHeld     = "adminheld"     // put on hold by an administrator (queue hold)
	EventAdminReleased = "adminreleased" // released from an administrator's hold (queue release)
	EventRequeued      = "requeued"      // routed again from scratch as NewQID (queue requeue)
	EventRedriven      = "redriven"      // a bounced, expired or Badmail message sent again as NewQID (redrive)

	// EventQuarantined: written to the Quarantine directory (the inbound
	// checks quarantined it).
	EventQuarantined = "quarantined"
)

// EventTypes lists every event type, in the order of a mail's life.
var EventTypes = []string{EventReceived, EventPickedUp, EventRouted, EventHeld, EventReleased,
	EventDelivered, EventDropped, EventQuarantined, EventDeferred, EventExpired, EventBounced, EventBadmail, EventConfig, EventAdmin,
	EventDeleted, EventAdminHeld, EventAdminReleased, EventRequeued, EventRedriven}

// EventsRetention is how long events are kept when events.max_age is not
// set.
const EventsRetention = 30 * 24 * time.Hour

// EventsShare is the part of a limited store (nats.max_store, or the
// account's limit) that events may take: 1/EventsShare. The pipeline
// emits events while intake is refused (every retry is one), so events
// must not grow into the reserve kept for queued mail; past their share
// the oldest are dropped, and Room counts the whole share as in use.
const EventsShare = 10

// EventsMaxBytes is the MAIL_EVENTS byte limit under a store limit of
// limit bytes (-1: none, when the store has no limit).
func EventsMaxBytes(limit int64) int64 {
	if limit <= 0 {
		return -1
	}
	return limit / EventsShare
}

// EnsureEvents creates or updates the MAIL_EVENTS stream, keeping events
// for maxAge (EventsRetention when 0) and, when the store has a limit
// (storeLimit, nats.max_store, or the account's), at most their share of
// it. The dedup window covers a publish retried by a redelivered message
// (DESIGN.md §4).
func EnsureEvents(ctx context.Context, js jetstream.JetStream, replicas int, maxAge time.Duration, storeLimit int64) error {
	if maxAge <= 0 {
		maxAge = EventsRetention
	}
	if ai, err := js.AccountInfo(ctx); err == nil && ai.Limits.MaxStore > 0 && (storeLimit <= 0 || ai.Limits.MaxStore < storeLimit) {
		storeLimit = ai.Limits.MaxStore
	}
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamEvents,
		Description: "Mailroot mail events (received, delivered, bounced, badmail, …) for audit and replay",
		Subjects:    []string{SubjEventsPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
		MaxAge:      maxAge,
		MaxBytes:    EventsMaxBytes(storeLimit),
		Discard:     jetstream.DiscardOld,
		Duplicates:  min(10*time.Minute, maxAge),
	})
	if err != nil {
		return fmt.Errorf("bus: create stream %s: %w", StreamEvents, err)
	}
	return nil
}

// Event is one entry of the mail log, the one JSON schema of every event
// type. The common fields are Type, Time, QueueID and Node; the others are
// set by the types that have them (README "Events") and left out of the
// JSON when empty.
type Event struct {
	// Type is one of the Event* constants.
	Type string `json:"type"`
	// Time is when the fact happened (UTC).
	Time time.Time `json:"time"`
	// QueueID is the message's queue id; the parts of a split message
	// share it.
	QueueID string `json:"qid,omitempty"`
	// Node is the host name of the process that saw the fact.
	Node string `json:"node,omitempty"`
	// Domain is the recipient domain the event concerns (A-label); empty
	// when none, or when a received event's recipients span several.
	Domain string `json:"domain,omitempty"`

	// Site, ClientIP, ClientName, Helo, AuthUser, Size, RcptCount and
	// Sender describe a received message (pickedup: Sender, Size,
	// RcptCount). TLS is the protocol and cipher ("TLS1.3
	// TLS_AES_128_GCM_SHA256") of the SMTP session, ingress's or
	// delivery's.
	Site       string `json:"site,omitempty"`
	ClientIP   string `json:"client_ip,omitempty"`
	ClientName string `json:"client_name,omitempty"`
	Helo       string `json:"helo,omitempty"`
	AuthUser   string `json:"auth_user,omitempty"`
	TLS        string `json:"tls,omitempty"`
	// TLSPolicy is the TLS policy a delivered event's attempt applied
	// (opportunistic, mta-sts, mta-sts-testing, dane, require_tls,
	// requiretls); TLSFailure what a policy in testing mode would have
	// refused (the session delivered all the same).
	TLSPolicy  string `json:"tls_policy,omitempty"`
	TLSFailure string `json:"tls_failure,omitempty"`
	Size       int64  `json:"size,omitempty"`
	RcptCount  int    `json:"rcpt_count,omitempty"`
	Sender     string `json:"sender,omitempty"`

	// Parts are a routed message's destinations.
	Parts []RoutedPart `json:"parts,omitempty"`

	// Rcpt is the one recipient of a delivered event; Rcpts are the
	// recipients of deferred, bounced, expired, held, released and
	// dropped events.
	Rcpt  string   `json:"rcpt,omitempty"`
	Rcpts []string `json:"rcpts,omitempty"`
	// MX and MXIP are the host delivered to and its address; Reply is
	// the remote's answer (its reply to the end of DATA for delivered,
	// the failure for deferred and bounced).
	MX    string `json:"mx,omitempty"`
	MXIP  string `json:"mx_ip,omitempty"`
	Reply string `json:"reply,omitempty"`
	// DurationMS is how long the delivery attempt took, in milliseconds.
	DurationMS int64 `json:"duration_ms,omitempty"`
	// Attempt is the number of the attempt (1 for the first); NextAttempt
	// is when a deferred message is tried again.
	Attempt     int       `json:"attempt,omitempty"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	// ReportQID is the queue id of the report sent to the sender.
	ReportQID string `json:"report_qid,omitempty"`
	// Reason says why (bounced, expired, badmail, quarantined).
	Reason string `json:"reason,omitempty"`
	// Subject is the MAIL subject the event is about: the next subject of
	// a released message, the subject a badmail message came from.
	Subject string `json:"subject,omitempty"`
	// File is the Pickup file taken (pickedup) or the Drop or Quarantine
	// file written (dropped, quarantined).
	File string `json:"file,omitempty"`

	// Admin is who made an administrator's change (config) or action
	// (admin): the OS user, the NATS user or the console's login.
	Admin string `json:"admin,omitempty"`
	// Key, Value and Revision are a config event's key, its new TOML
	// value ("" when unset) and the revision it was stored as; Reason is
	// the change's why.
	Key      string `json:"key,omitempty"`
	Value    string `json:"value,omitempty"`
	Revision uint64 `json:"revision,omitempty"`

	// NewQID is the queue id a requeued or redriven message goes on as.
	NewQID string `json:"new_qid,omitempty"`
	// Kept is the MAIL_FAILED subject holding the original of a bounced
	// message (empty when it was too large to keep): what redrive sends
	// again.
	Kept string `json:"kept,omitempty"`
}

// RoutedPart is one destination of a routed message.
type RoutedPart struct {
	// Domain is the destination domain (A-label).
	Domain string `json:"domain"`
	// Rcpts are its recipients.
	Rcpts []string `json:"rcpts"`
	// Subject is where the part went: mail.out.<tok>, mail.hold.<tok>,
	// mail.drop.
	Subject string `json:"subject"`
}

// EventSubject is the subject of an event of type typ about domain:
// events.<type>.<token>, "_" as the token when there is no domain.
func EventSubject(typ, domain string) string {
	tok := "_"
	if domain != "" {
		tok = Token(domain)
	}
	return SubjEventsPrefix + typ + "." + tok
}

// EventMsgID is the Nats-Msg-Id of e, the one place that builds it: the
// queue id, the type, the domain token (the parts of a split message
// share their queue id), and what tells two events of one type apart (the
// recipient or a digest of the recipients, the attempt, the report). A publish repeated by a redelivered
// message thus stores one event. Events without a queue id get none.
func EventMsgID(e Event) string {
	if e.Type == EventConfig && e.Key != "" {
		return sanitize(EventConfig + "." + e.Key + ".r" + strconv.FormatUint(e.Revision, 10))
	}
	if e.QueueID == "" {
		return ""
	}
	var b strings.Builder
	b.WriteString(e.QueueID)
	b.WriteByte('.')
	b.WriteString(e.Type)
	if e.Domain != "" {
		b.WriteByte('.')
		b.WriteString(Token(e.Domain))
	}
	switch {
	case e.Rcpt != "":
		b.WriteByte('.')
		b.WriteString(e.Rcpt)
	case len(e.Rcpts) > 0:
		// The recipient set, short: the groups of one attempt that
		// failed differently are different events.
		h := fnv.New32a()
		for _, r := range e.Rcpts {
			h.Write([]byte(r))
			h.Write([]byte{0})
		}
		b.WriteString(".r")
		b.WriteString(strconv.FormatUint(uint64(h.Sum32()), 36))
	}
	if e.Attempt > 0 {
		b.WriteString(".a")
		b.WriteString(strconv.Itoa(e.Attempt))
	}
	if e.ReportQID != "" {
		b.WriteByte('.')
		b.WriteString(e.ReportQID)
	}
	if e.Admin != "" {
		// An administrator may act on one message several times (hold,
		// release, hold): each action is an event of its own.
		b.WriteString(".adm")
		b.WriteString(strconv.FormatInt(e.Time.UnixNano(), 36))
	}
	return sanitize(b.String())
}

// eventNode is this process's host name, the Node of its events.
var eventNode = func() string {
	h, _ := os.Hostname()
	return h
}()

// EmitSync publishes an event and waits for the stream to store it: for
// the events of short-lived commands (an administrator's change), which
// must be in the log before the command says it is done.
func EmitSync(ctx context.Context, js jetstream.JetStream, e Event) error {
	m := eventMsg(e)
	if m == nil {
		return fmt.Errorf("bus: event %s: cannot encode", e.Type)
	}
	if _, err := js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("bus: event %s: %w", e.Type, err)
	}
	return nil
}

// eventMsg is the message of e (nil if it cannot be encoded).
func eventMsg(e Event) *nats.Msg {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	if e.Node == "" {
		e.Node = eventNode
	}
	b, err := json.Marshal(e)
	if err != nil {
		return nil
	}
	m := &nats.Msg{Subject: EventSubject(e.Type, e.Domain), Data: b}
	if id := EventMsgID(e); id != "" {
		m.Header = nats.Header{jetstream.MsgIDHeader: []string{id}}
	}
	return m
}

// Emit publishes an event as a core NATS message, with no reply subject:
// the stream stores it (deduplicated by its Nats-Msg-Id) but sends no
// acknowledgement, which nobody would wait for anyway: the event log must
// never hold up or fail mail handling. That saves, per event, the
// server's PubAck and the client's inbox, pending-publish entry and
// future, about a tenth of the pipeline's CPU. A lost event is also in
// the process log.
func Emit(js jetstream.JetStream, e Event) {
	if js == nil {
		return
	}
	if m := eventMsg(e); m != nil {
		_ = js.Conn().PublishMsg(m)
	}
}

// DomainOf is the domain shared by every address in rcpts (normalised),
// or "" when they have none or several.
func DomainOf(rcpts []string) string {
	d := ""
	for i, r := range rcpts {
		_, dom, err := envelope.Split(r)
		if err != nil {
			return ""
		}
		dom = envelope.NormalizeDomain(dom)
		if i > 0 && dom != d {
			return ""
		}
		d = dom
	}
	return d
}

// Addrs are the addresses of rcpts.
func Addrs(rcpts []envelope.Rcpt) []string {
	out := make([]string, len(rcpts))
	for i, r := range rcpts {
		out[i] = r.Addr
	}
	return out
}
