package bus

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"io"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/envelope"
)

// Bodies stores and fetches message bodies: inline in the envelope message
// up to envelope.InlineMax, in the mail-bodies Object Store above that.
// Bodies shared by several envelopes (the router split a message per
// destination) are reference-counted in the mta-refs bucket, and the object
// is deleted when the last envelope needing it is done.
type Bodies struct {
	js   jetstream.JetStream
	obs  jetstream.ObjectStore
	refs jetstream.KeyValue
	// chunks is the Object Store's stream, read chunk by chunk (Open).
	chunks jetstream.Stream
}

// OpenBodies binds to the buckets made by EnsureStream.
func OpenBodies(ctx context.Context, js jetstream.JetStream) (*Bodies, error) {
	obs, err := js.ObjectStore(ctx, BucketBodies)
	if err != nil {
		return nil, fmt.Errorf("bus: open object store %s: %w", BucketBodies, err)
	}
	refs, err := js.KeyValue(ctx, BucketRefs)
	if err != nil {
		return nil, fmt.Errorf("bus: open kv %s: %w", BucketRefs, err)
	}
	chunks, err := js.Stream(ctx, "OBJ_"+BucketBodies)
	if err != nil {
		return nil, fmt.Errorf("bus: open object store stream %s: %w", BucketBodies, err)
	}
	return &Bodies{js: js, obs: obs, refs: refs, chunks: chunks}, nil
}

// Put stores a large body under qid, streaming from r.
func (b *Bodies) Put(ctx context.Context, qid string, r io.Reader) (int64, error) {
	info, err := b.obs.Put(ctx, jetstream.ObjectMeta{Name: qid}, r)
	if err != nil {
		if isStoreFull(err) {
			return 0, fmt.Errorf("%w: %v", ErrStoreFull, err)
		}
		return 0, fmt.Errorf("bus: put body %s: %w", qid, err)
	}
	return int64(info.Size), nil
}

// Open returns a reader of the body of the envelope carried by a message
// with payload data.
func (b *Bodies) Open(ctx context.Context, env *envelope.Envelope, data []byte) (io.ReadCloser, error) {
	if env.Body != envelope.BodyObject {
		return io.NopCloser(bytes.NewReader(data)), nil
	}
	info, err := b.obs.GetInfo(ctx, env.QueueID)
	if err != nil {
		return nil, fmt.Errorf("bus: get body %s: %w", env.QueueID, err)
	}
	if info.NUID == "" || info.Opts != nil && info.Opts.Link != nil {
		return nil, fmt.Errorf("bus: get body %s: %w", env.QueueID, jetstream.ErrBadObjectMeta)
	}
	return &chunkReader{
		ctx: ctx, st: b.chunks, name: env.QueueID, info: info,
		subj: "$O." + BucketBodies + ".C." + info.NUID, digest: sha256.New(),
	}, nil
}

// chunkReader reads an Object Store object one chunk at a time, each
// fetched when the previous one has been consumed (a direct get of the
// next message on the object's chunk subject). ObjectStore.Get pushes the
// whole object to the client as fast as the server can send it, so a slow
// reader — an SMTP transaction — would hold most of a large body in memory;
// this holds one 128 KiB chunk. The digest and size are checked at the end,
// as Get does.
type chunkReader struct {
	ctx    context.Context
	st     jetstream.Stream
	name   string
	info   *jetstream.ObjectInfo
	subj   string
	next   uint64 // stream sequence to look from
	got    uint32 // chunks read
	size   uint64 // bytes read
	buf    []byte
	digest hash.Hash
	err    error
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.got == r.info.Chunks {
			r.err = r.finish()
			return 0, r.err
		}
		m, err := r.st.GetMsg(r.ctx, r.next, jetstream.WithGetMsgSubject(r.subj))
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				err = fmt.Errorf("%w: chunk %d of %d missing", jetstream.ErrObjectNotFound, r.got+1, r.info.Chunks)
			}
			r.err = fmt.Errorf("bus: get body %s: %w", r.name, err)
			return 0, r.err
		}
		r.next, r.got, r.buf = m.Sequence+1, r.got+1, m.Data
		r.size += uint64(len(m.Data))
		r.digest.Write(m.Data)
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// finish checks size and digest once every chunk was read.
func (r *chunkReader) finish() error {
	if r.size != r.info.Size {
		return fmt.Errorf("bus: get body %s: %w: %d bytes, want %d", r.name, jetstream.ErrDigestMismatch, r.size, r.info.Size)
	}
	if want := "SHA-256=" + base64.URLEncoding.EncodeToString(r.digest.Sum(nil)); r.info.Digest != "" && r.info.Digest != want {
		return fmt.Errorf("bus: get body %s: %w", r.name, jetstream.ErrDigestMismatch)
	}
	return io.EOF
}

