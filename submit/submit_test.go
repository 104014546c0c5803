package submit_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
	"github.com/mailroot/mailroot/submit"
)

func setup(t *testing.T) (jetstream.JetStream, jetstream.Stream) {
	t.Helper()
	n := testutil.StartNATS(t)
	_, js := n.Connect(t)
	if _, err := bus.Setup(t.Context(), js, config.Default()); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(t.Context(), bus.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	return js, s
}

func TestSameIDStoredOnce(t *testing.T) {
	js, s := setup(t)
	msg := &submit.Message{ID: "invoice-2026-0042", From: "billing@example.test", To: []string{"customer@example.net"},
		Data: []byte("Subject: invoice\r\n\r\nplease pay\r\n"), Notify: []string{"FAILURE", "DELAY"}, Ret: "hdrs"}
	q1, err := submit.Submit(t.Context(), js, msg)
	if err != nil {
		t.Fatal(err)
	}
	q2, err := submit.Submit(t.Context(), js, msg)
	if err != nil {
		t.Fatal(err)
	}
	if q1 != q2 || q1 != submit.QueueID(msg.ID) {
		t.Errorf("queue ids %s, %s", q1, q2)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("%d messages stored, want 1", info.State.Msgs)
	}
	raw, err := s.GetLastMsgForSubject(t.Context(), bus.SubjIn)
	if err != nil {
		t.Fatal(err)
	}
	env, err := envelope.Decode(raw.Header)
	if err != nil {
		t.Fatal(err)
	}
	if env.From != msg.From || env.Rcpts[0].Addr != "customer@example.net" || strings.Join(env.Rcpts[0].Notify, ",") != "FAILURE,DELAY" || env.Ret != "HDRS" || env.Source != "nats" {
		t.Errorf("envelope %+v", env)
	}
	if string(raw.Data) != string(msg.Data) {
		t.Errorf("data %q", raw.Data)
	}
}

func TestLargeBodyUsesObjectStore(t *testing.T) {
	js, s := setup(t)
	big := []byte("Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 70)+"\r\n", 3000))
	qid, err := submit.Submit(t.Context(), js, &submit.Message{ID: "big-1", From: "a@example.test", To: []string{"b@example.net"}, Data: big})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := s.GetLastMsgForSubject(t.Context(), bus.SubjIn)
	if err != nil {
		t.Fatal(err)
	}
	if raw.Header.Get(envelope.HdrBody) != envelope.BodyObject || len(raw.Data) != 0 {
		t.Fatalf("large body not in the Object Store: %v, %d bytes inline", raw.Header, len(raw.Data))
	}
	obs, _ := js.ObjectStore(t.Context(), bus.BucketBodies)
	got, err := obs.GetBytes(t.Context(), qid)
	if err != nil || string(got) != string(big) {
		t.Fatalf("object %d bytes, err %v", len(got), err)
	}
}

func TestInvalid(t *testing.T) {
	js, _ := setup(t)
	for _, m := range []*submit.Message{
		{From: "a@example.test", Data: []byte("x")},
		{From: "a@example.test", To: []string{"nodomain"}, Data: []byte("x")},
		{From: "bad address@", To: []string{"b@example.net"}, Data: []byte("x")},
		{From: "a@example.test", To: []string{"b@example.net"}},
		{ID: "a\r\nb", From: "a@example.test", To: []string{"b@example.net"}, Data: []byte("x")},
		{From: "a@example.test", To: []string{"b@example.net"}, Data: []byte("x"), Ret: "MOST"},
		{From: "a@example.test", To: []string{"b@example.net"}, Data: []byte("x"), Notify: []string{"ALWAYS"}},
	} {
		if _, err := submit.Submit(t.Context(), js, m); !errors.Is(err, submit.ErrInvalid) {
			t.Errorf("Submit(%+v) = %v, want ErrInvalid", m, err)
		}
	}
}

// Example publishes one message onto NATS. The queue id it prints is
// derived from the idempotency key, so a retry of the same key is the
// same message.
func Example() {
	url, stop := exampleServer() // your NATS server, e.g. "nats://127.0.0.1:4222"
	defer stop()

	nc, err := nats.Connect(url)
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	qid, err := submit.Submit(ctx, js, &submit.Message{
		ID:   "order-1234-confirmation",
		From: "shop@example.test",
		To:   []string{"customer@example.net"},
		Data: []byte("From: shop@example.test\r\nTo: customer@example.net\r\nSubject: Your order\r\n\r\nThank you!\r\n"),
	})
	if err != nil {
		panic(err)
	}
	fmt.Println("queued as", qid)
	// Output: queued as KV7PEBPASDU3QULM5R3INNZGXI
}

// exampleServer stands in for a running Mailroot NATS: an embedded
// JetStream server with the MAIL stream.
func exampleServer() (string, func()) {
	dir, _ := os.MkdirTemp("", "submit-example")
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		panic(err)
	}
	ns.Start()
	ns.ReadyForConnections(10 * time.Second)
	nc, _ := nats.Connect(ns.ClientURL())
	js, _ := jetstream.New(nc)
	if _, err := bus.Setup(context.Background(), js, config.Default()); err != nil {
		panic(err)
	}
	nc.Close()
	return ns.ClientURL(), func() { ns.Shutdown(); ns.WaitForShutdown(); os.RemoveAll(dir) }
}
