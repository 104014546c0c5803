package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

// mailroot events prints the log, filtered by type, domain, queue id and
// time, as lines or JSON lines, and -follow prints what comes later.
func TestEventsCommand(t *testing.T) {
	t.Setenv("MAILROOT_NATS_URL", "")
	t.Setenv("MAILROOT_CONFIG", "")
	n := testutil.StartNATS(t)
	_, js := n.Connect(t)
	ctx := context.Background()
	if err := bus.EnsureEvents(ctx, js, 1, 0, 0); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	for _, e := range []bus.Event{
		{Type: bus.EventReceived, Time: now, QueueID: "Q1", Domain: "a.test", Sender: "s@x.test", Rcpts: []string{"r@a.test"}, RcptCount: 1, Site: "mta", ClientIP: "192.0.2.1", Helo: "client.example"},
		{Type: bus.EventRouted, Time: now, QueueID: "Q1", Domain: "a.test", Parts: []bus.RoutedPart{{Domain: "a.test", Rcpts: []string{"r@a.test"}, Subject: "mail.out.a_test"}}},
		{Type: bus.EventDelivered, Time: now, QueueID: "Q1", Domain: "a.test", Rcpt: "r@a.test", MX: "mx.a.test", MXIP: "192.0.2.25", Reply: "250 2.0.0 OK", Attempt: 1, DurationMS: 12},
		{Type: bus.EventDeferred, Time: now, QueueID: "Q2", Domain: "b.test", Rcpts: []string{"p@b.test"}, Reply: "451 4.3.0 later", Attempt: 1, NextAttempt: now.Add(15 * time.Minute)},
		{Type: bus.EventDelivered, Time: now, QueueID: "Q3", Domain: "b.test", Rcpt: "q@b.test", MX: "mx.b.test", Attempt: 1},
	} {
		bus.Emit(js, e)
	}
	// Emit is not acknowledged: wait until the stream has them all.
	st, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs == 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 5 events stored", info.State.Msgs)
		}
	}
	run := func(args ...string) (int, string, string) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		code := eventsCommand(append([]string{"-nats", n.URL()}, args...), &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}

	t.Run("-type delivered -json", func(t *testing.T) {
		code, out, errOut := run("-type", "delivered", "-json")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		var got []bus.Event
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			var e bus.Event
			if err := json.Unmarshal([]byte(l), &e); err != nil {
				t.Fatalf("line %q: %v", l, err)
			}
			got = append(got, e)
		}
		if len(got) != 2 || got[0].QueueID != "Q1" || got[1].QueueID != "Q3" || got[0].MXIP != "192.0.2.25" || got[0].Node == "" {
			t.Fatalf("delivered events %+v", got)
		}
	})
	t.Run("filters", func(t *testing.T) {
		for _, tt := range []struct {
			args []string
			qids string
		}{
			{nil, "Q1 Q1 Q1 Q2 Q3"},
			{[]string{"-domain", "B.Test"}, "Q2 Q3"},
			{[]string{"-id", "Q1"}, "Q1 Q1 Q1"},
			{[]string{"-id", "Q1", "-type", "routed"}, "Q1"},
			{[]string{"-since", "1m", "-type", "deferred"}, "Q2"},
			{[]string{"-since", now.Add(time.Hour).Format(time.RFC3339)}, ""},
			{[]string{"-until", "2h", "-since", "3d"}, ""},
		} {
			code, out, errOut := run(tt.args...)
			if code != 0 {
				t.Errorf("%v: exit %d: %s", tt.args, code, errOut)
				continue
			}
			var qids []string
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				if f := strings.Fields(l); len(f) > 3 {
					qids = append(qids, f[3])
				}
			}
			if got := strings.Join(qids, " "); got != tt.qids {
				t.Errorf("%v: queue ids %q, want %q:\n%s", tt.args, got, tt.qids, out)
			}
		}
	})
	t.Run("one line per event", func(t *testing.T) {
		_, out, _ := run("-id", "Q1", "-type", "delivered")
		for _, want := range []string{"delivered", "Q1", "a.test", "to=r@a.test", "mx=mx.a.test[192.0.2.25]", `reply="250 2.0.0 OK"`, "took=12ms", "attempt=1"} {
			if !strings.Contains(out, want) {
				t.Errorf("line lacks %q: %s", want, out)
			}
		}
		_, out, _ = run("-id", "Q2")
		if !strings.Contains(out, "next=") || !strings.Contains(out, "to=p@b.test") {
			t.Errorf("deferred line: %s", out)
		}
	})
	t.Run("bad flags name the flag", func(t *testing.T) {
		for flag, args := range map[string][]string{
			"-since":  {"-since", "yesterday"},
			"-until":  {"-until", "-5m"},
			"-type":   {"-type", "sent"},
			"-domain": {"-domain", "not a domain"},
			"-id":     {"-id", "Q/1"},
		} {
			code, _, errOut := run(args...)
			if code != 2 || !strings.Contains(errOut, flag) {
				t.Errorf("%v: exit %d, %q; want 2 naming %s", args, code, errOut, flag)
			}
		}
		var stdout, stderr bytes.Buffer
		if code := eventsCommand(nil, &stdout, &stderr); code != 2 {
			t.Errorf("without a NATS URL: %d, want 2", code)
		}
	})
	t.Run("-follow prints new events", func(t *testing.T) {
		// -follow runs until interrupted; here until the test's context
		// is cancelled, read through the same function the command uses.
		cfg := config.Default()
		cfg.NATS.URL = n.URL()
		fctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var mu sync.Mutex
		var seen []string
		done := make(chan error, 1)
		go func() {
			done <- readEvents(fctx, cfg, bus.EventFilter{Type: bus.EventBounced, Since: time.Now().Add(-time.Minute)}, true, func(e bus.Event) error {
				mu.Lock()
				seen = append(seen, e.QueueID)
				mu.Unlock()
				return nil
			})
		}()
		bus.Emit(js, bus.Event{Type: bus.EventBounced, QueueID: "Q9", Domain: "c.test", ReportQID: "R9"})
		testutil.WaitFor(t, 10*time.Second, "the followed event", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(seen) == 1 && seen[0] == "Q9"
		})
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("follow ended with %v", err)
		}
	})
}

// A -since/-until value is an RFC 3339 time or a duration back from now.
func TestParseWhen(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"":                     {},
		"1h":                   now.Add(-time.Hour),
		"2d":                   now.Add(-48 * time.Hour),
		"2026-02-28T10:00:00Z": time.Date(2026, 2, 28, 10, 0, 0, 0, time.UTC),
	} {
		got, err := parseWhen(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseWhen(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"yesterday", "-1h", "2026-02-30T10:00:00Z", "1x"} {
		if _, err := parseWhen(in, now); err == nil {
			t.Errorf("parseWhen(%q): no error", in)
		}
	}
}

func FuzzParseWhen(f *testing.F) {
	for _, s := range []string{"", "1h", "2d", "1d12h", "2026-02-28T10:00:00Z", "2026-02-28T10:00:00.5+02:00", "-1h", "yesterday"} {
		f.Add(s)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseWhen(s, now)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an error that says nothing")
			}
			return
		}
		if strings.TrimSpace(s) == "" {
			if !got.IsZero() {
				t.Fatalf("parseWhen(%q) = %v, want no bound", s, got)
			}
			return
		}
		if _, terr := time.Parse(time.RFC3339Nano, strings.TrimSpace(s)); terr != nil && got.After(now) {
			t.Fatalf("parseWhen(%q) = %v: a duration back from now is in the future", s, got)
		}
	})
}
