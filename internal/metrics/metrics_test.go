package metrics

import (
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailroot/mailroot/internal/bus"
)

func TestQueueState(t *testing.T) {
	for subj, want := range map[string]string{
		bus.SubjIn:                             "incoming",
		bus.Out("example_com"):                 "active",
		bus.SubjDeferPrefix + "example_com.Q1": "deferred",
		bus.Hold("example_com"):                "held",
		bus.SubjDrop:                           "drop",
		bus.SubjQuarantine:                     "quarantine",
		bus.SubjBad:                            "bad",
		"mail.out.":                            "",
		"mail.other":                           "",
		"events.badmail":                       "",
	} {
		if got := QueueState(subj); got != want {
			t.Errorf("QueueState(%q) = %q, want %q", subj, got, want)
		}
	}
}

// Every subject maps to one of QueueStates or to nothing, without panic.
func FuzzQueueState(f *testing.F) {
	for _, s := range []string{"mail.in", "mail.out.a", "mail.defer.a.b", "mail.hold.x", "mail.drop", "mail.bad", "mail.", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, subj string) {
		st := QueueState(subj)
		if st == "" {
			return
		}
		for _, s := range QueueStates {
			if s == st {
				if !strings.HasPrefix(subj, "mail.") {
					t.Fatalf("%q is not a MAIL subject but got state %q", subj, st)
				}
				return
			}
		}
		t.Fatalf("QueueState(%q) = %q, not one of %v", subj, st, QueueStates)
	})
}

// Every metric is named mailroot_* with help, lints clean (units and
// _total suffixes as Prometheus asks), and a site's series exist at 0
// before any mail, so rate() works from the first scrape.
func TestMetricsLint(t *testing.T) {
	m := New()
	m.Site("default")
	m.WatchSyncs(func() uint64 { return 3 })
	m.WatchSyncs(func() uint64 { return 4 }) // a second registration is ignored
	m.WatchIdleConnections(func() int { return 1 })
	problems, err := testutil.GatherAndLint(m.Registry)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		name := f.GetName()
		if !strings.HasPrefix(name, "mailroot_") && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") {
			t.Errorf("metric %s is not in the mailroot namespace", name)
		}
		if f.GetHelp() == "" {
			t.Errorf("metric %s has no help", name)
		}
	}
	if n, err := testutil.GatherAndCount(m.Registry, "mailroot_ingress_messages_received_total"); err != nil || n != 1 {
		t.Errorf("received series of site default: %d (%v), want 1 at 0", n, err)
	}
	if v := testutil.ToFloat64(m.Badmail); v != 0 {
		t.Errorf("badmail %v", v)
	}
}

// The listener serves /metrics on the bound address and nothing else.
func TestListen(t *testing.T) {
	m := New()
	m.Badmail.Inc()
	s, err := Listen("127.0.0.1:0", m, discard(), false)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if strings.HasSuffix(s.Addr(), ":0") {
		t.Fatalf("Addr %q is not the bound address", s.Addr())
	}
	if err := testutil.ScrapeAndCompare("http://"+s.Addr()+"/metrics", strings.NewReader(`
# HELP mailroot_badmail_messages_total Messages written into Badmail/.
# TYPE mailroot_badmail_messages_total counter
mailroot_badmail_messages_total 1
`), "mailroot_badmail_messages_total"); err != nil {
		t.Error(err)
	}
	if _, err := Listen(s.Addr(), m, discard(), false); err == nil {
		t.Error("a second listener on the same address: no error")
	}
	if code := httpStatus(t, "http://"+s.Addr()+"/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("/debug/pprof/ without metrics.pprof: %d, want 404", code)
	}
}

// With metrics.pprof the same listener serves Go's profiler.
func TestListenPprof(t *testing.T) {
	s, err := Listen("127.0.0.1:0", New(), discard(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if code := httpStatus(t, "http://"+s.Addr()+"/debug/pprof/heap?debug=1"); code != http.StatusOK {
		t.Errorf("/debug/pprof/heap with metrics.pprof: %d, want 200", code)
	}
}

func httpStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// Refusals count under their reason; a reason outside RefusalReasons
// counts as other, so the label stays bounded whatever the caller says.
func TestRefusedReasonsBounded(t *testing.T) {
	m := New()
	s := m.Site("default")
	s.Refused(RefusedRelay)
	s.Refused(RefusedRelay)
	s.Refused("made up by a caller")
	if n, err := testutil.GatherAndCount(m.Registry, "mailroot_ingress_refusals_total"); err != nil || n != len(RefusalReasons) {
		t.Fatalf("refusal series %d (%v), want one per reason: %d", n, err, len(RefusalReasons))
	}
	if v := testutil.ToFloat64(m.ingressRefusals.WithLabelValues("default", RefusedRelay)); v != 2 {
		t.Errorf("relay_denied %v, want 2", v)
	}
	if v := testutil.ToFloat64(m.ingressRefusals.WithLabelValues("default", RefusedOther)); v != 1 {
		t.Errorf("other %v, want 1", v)
	}
}
