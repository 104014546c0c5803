package bus

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

// A Room made with Via publishes, emits and syncs through its own
// connection, and counts what it admits with the Room it was made from.
func TestRoomVia(t *testing.T) {
	n := testutil.StartNATS(t)
	nc1, js1 := n.Connect(t)
	nc2, js2 := n.Connect(t)
	ctx := context.Background()
	if _, err := Setup(ctx, js1, config.Default()); err != nil {
		t.Fatal(err)
	}
	var syncs atomic.Int32
	base := &Room{JS: js1, Reserve: config.Default().NATS.Reserve, Sync: func(context.Context) error { syncs.Add(1); return nil }}
	via := base.Via(js2)

	out1, out2 := nc1.Stats().OutMsgs, nc2.Stats().OutMsgs
	m := &nats.Msg{Subject: SubjIn, Data: []byte("x")}
	if _, err := via.PublishEmit(ctx, m, "via-1", []Event{{Type: EventReceived, QueueID: "via-1"}}); err != nil {
		t.Fatal(err)
	}
	if got := nc2.Stats().OutMsgs - out2; got != 2 {
		t.Errorf("the Via connection sent %d messages, want 2 (the mail and its event)", got)
	}
	if got := nc1.Stats().OutMsgs - out1; got != 0 {
		t.Errorf("the base connection sent %d messages for a Via publish, want 0", got)
	}
	if syncs.Load() != 1 {
		t.Errorf("%d syncs for one publish, want 1", syncs.Load())
	}

	// Admissions and readings are the base's.
	if err := via.Check(ctx, 1000); err != nil {
		t.Fatal(err)
	}
	base.mu.Lock()
	used, at := base.used, base.at
	base.mu.Unlock()
	if at.IsZero() || used < 1000 {
		t.Errorf("after a check through Via the base has used=%d read at %v, want a reading and the 1000 bytes", used, at)
	}
	via.admit(500)
	base.mu.Lock()
	inflight := base.inflight
	base.mu.Unlock()
	if inflight != 500 {
		t.Errorf("base inflight %d after Via admitted 500", inflight)
	}
	if via.used != 0 || via.inflight != 0 || !via.at.IsZero() {
		t.Errorf("the Via room kept its own counts: used=%d inflight=%d", via.used, via.inflight)
	}
}
