package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/envelope"
)

// Hold, ETRN and ATRN (docs/DESIGN.md §4 "Hold / ETRN / ATRN"):
// the router publishes mail for a domain marked hold to mail.hold.<tok>,
// where it waits; the durable consumer hold_<tok> is pulled only when the
// mail is released, by ETRN (a request on SubjCtlRelease answered by the
// release worker of a delivery process) or by an ATRN session.

// SubjCtlRelease is the core NATS request subject of an ETRN release: a
// ReleaseRequest, answered with a ReleaseReply by one of the release
// workers (queue group QueueRelease).
const SubjCtlRelease = "mta.ctl.release"

// SubjCtlDisconnectPrefix + <node> is the request subject on which the
// ingress process <node> closes one of its SMTP sessions: the request's
// data is the session id, the Mailroot-Admin header who asks; the reply
// is "closed" or an error text.
const SubjCtlDisconnectPrefix = "mta.ctl.disconnect."

// QueueRelease is the queue group of the release workers.
const QueueRelease = "release"

// ReleaseRequest asks for the held mail (and pending retries) of domains to
// be delivered now.
type ReleaseRequest struct {
	// Domains are dotted domain names; each is released.
	Domains []string `json:"domains"`
	// Client names who asked (for the log), e.g. "ETRN from 192.0.2.1".
	Client string `json:"client,omitempty"`
}

// ReleaseReply says how many messages were queued for delivery.
type ReleaseReply struct {
	// Pending is the number of held messages and retry schedules that
	// were pending when the release started.
	Pending int `json:"pending"`
	// Error is set when the release could not be started.
	Error string `json:"error,omitempty"`
}

// HoldConsumer is the durable consumer name of held mail for domain token tok.
func HoldConsumer(tok string) string { return "hold_" + tok }

// HoldAckWait is how long a pulled held message may stay unacknowledged
// (ATRN sessions and release workers send InProgress while they work on one).
const HoldAckWait = 2 * time.Minute

