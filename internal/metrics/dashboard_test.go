package metrics

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

const dashboardPath = "../../deploy/grafana/mailroot.json"

// every returns a node's metrics with every collector registered, over a
// real embedded server with Mailroot's streams.
func every(t *testing.T) *Metrics {
	t.Helper()
	n := testutil.StartNATS(t)
	nc, js := n.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := bus.Setup(ctx, js, config.Default()); err != nil {
		t.Fatal(err)
	}
	m := New()
	m.Site("default")
	m.WatchQueue(js)
	m.WatchStreams(js)
	m.WatchNATS(nc)
	m.WatchSyncs(func() uint64 { return 0 })
	m.WatchIdleConnections(func() int { return 0 })
	m.WatchPickup(func() int { return 0 })
	return m
}

type dashboard struct {
	Title  string `json:"title"`
	UID    string `json:"uid"`
	Panels []struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

var metricName = regexp.MustCompile(`\bmailroot_[a-z0-9_]+`)

// The dashboard parses, every panel has a query, every metric a query
// names is one the registry has (a histogram's _bucket, _sum and _count
// by its name), and, with promtool, every query is valid PromQL.
func TestDashboardUsesRealMetrics(t *testing.T) {
	raw, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	if d.Title == "" || d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("dashboard without title, uid or panels: %+v", d)
	}
	fams, err := every(t).Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range fams {
		have[f.GetName()] = true
	}
	var exprs []string
	used := map[string]bool{}
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q has an empty query", p.Title)
			}
			exprs = append(exprs, tg.Expr)
			for _, name := range metricName.FindAllString(tg.Expr, -1) {
				base := name
				for _, suf := range []string{"_bucket", "_sum", "_count"} {
					if b, ok := strings.CutSuffix(name, suf); ok && have[b] {
						base = b
					}
				}
				if !have[base] {
					t.Errorf("panel %q: %s is no metric of the registry", p.Title, name)
				}
				used[base] = true
			}
		}
	}
	// What the dashboard is for (the task list of issue #13).
	for _, name := range []string{"mailroot_queue_messages", "mailroot_ingress_messages_received_total", "mailroot_delivery_recipients_total",
		"mailroot_ingress_accept_duration_seconds", "mailroot_delivery_latency_seconds", "mailroot_ingress_sessions",
		"mailroot_jetstream_stream_bytes", "mailroot_ingress_refusals_total", "mailroot_nats_connection_state", "mailroot_pickup_files"} {
		if !used[name] {
			t.Errorf("the dashboard does not show %s", name)
		}
	}
	promtoolRules(t, exprs)
}

// promtoolRules checks exprs as PromQL with `promtool check rules`: each
// is a recording rule of a file written for it ($__rate_interval, a
// Grafana variable, becomes 5m).
func promtoolRules(t *testing.T, exprs []string) {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("MAILROOT_REQUIRE_PROMTOOL") != "" {
			t.Fatal("promtool not installed, and MAILROOT_REQUIRE_PROMTOOL is set (CI): apt-get install prometheus")
		}
		t.Skip("promtool not installed (apt-get install prometheus): queries not checked as PromQL")
	}
	var b strings.Builder
	b.WriteString("groups:\n- name: dashboard\n  rules:\n")
	for i, e := range exprs {
		e = strings.ReplaceAll(e, "$__rate_interval", "5m")
		q, _ := json.Marshal(e) // a JSON string is a YAML string
		fmt.Fprintf(&b, "  - record: dashboard:q%d\n    expr: %s\n", i, q)
	}
	path := filepath.Join(t.TempDir(), "rules.yml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, bin, "check", "rules", path).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s\n%s", err, out, b.String())
	}
}

// Every collector's exposition, the scrape-time ones included, passes
// `promtool check metrics`.
func TestEveryCollectorPassesPromtool(t *testing.T) {
	m := every(t)
	problems, err := promtest.GatherAndLint(m.Registry)
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
	var b bytes.Buffer
	for _, f := range fams {
		if _, err := expfmt.MetricFamilyToText(&b, f); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"mailroot_jetstream_stream_bytes{stream=\"MAIL\"}", "mailroot_nats_connection_state{state=\"connected\"} 1", "mailroot_pickup_files 0"} {
		if !strings.Contains(b.String(), name) {
			t.Errorf("%s missing from the exposition:\n%s", name, b.String())
		}
	}
	bin, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("MAILROOT_REQUIRE_PROMTOOL") != "" {
			t.Fatal("promtool not installed, and MAILROOT_REQUIRE_PROMTOOL is set (CI)")
		}
		t.Skip("promtool not installed")
	}
	cmd := exec.Command(bin, "check", "metrics")
	cmd.Stdin = &b
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}
