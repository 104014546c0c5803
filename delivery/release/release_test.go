package release

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
)

func publish(t *testing.T, js jetstream.JetStream, subject, id string, opts ...jetstream.PublishOpt) {
	t.Helper()
	env := &envelope.Envelope{QueueID: id, MsgID: id, From: "a@remote.test", Rcpts: []envelope.Rcpt{{Addr: "u@dialup.test"}}, Domain: "dialup.test"}
	msg, err := env.Msg(subject, []byte("Subject: held\r\n\r\nbody\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(context.Background(), js, msg, id, opts...); err != nil {
		t.Fatal(err)
	}
}

func counts(t *testing.T, js jetstream.JetStream) map[string]uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), bus.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background(), jetstream.WithSubjectFilter("mail.>"))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects
}

// An ETRN release request moves held mail and pending retries of the
// domain to mail.out.<tok>, and the reply counts them.
func TestReleaseMovesHeldAndDeferred(t *testing.T) {
	n := testutil.StartNATS(t)
	nc, js := n.Connect(t)
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	ctx := testutil.Context(t)
	if _, err := bus.Setup(ctx, js, cfg); err != nil {
		t.Fatal(err)
	}
	tok := bus.Token("dialup.test")
	publish(t, js, bus.Hold(tok), "held1")
	publish(t, js, bus.Hold(tok), "held2")
	publish(t, js, bus.Hold("other_test"), "other1")
	publish(t, js, bus.Defer(tok, "def1"), "def1.a1", jetstream.WithScheduleAt(time.Now().Add(time.Hour)), jetstream.WithScheduleTarget(bus.Out(tok)))

	s := New(cfg, testutil.Logger(t), &bus.Room{JS: js})
	s.Batch = 1
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = s.Run(rctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	var rep bus.ReleaseReply
	req, _ := json.Marshal(bus.ReleaseRequest{Domains: []string{"Dialup.Test"}, Client: "test"})
	testutil.WaitFor(t, 10*time.Second, "release reply", func() bool {
		m, err := nc.Request(bus.SubjCtlRelease, req, time.Second)
		return err == nil && json.Unmarshal(m.Data, &rep) == nil
	})
	if rep.Pending != 3 || rep.Error != "" {
		t.Fatalf("reply %+v, want 3 pending", rep)
	}
	testutil.WaitFor(t, 10*time.Second, "3 messages on mail.out", func() bool {
		c := counts(t, js)
		return c[bus.Out(tok)] == 3 && c[bus.Hold(tok)] == 0 && c[bus.Defer(tok, "def1")] == 0
	})
	if c := counts(t, js); c[bus.Hold("other_test")] != 1 {
		t.Errorf("another domain's held mail moved: %v", c)
	}
}
