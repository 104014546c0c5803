package bus

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/testutil"
)

// EnsureStream updates the MAIL stream only when its settings differ: the
// server's stream-updated advisory shows each update.
func TestEnsureStreamUpdatesOnlyOnChange(t *testing.T) {
	n := testutil.StartNATS(t)
	nc, js := n.Connect(t)
	updates := make(chan *nats.Msg, 10)
	sub, err := nc.ChanSubscribe("$JS.EVENT.ADVISORY.STREAM.UPDATED."+StreamMail, updates)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	l := Layout{Replicas: 1, BodyTTL: time.Hour}
	if err := EnsureStream(t.Context(), js, l); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := EnsureStream(t.Context(), js, l); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if len(updates) != 0 {
		t.Fatalf("%d updates of an unchanged stream", len(updates))
	}
	// A stream with other settings (an older version's) is updated.
	cfg := StreamConfig(1)
	cfg.Duplicates = time.Minute
	if _, err := js.UpdateStream(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	<-updates // our own change
	if err := EnsureStream(t.Context(), js, l); err != nil {
		t.Fatal(err)
	}
	select {
	case <-updates:
	case <-time.After(5 * time.Second):
		t.Fatal("a changed stream was not updated back")
	}
	st, err := js.Stream(t.Context(), StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	if d := st.CachedInfo().Config.Duplicates; d != 10*time.Minute {
		t.Errorf("Duplicates %v after EnsureStream, want 10m", d)
	}
}

// The mta-sessions bucket is kept in memory; one left on file storage by
// an older version is recreated there (a stream's storage cannot change).
func TestEnsureSessionsMovesTheBucketToMemory(t *testing.T) {
	n := testutil.StartNATS(t)
	_, js := n.Connect(t)
	old, err := js.CreateKeyValue(t.Context(), jetstream.KeyValueConfig{
		Bucket: BucketSessions, History: 1, Storage: jetstream.FileStorage, LimitMarkerTTL: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Put(t.Context(), SessionKeyPrefix+"n1.1", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	for round := range 2 {
		kv, err := EnsureSessions(t.Context(), js, 1)
		if err != nil {
			t.Fatal(err)
		}
		st, err := kv.Status(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if got := st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Storage; got != jetstream.MemoryStorage {
			t.Fatalf("storage %v, want memory", got)
		}
		// The first call recreated the bucket; the second keeps it, with
		// the lease taken after the first.
		_, err = Lock(t.Context(), js, BucketSessions, LeaseKey("Q", "t"), []byte("x"), time.Minute)
		if round == 0 && err != nil {
			t.Fatalf("lock in the new bucket: %v", err)
		}
		if round == 1 && !errors.Is(err, ErrLocked) {
			t.Fatalf("lock after the second EnsureSessions: %v, want ErrLocked (the bucket was wiped)", err)
		}
	}
}
