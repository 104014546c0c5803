package tlsrpt

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mailroot/mailroot/internal/testutil"
)

// A thousand sessions of two outcomes become two records on the stream,
// whose counts add up to the thousand; a flush the stream refuses keeps
// its counts for the next one.
func TestCounterBatches(t *testing.T) {
	ns := testutil.StartNATS(t)
	_, js := ns.Connect(t)
	ctx := t.Context()
	if _, err := EnsureStream(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	day := time.Date(2026, 12, 1, 15, 0, 0, 0, time.UTC)
	c := &Counter{JS: js, ID: "test.1", Now: func() time.Time { return day }, Log: testutil.Logger(t)}
	ok := Result{Domain: "sts.test", PolicyType: PolicySTS, PolicyString: []string{"version: STSv1", "mode: enforce"}, MXHost: []string{"*.sts.test"}, Success: true}
	fail := ok
	fail.Success, fail.ResultType, fail.ReceivingMX = false, ResultCertHostMismatch, "mx1.sts.test"
	for i := range 1000 {
		if i%4 == 0 {
			c.Add(fail)
		} else {
			c.Add(ok)
		}
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := c.Pending(); n != 0 {
		t.Fatalf("%d pending after a flush", n)
	}
	got, err := read(ctx, js, Subject(Day(day), "sts.test"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("%d records for 1000 sessions of two outcomes, want 2: %+v", len(got), got)
	}
	rep := Build("o", "c", "id", "sts.test", day, got)
	if s := rep.Policies[0].Summary; s.TotalSuccessfulSessionCount != 750 || s.TotalFailureSessionCount != 250 {
		t.Errorf("summary %+v, want 750 successful, 250 failed", s)
	}

	// A stream that is gone: nothing is lost from the counts.
	if err := js.DeleteStream(ctx, Stream); err != nil {
		t.Fatal(err)
	}
	c.Add(ok)
	c.Add(ok)
	fctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := c.Flush(fctx); err == nil {
		t.Fatal("flush to a missing stream succeeded")
	}
	if n := c.Pending(); n != 2 {
		t.Fatalf("%d pending after a failed flush, want 2", n)
	}
	if _, err := EnsureStream(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got, err = read(ctx, js, Subject(Day(day), "sts.test"))
	if err != nil || len(got) != 1 || got[0].Count != 2 {
		t.Fatalf("after the retry: %+v, %v; want one record of 2", got, err)
	}
}

// The cost on the delivery path: counting a session (Counter.Add) versus
// publishing a record per session (Record, an async publish), each with
// the flush or the publish acknowledged.
func BenchmarkTLSRPTCount(b *testing.B) {
	ns := testutil.StartNATS(b)
	_, js := ns.Connect(b)
	ctx := context.Background()
	if _, err := EnsureStream(ctx, js, 1); err != nil {
		b.Fatal(err)
	}
	r := Result{Domain: "sts.test", PolicyType: PolicySTS, PolicyString: []string{"version: STSv1", "mode: enforce", "mx: *.sts.test", "max_age: 86400"}, MXHost: []string{"*.sts.test"}, Success: true}
	now := time.Now()
	b.Run("counter", func(b *testing.B) {
		c := &Counter{JS: js, ID: fmt.Sprintf("bench.%d", now.UnixNano()), Now: func() time.Time { return now }, Log: testutil.Discard()}
		b.ReportAllocs()
		for b.Loop() {
			c.Add(r)
		}
		if err := c.Flush(ctx); err != nil {
			b.Fatal(err)
		}
	})
	b.Run("record-per-session", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			Record(js, Day(now), r, "")
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(time.Minute):
			b.Fatal("publishes not acknowledged")
		}
	})
}
