package router

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
)

func startRouter(t *testing.T) jetstream.JetStream {
	t.Helper()
	n := testutil.StartNATS(t)
	_, js := n.Connect(t)
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.LocalDomains = []string{"local.test"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx := testutil.Context(t)
	if _, err := bus.Setup(ctx, js, cfg, bus.ConsumerRouter); err != nil {
		t.Fatal(err)
	}
	r, err := New(cfg, testutil.Logger(t), js)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = r.Run(rctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return js
}

func publishIn(t *testing.T, js jetstream.JetStream, env *envelope.Envelope, data string) {
	t.Helper()
	msg, err := env.Msg(bus.SubjIn, []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(context.Background(), js, msg, env.QueueID); err != nil {
		t.Fatal(err)
	}
}

// waitSubject waits for the last message on subject.
func waitSubject(t *testing.T, js jetstream.JetStream, subject string) *jetstream.RawStreamMsg {
	t.Helper()
	s, err := js.Stream(context.Background(), bus.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	var m *jetstream.RawStreamMsg
	testutil.WaitFor(t, 10*time.Second, "message on "+subject, func() bool {
		m, err = s.GetLastMsgForSubject(context.Background(), subject)
		return err == nil
	})
	return m
}

func TestSplitPerDomain(t *testing.T) {
	js := startRouter(t)
	env := &envelope.Envelope{
		QueueID: envelope.NewQueueID(), From: "s@remote.test",
		Rcpts: []envelope.Rcpt{{Addr: "a@Local.Test"}, {Addr: "b@one.test", Notify: []string{"FAILURE"}}, {Addr: "c@two.test"}, {Addr: "d@one.test"}, {Addr: "b@one.test"}},
	}
	body := "Subject: split\r\n\r\nbody\r\n"
	publishIn(t, js, env, body)
	want := map[string][]string{
		bus.SubjDrop:        {"a@Local.Test"},
		bus.Out("one_test"): {"b@one.test", "d@one.test"},
		bus.Out("two_test"): {"c@two.test"},
	}
	for subj, rcpts := range want {
		m := waitSubject(t, js, subj)
		got, err := envelope.Decode(m.Header)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(got.Addrs(), ",") != strings.Join(rcpts, ",") {
			t.Errorf("%s: rcpts %v, want %v", subj, got.Addrs(), rcpts)
		}
		if string(m.Data) != body {
			t.Errorf("%s: body changed: %q", subj, m.Data)
		}
		if got.Domain == "" || m.Header.Get(envelope.HdrMsgID) != env.QueueID+"."+bus.Token(got.Domain) {
			t.Errorf("%s: domain %q msg id %q", subj, got.Domain, m.Header.Get(envelope.HdrMsgID))
		}
		if got.ExpiresAt.IsZero() {
			t.Errorf("%s: no expiry set", subj)
		}
	}
	m := waitSubject(t, js, bus.Out("one_test"))
	got, _ := envelope.Decode(m.Header)
	if len(got.Rcpts[0].Notify) != 1 || got.Rcpts[0].Notify[0] != "FAILURE" {
		t.Errorf("DSN parameters lost: %+v", got.Rcpts[0])
	}
	// The input is acked (removed from the WorkQueue) once all parts are stored.
	s, _ := js.Stream(context.Background(), bus.StreamMail)
	testutil.WaitFor(t, 5*time.Second, "input acked", func() bool {
		_, err := s.GetLastMsgForSubject(context.Background(), bus.SubjIn)
		return err != nil
	})
}

func TestBadInputGoesToBadmail(t *testing.T) {
	js := startRouter(t)
	tests := []struct {
		name   string
		header nats.Header
		data   string
		reason string
	}{
		{"no recipients", nats.Header{envelope.HdrQueueID: {"Q1"}, envelope.HdrMailFrom: {"<a@b.test>"}}, "x", "no Mta-Rcpt"},
		{"bad address", nats.Header{envelope.HdrQueueID: {"Q2"}, envelope.HdrMailFrom: {"<a@b.test>"}, envelope.HdrRcpt: {"<not an address>"}}, "x", "Mta-Rcpt"},
		{"no sender", nats.Header{envelope.HdrQueueID: {"Q3"}, envelope.HdrRcpt: {"<a@b.test>"}}, "x", "Mta-Mail-From"},
		{"empty body", nats.Header{envelope.HdrQueueID: {"Q4"}, envelope.HdrMailFrom: {"<>"}, envelope.HdrRcpt: {"<a@b.test>"}}, "", "empty message body"},
		{"loop", nats.Header{envelope.HdrQueueID: {"Q5"}, envelope.HdrMailFrom: {"<>"}, envelope.HdrRcpt: {"<a@b.test>"}}, strings.Repeat("Received: from x by y; date\r\n", 16) + "\r\nbody\r\n", "5.4.6 routing loop detected: message has 16 Received: headers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := &nats.Msg{Subject: bus.SubjIn, Header: tt.header, Data: []byte(tt.data)}
			if _, err := bus.Publish(context.Background(), js, msg, "in-"+tt.header.Get(envelope.HdrQueueID)); err != nil {
				t.Fatal(err)
			}
			s, _ := js.Stream(context.Background(), bus.StreamMail)
			var bad *jetstream.RawStreamMsg
			testutil.WaitFor(t, 10*time.Second, "badmail for "+tt.name, func() bool {
				m, err := s.GetLastMsgForSubject(context.Background(), bus.SubjBad)
				if err == nil && m.Header.Get(envelope.HdrQueueID) == tt.header.Get(envelope.HdrQueueID) {
					bad = m
				}
				return bad != nil
			})
			if r := bad.Header.Get(envelope.HdrReason); !strings.Contains(r, tt.reason) {
				t.Errorf("reason %q does not say %q", r, tt.reason)
			}
			if string(bad.Data) != tt.data {
				t.Errorf("badmail data %q, want the original", bad.Data)
			}
			// And an error event in the event log.
			ev, err := js.Stream(context.Background(), bus.StreamEvents)
			if err != nil {
				t.Fatal(err)
			}
			testutil.WaitFor(t, 5*time.Second, "badmail event", func() bool {
				m, err := ev.GetLastMsgForSubject(context.Background(), bus.SubjEventsPrefix+bus.EventBadmail+".>")
				return err == nil && strings.Contains(string(m.Data), `"qid":"`+tt.header.Get(envelope.HdrQueueID)+`"`) && strings.Contains(string(m.Data), tt.reason)
			})
		})
	}
}

// Mail for an alias domain that did not come through SMTP (Pickup, NATS)
// is rewritten to the default domain by the router.
func TestAliasDomainRewritten(t *testing.T) {
	n := testutil.StartNATS(t)
	_, js := n.Connect(t)
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.LocalDomains = []string{"local.test"}
	cfg.Domains = []config.Domain{{Name: "old-name.test", Type: config.DomainAlias}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	r, _ := New(cfg, testutil.Logger(t), js)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	env := &envelope.Envelope{QueueID: envelope.NewQueueID(), From: "s@remote.test", Rcpts: []envelope.Rcpt{{Addr: "Bob@Old-Name.test"}}}
	publishIn(t, js, env, "Subject: alias\r\n\r\nx\r\n")
	got, err := envelope.Decode(waitSubject(t, js, bus.SubjDrop).Header)
	if err != nil {
		t.Fatal(err)
	}
	if got.Rcpts[0].Addr != "Bob@local.test" || got.Rcpts[0].ORcpt != "rfc822;Bob@Old-Name.test" || got.Domain != "local.test" {
		t.Errorf("rewritten to %+v in %s", got.Rcpts[0], got.Domain)
	}
}
