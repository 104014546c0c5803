package bus_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/testutil"
)

// A handler that works on a message for several AckWaits keeps it: the
// worker's InProgress restarts the wait, so the server neither hands the
// message to another handler nor counts a second delivery.
func TestWorkerKeepsLongHandlersAlive(t *testing.T) {
	nc, js := testutil.StartNATS(t).Connect(t)
	ctx := t.Context()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t"}}); err != nil {
		t.Fatal(err)
	}
	const ackWait = 400 * time.Millisecond
	cons, err := js.CreateOrUpdateConsumer(ctx, "T", jetstream.ConsumerConfig{Durable: "w", AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("t", []byte("one")); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	done := make(chan uint64, 1)
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	w := &bus.Worker{Consumer: cons, Slots: 2, Log: testutil.Logger(t), KeepAlive: ackWait / 4, Grace: time.Second}
	go func() {
		_ = w.Run(wctx, func(ctx context.Context, m jetstream.Msg) {
			calls.Add(1)
			// The work itself: longer than several AckWaits.
			time.Sleep(5 * ackWait)
			md, _ := m.Metadata()
			_ = m.DoubleAck(ctx)
			done <- md.NumDelivered
		})
	}()
	select {
	case n := <-done:
		if n != 1 {
			t.Fatalf("the message was delivered %d times", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler never finished")
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c := calls.Load(); c != 1 || info.NumRedelivered != 0 || info.NumAckPending != 0 {
		t.Fatalf("handler calls %d, redelivered %d, ack pending %d; want 1, 0, 0", c, info.NumRedelivered, info.NumAckPending)
	}
}
