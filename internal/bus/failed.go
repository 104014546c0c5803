package bus

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/envelope"
)

// StreamFailed keeps a copy of every message that bounced, for
// `mailroot redrive` (docs/DESIGN.md §2): on failed.<tok>.<qid>.<kind><n>,
// the envelope of the recipients that failed with the message inline,
// kept for FailedRetention (a Limits stream with MaxAge). A bounced event
// names the copy in its "kept" field.
const StreamFailed = "MAIL_FAILED"

// SubjFailedPrefix starts every subject of StreamFailed.
const SubjFailedPrefix = "failed."

// FailedRetention is how long failed mail is kept for redrive.
const FailedRetention = 7 * 24 * time.Hour

// FailedMaxMsg is the largest copy kept (the server's default payload
// limit, less room for the headers); a message with a larger body is
// reported without a copy (the bounced event has no "kept").
const FailedMaxMsg = 1<<20 - 64<<10

// EnsureFailed creates or updates the MAIL_FAILED stream. Under a store
// limit (storeLimit > 0) it keeps at most the events' share of it
// (EventsMaxBytes), the oldest copies going first: copies are kept while
// intake is refused, and must not eat the reserve of queued mail.
func EnsureFailed(ctx context.Context, js jetstream.JetStream, replicas int, storeLimit int64) error {
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamFailed,
		Description: "Mailroot failed mail: the originals of bounced messages, for mailroot redrive",
		Subjects:    []string{SubjFailedPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
		MaxAge:      FailedRetention,
		MaxBytes:    EventsMaxBytes(storeLimit),
		Discard:     jetstream.DiscardOld,
		Duplicates:  10 * time.Minute,
		AllowDirect: true,
	})
	if err != nil {
		return fmt.Errorf("bus: create stream %s: %w", StreamFailed, err)
	}
	return nil
}

// FailedSubject is the subject of the kept copy of qid for token tok.
func FailedSubject(tok, qid, kind string, n uint64) string {
	return fmt.Sprintf("%s%s.%s.%s%d", SubjFailedPrefix, tok, qid, kind, n)
}

// KeepFailed stores a copy of env, with rcpts (those that failed) and the
// message body (read from data or the Object Store), on MAIL_FAILED. It
// returns the copy's subject, or "" when the message is too large to keep
// or the store has no room for new mail.
// The copy is durable when it returns (Room.Forward), before the caller
// acks the original.
func KeepFailed(ctx context.Context, room *Room, bodies *Bodies, env *envelope.Envelope, data []byte, rcpts []envelope.Rcpt, tok, kind string, n uint64) (string, error) {
	if env.BodySize > FailedMaxMsg || int64(len(data)) > FailedMaxMsg {
		return "", nil
	}
	if room.Check(ctx, max(env.BodySize, int64(len(data)))) != nil {
		// Only with room for new mail: the copy is a convenience, and
		// must not take the reserve the bounce's own report needs
		// (a full store's mail expires and bounces). The bounced event
		// then names no copy.
		return "", nil
	}
	body := data
	if env.Body == envelope.BodyObject {
		r, err := bodies.Open(ctx, env, data)
		if err != nil {
			return "", err
		}
		buf := make([]byte, 0, env.BodySize)
		b := make([]byte, 32<<10)
		for {
			k, rerr := r.Read(b)
			buf = append(buf, b[:k]...)
			if rerr != nil {
				break
			}
			if len(buf) > FailedMaxMsg {
				_ = r.Close()
				return "", nil
			}
		}
		_ = r.Close()
		body = buf
	}
	c := env.Clone()
	c.Rcpts = rcpts
	c.Body = envelope.BodyInline
	c.BodySize = int64(len(body))
	subj := FailedSubject(tok, env.QueueID, kind, n)
	c.MsgID = envelope.FailedID(env.QueueID, tok, kind, n)
	msg, err := c.Msg(subj, body)
	if err != nil {
		return "", fmt.Errorf("failed copy: %w", err)
	}
	if _, err := room.Forward(ctx, msg, c.MsgID, jetstream.WithExpectStream(StreamFailed)); err != nil {
		return "", fmt.Errorf("keep failed %s: %w", env.QueueID, err)
	}
	return subj, nil
}

// ReadFailed reads a kept copy back: its envelope and message.
func ReadFailed(ctx context.Context, js jetstream.JetStream, subj string) (*envelope.Envelope, []byte, error) {
	s, err := js.Stream(ctx, StreamFailed)
	if err != nil {
		return nil, nil, fmt.Errorf("bus: stream %s: %w", StreamFailed, err)
	}
	raw, err := s.GetLastMsgForSubject(ctx, subj)
	if err != nil {
		return nil, nil, fmt.Errorf("bus: read %s: %w", subj, err)
	}
	h := nats.Header{}
	for k, v := range raw.Header {
		if len(k) >= 5 && k[:5] == "Nats-" {
			continue
		}
		h[k] = v
	}
	env, err := envelope.Decode(h)
	if err != nil {
		return nil, nil, fmt.Errorf("bus: %s: %w", subj, err)
	}
	return env, raw.Data, nil
}