// EnsureHoldConsumer creates or updates hold_<tok>, the pull consumer of
// mail.hold.<tok>. Its MaxDeliver is unlimited: held mail is retried over
// ATRN sessions for as long as it is held, and must never reach a
// redelivery limit that would leave it invisible on the WorkQueue stream.
func EnsureHoldConsumer(ctx context.Context, js jetstream.JetStream, tok string, replicas int) (jetstream.Consumer, error) {
	c, err := js.CreateOrUpdateConsumer(ctx, StreamMail, jetstream.ConsumerConfig{
		Durable:       HoldConsumer(tok),
		Description:   "mail held for ETRN/ATRN",
		FilterSubject: Hold(tok),
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       HoldAckWait,
		MaxAckPending: 1000,
		MaxDeliver:    -1,
		Replicas:      max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("bus: create consumer %s: %w", HoldConsumer(tok), err)
	}
	return c, nil
}

// HeldCount is the number of messages waiting on mail.hold.<tok> and not
// being worked on.
func HeldCount(ctx context.Context, js jetstream.JetStream, tok string) (int, error) {
	s, err := js.Stream(ctx, StreamMail)
	if err != nil {
		return 0, fmt.Errorf("bus: stream %s: %w", StreamMail, err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(Hold(tok)))
	if err != nil {
		return 0, fmt.Errorf("bus: held count %s: %w", tok, err)
	}
	return int(info.State.Subjects[Hold(tok)]), nil
}

// DeferredSubjects lists the pending retry schedules of domain token tok
// (mail.defer.<tok>.<qid>).
func DeferredSubjects(ctx context.Context, js jetstream.JetStream, tok string) ([]string, error) {
	s, err := js.Stream(ctx, StreamMail)
	if err != nil {
		return nil, fmt.Errorf("bus: stream %s: %w", StreamMail, err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(SubjDeferPrefix+tok+".*"))
	if err != nil {
		return nil, fmt.Errorf("bus: deferred of %s: %w", tok, err)
	}
	out := make([]string, 0, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		out = append(out, subj)
	}
	return out, nil
}

// FireDeferred makes the retry schedule on subj (mail.defer.<tok>.<qid>)
// fire into mail.out.<tok> now: the envelope it carries (without the
// schedule's Nats-* headers) is published on subj again as a schedule due
// at once, with the id that id builds from the queue id and the old
// schedule's sequence, and only if subj still holds that schedule. It
// returns the queue id and whether it fired; a schedule that fired or was
// replaced meanwhile is not fired twice (false, nil). ETRN (delivery's
// release worker) and `mailroot queue flush` both fire schedules here.
func FireDeferred(ctx context.Context, room *Room, tok, subj string, id func(qid string, seq uint64) string) (string, bool, error) {
	stream, err := room.JS.Stream(ctx, StreamMail)
	if err != nil {
		return "", false, fmt.Errorf("bus: stream %s: %w", StreamMail, err)
	}
	raw, err := stream.GetLastMsgForSubject(ctx, subj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return "", false, nil // fired meanwhile
	}
	if err != nil {
		return "", false, fmt.Errorf("bus: read %s: %w", subj, err)
	}
	msg := &nats.Msg{Subject: subj, Header: nats.Header{}, Data: raw.Data}
	for k, vs := range raw.Header {
		if len(k) >= 5 && k[:5] == "Nats-" {
			continue
		}
		msg.Header[k] = append([]string(nil), vs...)
	}
	qid := msg.Header.Get(envelope.HdrQueueID)
	_, err = room.Forward(ctx, msg, id(qid, raw.Sequence),
		jetstream.WithScheduleAt(time.Now()), jetstream.WithScheduleTarget(Out(tok)),
		jetstream.WithExpectLastSequencePerSubject(raw.Sequence))
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return qid, false, nil // the schedule fired or was replaced meanwhile
	}
	if err != nil {
		return qid, false, fmt.Errorf("bus: reschedule %s: %w", subj, err)
	}
	return qid, true, nil
}

// BucketSessions is the KV bucket of live SMTP sessions and ATRN locks
// (docs/DESIGN.md §2). Every value is written with a per-message TTL, so the
// entries of a crashed ingress vanish by themselves.
const BucketSessions = "mta-sessions"

// Key prefixes in BucketSessions.
const (
	// SessionKeyPrefix + <node>.<id> holds a SessionInfo.
	SessionKeyPrefix = "session."
	// ATRNLockPrefix + <tok> is held by the one ATRN session dequeuing that
	// domain, cluster-wide.
	ATRNLockPrefix = "lock.atrn."
)

// isNoStream reports whether a publish found no stream for its subject.
func isNoStream(err error) bool {
	return errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders)
}

// EnsureSessions creates or updates the mta-sessions bucket; replicas 0
// takes the MAIL stream's (for callers that do not know the layout).
//
// The bucket is in memory: everything in it is live state that a crashed
// holder's TTL ends anyway (docs/DESIGN.md §3, "need not be durable"), and
// delivery writes a lease per attempt, so on a file store it cost four
// record writes per mail (the lease, its release, the expiry's marker and
// that marker's removal) for nothing a restart needs. A bucket left on
// file storage by an older version is recreated: a stream's storage cannot
// be changed, and its entries are only live state.
func EnsureSessions(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	if replicas <= 0 {
		replicas = 1
		if s, err := js.Stream(ctx, StreamMail); err == nil {
			replicas = s.CachedInfo().Config.Replicas
		}
	}
	cfg := jetstream.KeyValueConfig{
		Bucket:         BucketSessions,
		Description:    "live SMTP sessions of every ingress, ATRN locks, message leases",
		History:        1,
		Storage:        jetstream.MemoryStorage,
		Replicas:       max(replicas, 1),
		LimitMarkerTTL: time.Second,
	}
	if s, err := js.Stream(ctx, "KV_"+BucketSessions); err == nil && s.CachedInfo().Config.Storage != jetstream.MemoryStorage {
		if err := js.DeleteKeyValue(ctx, BucketSessions); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, fmt.Errorf("bus: recreate kv %s in memory: %w", BucketSessions, err)
		}
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("bus: create kv %s: %w", BucketSessions, err)
	}
	return kv, nil
}

