package bus

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
)

// Open streams an Object Store body chunk by chunk: the bytes come back
// whole, a missing body is ErrObjectNotFound, and a body deleted while it
// is read ends in an error, never in a silently short message.
func TestBodiesOpenStreamsChunks(t *testing.T) {
	b := testBodies(t)
	body := make([]byte, 1<<20+12345) // 9 chunks of 128 KiB, the last one short
	_, _ = rand.Read(body)
	env := &envelope.Envelope{QueueID: "Q1", Body: envelope.BodyObject}
	if _, err := b.Put(t.Context(), env.QueueID, bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	for range 2 { // readable again: nothing is consumed
		r, err := b.Open(t.Context(), env, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		_ = r.Close()
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("read %d bytes (%v), want the %d stored", len(got), err, len(body))
		}
	}

	if _, err := b.Open(t.Context(), &envelope.Envelope{QueueID: "nope", Body: envelope.BodyObject}, nil); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Errorf("missing body: %v, want ErrObjectNotFound", err)
	}

	r, err := b.Open(t.Context(), env, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r, make([]byte, 200<<10)); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(t.Context(), env.QueueID); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(r); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Errorf("reading a deleted body: %v, want ErrObjectNotFound", err)
	}
}

// A shared body is counted: Share and Retain add references, each Release
// takes one away, and the object goes with the last one.
func TestBodiesReferenceCount(t *testing.T) {
	b := testBodies(t)
	env := &envelope.Envelope{QueueID: "Q2", Body: envelope.BodyObject}
	if _, err := b.Put(t.Context(), env.QueueID, bytes.NewReader(bytes.Repeat([]byte("x"), 300<<10))); err != nil {
		t.Fatal(err)
	}
	refs := func() int {
		t.Helper()
		n, err := b.References(t.Context(), env)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if got := refs(); got != 1 {
		t.Fatalf("fresh body: %d references, want 1", got)
	}
	if err := b.Share(t.Context(), env.QueueID, 2); err != nil {
		t.Fatal(err)
	}
	if err := b.Retain(t.Context(), env, 1); err != nil {
		t.Fatal(err)
	}
	if got := refs(); got != 3 {
		t.Fatalf("after Share 2 and Retain 1: %d references, want 3", got)
	}
	for want := 2; want >= 1; want-- {
		if err := b.Release(t.Context(), env); err != nil {
			t.Fatal(err)
		}
		if got := refs(); got != want {
			t.Fatalf("%d references, want %d", got, want)
		}
		if _, err := b.Open(t.Context(), env, nil); err != nil {
			t.Fatalf("body gone with %d references left: %v", want, err)
		}
	}
	if err := b.Release(t.Context(), env); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Open(t.Context(), env, nil); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Errorf("body after the last release: %v, want ErrObjectNotFound", err)
	}
}

// testBodies is Bodies on a fresh server with the streams made.
func testBodies(t *testing.T) *Bodies {
	t.Helper()
	_, js := testutil.StartNATS(t).Connect(t)
	if err := EnsureStream(t.Context(), js, Layout{Replicas: 1, BodyTTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	b, err := OpenBodies(t.Context(), js)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
