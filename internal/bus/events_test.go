package bus

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/testutil"
)

func TestEventSubject(t *testing.T) {
	for _, tt := range []struct{ typ, domain, want string }{
		{EventDelivered, "Example.COM", "events.delivered.example_com"},
		{EventReceived, "", "events.received._"},
		{EventBadmail, "[192.0.2.1]", "events.badmail.lit4-192-0-2-1"},
	} {
		if got := EventSubject(tt.typ, tt.domain); got != tt.want {
			t.Errorf("EventSubject(%q, %q) = %q, want %q", tt.typ, tt.domain, got, tt.want)
		}
	}
}

// EventMsgID tells apart exactly the events that are different facts.
func TestEventMsgID(t *testing.T) {
	base := Event{Type: EventDelivered, QueueID: "Q1", Domain: "a.test", Rcpt: "x@a.test", Attempt: 1}
	if got, want := EventMsgID(base), "Q1.delivered.a_test.x@a.test.a1"; got != want {
		t.Fatalf("EventMsgID = %q, want %q", got, want)
	}
	later := base
	later.Time = time.Now() // a retried publish: same fact, same id
	if EventMsgID(later) != EventMsgID(base) {
		t.Error("the time changes the id")
	}
	distinct := []Event{
		base,
		{Type: EventDelivered, QueueID: "Q1", Domain: "a.test", Rcpt: "y@a.test", Attempt: 1},
		{Type: EventDelivered, QueueID: "Q1", Domain: "b.test", Rcpt: "x@a.test", Attempt: 1},
		{Type: EventDeferred, QueueID: "Q1", Domain: "a.test", Rcpts: []string{"x@a.test"}, Attempt: 1},
		{Type: EventDeferred, QueueID: "Q1", Domain: "a.test", Rcpts: []string{"x@a.test"}, Attempt: 2},
		{Type: EventDeferred, QueueID: "Q1", Domain: "a.test", Rcpts: []string{"x@a.test", "y@a.test"}, Attempt: 2},
		{Type: EventBounced, QueueID: "Q1", Domain: "a.test", ReportQID: "R1"},
		{Type: EventBounced, QueueID: "Q1", Domain: "a.test", ReportQID: "R2"},
		{Type: EventDelivered, QueueID: "Q2", Domain: "a.test", Rcpt: "x@a.test", Attempt: 1},
	}
	seen := map[string]int{}
	for i, e := range distinct {
		id := EventMsgID(e)
		if j, dup := seen[id]; dup {
			t.Errorf("events %d and %d share the id %q", j, i, id)
		}
		seen[id] = i
	}
	if id := EventMsgID(Event{Type: EventBadmail, Rcpt: "x\r\n@a"}); id != "" {
		t.Errorf("an event without a queue id has id %q", id)
	}
	if id := EventMsgID(Event{Type: EventDelivered, QueueID: "Q", Rcpt: "x\r\n@a"}); id != "Q.delivered.x  @a" {
		t.Errorf("id %q keeps control characters", id)
	}
}

// Emit publishes on events.<type>.<token> with the event's id: a publish
// repeated (a redelivered message settled again) stores one event, and
// the events stream keeps events.max_age.
func TestEmitStoresOneEvent(t *testing.T) {
	n := testutil.StartNATS(t)
	_, js := n.Connect(t)
	ctx := t.Context()
	if err := EnsureEvents(ctx, js, 1, 7*24*time.Hour, 100<<20); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	if c := st.CachedInfo().Config; c.MaxAge != 7*24*time.Hour || c.MaxBytes != 10<<20 {
		t.Fatalf("MaxAge %v, MaxBytes %d; want 7d and a tenth of the store limit", c.MaxAge, c.MaxBytes)
	}
	e := Event{Type: EventDelivered, QueueID: "Q1", Domain: "a.test", Rcpt: "x@a.test", Attempt: 1, MX: "mx.a.test"}
	Emit(js, e)
	Emit(js, e) // the retry
	e.Rcpt = "y@a.test"
	Emit(js, e)
	// Emit gets no acknowledgement: the last events on the same
	// connection, stored after the others, say when all have been seen.
	Emit(js, Event{Type: EventReceived, QueueID: "Q2", Rcpts: []string{"p@b.test", "q@c.test"}})
	Emit(js, Event{Type: EventRouted, QueueID: "Q2", Parts: []RoutedPart{{Domain: "b.test"}, {Domain: "c.test"}}})
	var info *jetstream.StreamInfo
	for deadline := time.Now().Add(5 * time.Second); ; {
		if info, err = st.Info(ctx); err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs >= 4 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if info.State.Msgs != 4 {
		t.Fatalf("%d events stored, want 2 delivered (one per recipient, the retry dropped) and 2 more", info.State.Msgs)
	}
	m, err := st.GetLastMsgForSubject(ctx, "events.delivered.a_test")
	if err != nil {
		t.Fatal(err)
	}
	var got Event
	if err := json.Unmarshal(m.Data, &got); err != nil {
		t.Fatal(err)
	}
	if got.Rcpt != "y@a.test" || got.Node == "" || got.Time.IsZero() || got.MX != "mx.a.test" {
		t.Fatalf("stored event %+v", got)
	}

	// ReadEvents with filters.
	read := func(f EventFilter) []string {
		t.Helper()
		var out []string
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := ReadEvents(rctx, js, f, false, func(e Event) error { out = append(out, e.QueueID+"/"+e.Type); return nil }); err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, tt := range []struct {
		f    EventFilter
		want []string
	}{
		{EventFilter{}, []string{"Q1/delivered", "Q1/delivered", "Q2/received", "Q2/routed"}},
		{EventFilter{Type: EventRouted}, []string{"Q2/routed"}},
		{EventFilter{Domain: "C.test"}, []string{"Q2/received", "Q2/routed"}},
		{EventFilter{Domain: "a.test"}, []string{"Q1/delivered", "Q1/delivered"}},
		{EventFilter{QueueID: "Q2", Type: EventReceived}, []string{"Q2/received"}},
		{EventFilter{Since: time.Now().Add(time.Hour)}, nil},
		{EventFilter{Until: time.Now().Add(-time.Hour)}, nil},
	} {
		got := read(tt.f)
		if len(got) != len(tt.want) {
			t.Errorf("%+v: %v, want %v", tt.f, got, tt.want)
			continue
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("%+v: %v, want %v", tt.f, got, tt.want)
				break
			}
		}
	}
}