// SessionInfo is one live SMTP session as `mailroot sessions` shows it.
type SessionInfo struct {
	Node string `json:"node"`
	// ID is the session's id within its node (the cid of its log lines):
	// `mailroot sessions disconnect` names a session by it.
	ID         string    `json:"id,omitempty"`
	Site       string    `json:"site"`
	ClientIP   string    `json:"client_ip"`
	ClientName string    `json:"client_name,omitempty"`
	Helo       string    `json:"helo,omitempty"`
	User       string    `json:"user,omitempty"`
	TLS        string    `json:"tls,omitempty"`
	Since      time.Time `json:"since"`
	Messages   int       `json:"messages"`
	Bytes      int64     `json:"bytes"`
}

// PutTTL writes key=value into a KV bucket with a per-key TTL (the bucket
// needs LimitMarkerTTL). With lastRev > 0 the write only succeeds if the
// key is still at that revision (a lock refresh); lastRev < 0 requires the
// key not to exist (a lock). It returns the new revision.
func PutTTL(ctx context.Context, js jetstream.JetStream, bucket, key string, value []byte, ttl time.Duration, lastRev int64) (uint64, error) {
	opts := []jetstream.PublishOpt{jetstream.WithMsgTTL(ttl)}
	switch {
	case lastRev > 0:
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(uint64(lastRev)))
	case lastRev < 0:
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(0))
	}
	ack, err := js.Publish(ctx, "$KV."+bucket+"."+key, value, opts...)
	if bucket == BucketSessions && isNoStream(err) {
		// The bucket is in memory: a restart of the server, or the store
		// guard reopening JetStream, forgets it. Make it again, with the
		// MAIL stream's replicas, and write once more.
		if _, rerr := EnsureSessions(ctx, js, 0); rerr != nil {
			return 0, fmt.Errorf("bus: put %s/%s: %w (recreating the bucket: %v)", bucket, key, err, rerr)
		}
		ack, err = js.Publish(ctx, "$KV."+bucket+"."+key, value, opts...)
	}
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return 0, fmt.Errorf("%w: %s", ErrLocked, key)
		}
		return 0, fmt.Errorf("bus: put %s/%s: %w", bucket, key, err)
	}
	return ack.Sequence, nil
}

// ErrLocked means a PutTTL with an expected revision found another one.
var ErrLocked = errors.New("bus: key changed or exists")

// Lock takes key in a per-key-TTL bucket for ttl: it succeeds only when the
// key is absent, was released, or expired. It returns the revision to
// refresh (PutTTL with it) and release (Unlock) the lock with.
func Lock(ctx context.Context, js jetstream.JetStream, bucket, key string, value []byte, ttl time.Duration) (uint64, error) {
	rev, err := PutTTL(ctx, js, bucket, key, value, ttl, -1)
	if !errors.Is(err, ErrLocked) {
		return rev, err
	}
	// The key may hold only a released lock (an empty value) or a delete
	// marker left by an expiry: both are free.
	s, serr := js.Stream(ctx, "KV_"+bucket)
	if serr != nil {
		return 0, fmt.Errorf("bus: lock %s: %w", key, serr)
	}
	raw, gerr := s.GetLastMsgForSubject(ctx, "$KV."+bucket+"."+key)
	if gerr != nil {
		if errors.Is(gerr, jetstream.ErrMsgNotFound) {
			return PutTTL(ctx, js, bucket, key, value, ttl, -1)
		}
		return 0, fmt.Errorf("bus: lock %s: %w", key, gerr)
	}
	if len(raw.Data) == 0 {
		return PutTTL(ctx, js, bucket, key, value, ttl, int64(raw.Sequence))
	}
	return 0, err
}

// Unlock releases a lock taken at revision rev: it is overwritten with an
// empty value that expires in a second (no delete marker stays behind).
func Unlock(ctx context.Context, js jetstream.JetStream, bucket, key string, rev uint64) error {
	_, err := PutTTL(ctx, js, bucket, key, nil, time.Second, int64(rev))
	return err
}

// KeepAlive sends InProgress for m every interval until stop is called
// (for work on a message outside a Worker, such as an ATRN transfer).
func KeepAlive(m jetstream.Msg, every time.Duration) (stop func()) { return keepAlive(m, every) }
