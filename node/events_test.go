package node

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/testutil"
)

// mailEvents waits until the events of qid include every type of want,
// then returns them all in stream order.
func mailEvents(t *testing.T, n *Node, qid string, want ...string) []bus.Event {
	t.Helper()
	var evs []bus.Event
	testutil.WaitFor(t, 30*time.Second, "events "+strings.Join(want, ", ")+" of "+qid, func() bool {
		evs = evs[:0]
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := bus.ReadEvents(ctx, n.JS, bus.EventFilter{QueueID: qid}, false, func(e bus.Event) error {
			evs = append(evs, e)
			return nil
		})
		if err != nil {
			t.Logf("read events: %v", err)
			return false
		}
		for _, w := range want {
			if !hasEvent(evs, w) {
				return false
			}
		}
		return true
	})
	return evs
}

func hasEvent(evs []bus.Event, typ string) bool {
	for _, e := range evs {
		if e.Type == typ {
			return true
		}
	}
	return false
}

// lastOn is the last event stored on subject.
func lastOn(t *testing.T, n *Node, subject string) bus.Event {
	t.Helper()
	st, err := n.JS.Stream(t.Context(), bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(t.Context(), subject)
	if err != nil {
		t.Fatalf("no event on %s: %v", subject, err)
	}
	var e bus.Event
	if err := json.Unmarshal(m.Data, &e); err != nil {
		t.Fatalf("event on %s: %v", subject, err)
	}
	return e
}

// A mail accepted over SMTP and delivered to a remote MX leaves received,
// routed and delivered events, in that order, on their subjects, with the
// facts of each step; a 451 leaves a deferred event with the next attempt.
func TestEventsOfAMailsLife(t *testing.T) {
	w := newWorld(t)
	retry := w.addMX(t, "retry.test", 3)
	reject := w.addMX(t, "reject.test", 4)
	cfg := testConfig(t, w, t.TempDir())
	n := startNode(t, cfg)
	addr := n.Ingress.Addrs()[0]

	t.Run("received, routed, delivered", func(t *testing.T) {
		body := "Subject: events\r\n\r\nwatched\r\n"
		qid := submitSMTP(t, addr, "sender@local.test", []string{"a@remote.test", "b@remote.test"}, body)
		evs := mailEvents(t, n, qid, bus.EventReceived, bus.EventRouted, bus.EventDelivered)
		var types []string
		for _, e := range evs {
			types = append(types, e.Type)
			if e.QueueID != qid || e.Node == "" || e.Time.IsZero() {
				t.Errorf("%s event lacks the common fields: %+v", e.Type, e)
			}
		}
		testutil.WaitFor(t, 10*time.Second, "both delivered events", func() bool {
			evs = mailEvents(t, n, qid, bus.EventDelivered)
			return len(evs) == 4
		})
		// Stored in order from the router on (it emits before it
		// forwards); ingress's received event is emitted on its PubAck,
		// which the server may send after handing the mail on, so the
		// order over the whole life is the events' times.
		types = types[:0]
		for _, e := range evs {
			types = append(types, e.Type)
		}
		if r, d := slices.Index(types, bus.EventRouted), slices.Index(types, bus.EventDelivered); r > d {
			t.Errorf("stored %v: delivered before routed", types)
		}
		slices.SortStableFunc(evs, func(a, b bus.Event) int { return a.Time.Compare(b.Time) })
		types = types[:0]
		for _, e := range evs {
			types = append(types, e.Type)
		}
		if got := strings.Join(types, ","); got != "received,routed,delivered,delivered" {
			t.Fatalf("events by time %s, want received,routed,delivered,delivered", got)
		}

		rcv := evs[0]
		if rcv.Site == "" || rcv.ClientIP != "127.0.0.1" || rcv.Helo != "client.test" || rcv.Sender != "sender@local.test" ||
			rcv.RcptCount != 2 || rcv.Size < int64(len(body)) || rcv.Domain != "remote.test" {
			t.Errorf("received event %+v", rcv)
		}
		if e := lastOn(t, n, "events.received.remote_test"); e.QueueID != qid {
			t.Errorf("events.received.remote_test holds %+v", e)
		}
		rt := evs[1]
		if len(rt.Parts) != 1 || rt.Parts[0].Domain != "remote.test" || rt.Parts[0].Subject != "mail.out.remote_test" || len(rt.Parts[0].Rcpts) != 2 {
			t.Errorf("routed event %+v", rt)
		}
		if e := lastOn(t, n, "events.routed.remote_test"); e.QueueID != qid {
			t.Errorf("events.routed.remote_test holds %+v", e)
		}
		rcpts := map[string]bool{}
		for _, d := range evs[2:] {
			rcpts[d.Rcpt] = true
			if d.MX != "mx.remote.test" || d.MXIP != "127.0.0.1" || !strings.HasPrefix(d.Reply, "250") || d.Attempt != 1 || d.Domain != "remote.test" {
				t.Errorf("delivered event %+v", d)
			}
		}
		if !rcpts["a@remote.test"] || !rcpts["b@remote.test"] {
			t.Errorf("delivered events for %v, want one per recipient", rcpts)
		}
		if e := lastOn(t, n, "events.delivered.remote_test"); e.QueueID != qid {
			t.Errorf("events.delivered.remote_test holds %+v", e)
		}
	})

	t.Run("451 is deferred with the next attempt, then delivered", func(t *testing.T) {
		retry.DataFunc = func(n int, _ *testutil.Mail) error {
			if n <= 1 {
				return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again later"}
			}
			return nil
		}
		qid := submitSMTP(t, addr, "sender@local.test", []string{"r@retry.test"}, "Subject: later\r\n\r\nx\r\n")
		evs := mailEvents(t, n, qid, bus.EventDeferred, bus.EventDelivered)
		var def, del bus.Event
		for _, e := range evs {
			switch e.Type {
			case bus.EventDeferred:
				def = e
			case bus.EventDelivered:
				del = e
			}
		}
		if def.Attempt != 1 || len(def.Rcpts) != 1 || def.Rcpts[0] != "r@retry.test" || !strings.Contains(def.Reply, "451") ||
			def.MX != "mx.retry.test" || def.NextAttempt.Before(def.Time) {
			t.Errorf("deferred event %+v", def)
		}
		if e := lastOn(t, n, "events.deferred.retry_test"); e.QueueID != qid {
			t.Errorf("events.deferred.retry_test holds %+v", e)
		}
		if del.Attempt != 2 || del.Rcpt != "r@retry.test" {
			t.Errorf("delivered event %+v, want attempt 2", del)
		}
	})

	t.Run("550 is bounced with the report's queue id", func(t *testing.T) {
		reject.RcptFunc = func(string) error {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		qid := submitSMTP(t, addr, "sender@local.test", []string{"ghost@reject.test"}, "Subject: doomed\r\n\r\nx\r\n")
		evs := mailEvents(t, n, qid, bus.EventBounced)
		for _, e := range evs {
			if e.Type == bus.EventBounced && (e.ReportQID == "" || e.Rcpts[0] != "ghost@reject.test" || !strings.Contains(e.Reason, "550") ||
				e.MX != "mx.reject.test" || e.Domain != "reject.test") {
				t.Errorf("bounced event %+v", e)
			}
		}
		if e := lastOn(t, n, "events.bounced.reject_test"); e.QueueID != qid {
			t.Errorf("events.bounced.reject_test holds %+v", e)
		}
	})

	t.Run("a Pickup file is picked up", func(t *testing.T) {
		if err := os.MkdirAll(cfg.PickupDir(), 0o750); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(cfg.DataDir, "p.tmp")
		if err := os.WriteFile(tmp, []byte("From: app@local.test\r\nTo: p@remote.test\r\nSubject: file\r\n\r\nx\r\n"), 0o640); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(cfg.PickupDir(), "p.eml")); err != nil {
			t.Fatal(err)
		}
		var got bus.Event
		testutil.WaitFor(t, 20*time.Second, "pickedup event", func() bool {
			st, err := n.JS.Stream(t.Context(), bus.StreamEvents)
			if err != nil {
				return false
			}
			m, err := st.GetLastMsgForSubject(t.Context(), "events.pickedup.remote_test")
			return err == nil && json.Unmarshal(m.Data, &got) == nil
		})
		if got.File != filepath.Join(cfg.PickupDir(), "p.eml") || got.Sender != "app@local.test" || got.RcptCount != 1 || got.QueueID == "" {
			t.Errorf("pickedup event %+v", got)
		}
		mailEvents(t, n, got.QueueID, bus.EventPickedUp, bus.EventRouted, bus.EventDelivered)
	})

	t.Run("local mail is dropped with its file", func(t *testing.T) {
		qid := submitSMTP(t, addr, "someone@remote.test", []string{"user@local.test"}, "Subject: here\r\n\r\nx\r\n")
		evs := mailEvents(t, n, qid, bus.EventDropped)
		for _, e := range evs {
			if e.Type == bus.EventDropped && (!strings.HasSuffix(e.File, qid+".eml") || e.Rcpts[0] != "user@local.test") {
				t.Errorf("dropped event %+v", e)
			}
		}
	})
}