func (r *chunkReader) Close() error {
	if r.err == nil {
		r.err = errors.New("bus: body reader closed")
	}
	r.buf = nil
	return nil
}

// Delete removes a stored body (best effort: the bucket TTL is the backstop).
func (b *Bodies) Delete(ctx context.Context, qid string) error {
	if err := b.obs.Delete(ctx, qid); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("bus: delete body %s: %w", qid, err)
	}
	return nil
}

func refKey(qid string) string { return "refs." + qid }

// Share records that n envelopes now refer to the body of qid. It is called
// before they are published; on redelivery the existing count is kept.
func (b *Bodies) Share(ctx context.Context, qid string, n int) error {
	if n <= 1 {
		return nil
	}
	_, err := b.refs.Create(ctx, refKey(qid), []byte(strconv.Itoa(n)))
	if err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("bus: share body %s: %w", qid, err)
	}
	return nil
}

// Retain records that n more envelopes now refer to the body of env, on
// top of the reference env itself holds. Delivery calls it before
// publishing several successors of one envelope (a retry schedule and
// Badmail copies), each of which calls Release when done. Inline bodies need
// nothing. A retry after a crash may count twice; that only delays deletion
// until the bucket TTL.
func (b *Bodies) Retain(ctx context.Context, env *envelope.Envelope, n int) error {
	if env.Body != envelope.BodyObject || n <= 0 {
		return nil
	}
	key := refKey(env.QueueID)
	for range 50 {
		cur, rev, err := b.count(ctx, env.QueueID)
		if err != nil {
			return fmt.Errorf("bus: retain body %s: %w", env.QueueID, err)
		}
		if rev == 0 {
			// No entry: env holds the only reference.
			_, err = b.refs.Create(ctx, key, []byte(strconv.Itoa(1+n)))
			if err == nil {
				return nil
			}
			if !errors.Is(err, jetstream.ErrKeyExists) {
				return fmt.Errorf("bus: retain body %s: %w", env.QueueID, err)
			}
			continue
		}
		if _, err := b.refs.Update(ctx, key, []byte(strconv.Itoa(max(cur, 1)+n)), rev); err == nil {
			return nil
		}
	}
	return fmt.Errorf("bus: retain body %s: too much contention", env.QueueID)
}

// References reports how many envelopes refer to the body of env (1 when
// no count was recorded: the envelope's own reference).
func (b *Bodies) References(ctx context.Context, env *envelope.Envelope) (int, error) {
	n, _, err := b.count(ctx, env.QueueID)
	if err != nil {
		return 0, fmt.Errorf("bus: references of body %s: %w", env.QueueID, err)
	}
	return n, nil
}

// count reads the recorded reference count of qid's body and the entry's
// revision; with no entry it is 1 (the one envelope's own) at revision 0.
func (b *Bodies) count(ctx context.Context, qid string) (n int, rev uint64, err error) {
	e, err := b.refs.Get(ctx, refKey(qid))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 1, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	n, _ = strconv.Atoi(string(e.Value()))
	return n, e.Revision(), nil
}

// Release is called after an envelope with an Object Store body reached its
// final disposition (and was acked). The body is deleted when no other
// envelope refers to it.
func (b *Bodies) Release(ctx context.Context, env *envelope.Envelope) error {
	if env.Body != envelope.BodyObject {
		return nil
	}
	for range 50 {
		n, rev, err := b.count(ctx, env.QueueID)
		if err != nil {
			return fmt.Errorf("bus: release body %s: %w", env.QueueID, err)
		}
		if rev == 0 {
			return b.Delete(ctx, env.QueueID) // no entry: the only reference
		}
		if n <= 1 {
			if err := b.Delete(ctx, env.QueueID); err != nil {
				return err
			}
			_ = b.refs.Delete(ctx, refKey(env.QueueID))
			return nil
		}
		if _, err := b.refs.Update(ctx, refKey(env.QueueID), []byte(strconv.Itoa(n-1)), rev); err == nil {
			return nil
		}
	}
	return fmt.Errorf("bus: release body %s: too much contention", env.QueueID)
}
