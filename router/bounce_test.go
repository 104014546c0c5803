package router

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/dsn"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
)

// A message with more Received: headers than max_hop_count is a loop: its
// sender gets a 5.4.6 report naming the count, routed like any mail, and
// nothing goes to Badmail.
func TestLoopBounces(t *testing.T) {
	js := startRouter(t)
	env := &envelope.Envelope{
		QueueID: envelope.NewQueueID(), From: "sender@origin.test", Source: "smtp",
		Rcpts: []envelope.Rcpt{{Addr: "a@far.test"}, {Addr: "b@far.test", Notify: []string{"NEVER"}}},
	}
	body := strings.Repeat("Received: from x by y; Sun, 22 Nov 2026 10:00:00 +0000\r\n", 16) + "Subject: round and round\r\n\r\nbody\r\n"
	publishIn(t, js, env, body)

	m := waitSubject(t, js, bus.Out("origin_test"))
	ndr, err := envelope.Decode(m.Header)
	if err != nil {
		t.Fatal(err)
	}
	if ndr.From != "" || ndr.Source != dsn.Source || len(ndr.Rcpts) != 1 || ndr.Rcpts[0].Addr != env.From {
		t.Errorf("report envelope from %q source %q to %v", ndr.From, ndr.Source, ndr.Addrs())
	}
	p, err := dsn.Parse(bytes.NewReader(m.Data))
	if err != nil {
		t.Fatal(err)
	}
	want := "X-Mailroot; 5.4.6 routing loop detected: message has 16 Received: headers, more than the maximum hop count 15"
	if len(p.Report.Recipients) != 1 {
		t.Fatalf("%d recipients reported, want 1 (the other said NOTIFY=NEVER)", len(p.Report.Recipients))
	}
	if rc := p.Report.Recipients[0]; rc.FinalRecipient != "a@far.test" || rc.Action != dsn.ActionFailed || rc.Status != "5.4.6" || rc.DiagnosticCode != want {
		t.Errorf("recipient %+v", rc)
	}
	if string(p.Original) != body || p.Header.Get("Subject") != "Undeliverable: round and round" {
		t.Errorf("subject %q, original %q", p.Header.Get("Subject"), p.Original)
	}
	s, _ := js.Stream(context.Background(), bus.StreamMail)
	testutil.WaitFor(t, 5*time.Second, "input acked", func() bool {
		_, err := s.GetLastMsgForSubject(context.Background(), bus.SubjIn)
		return err != nil
	})
	if _, err := s.GetLastMsgForSubject(context.Background(), bus.SubjBad); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Errorf("something went to Badmail: %v", err)
	}
}
