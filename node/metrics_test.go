package node

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

// scrape reads /metrics of addr and parses it.
func scrape(t *testing.T, addr string) (map[string]*dto.MetricFamily, []byte) {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: status %d, err %v:\n%s", resp.StatusCode, err, raw)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("scrape does not parse: %v\n%s", err, raw)
	}
	return fams, raw
}

// value is the sample of family name whose labels include want (label
// pairs "k=v"); -1 when there is none. Histograms give their count.
func value(fams map[string]*dto.MetricFamily, name string, want ...string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
next:
	for _, m := range f.GetMetric() {
		for _, w := range want {
			k, v, _ := strings.Cut(w, "=")
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return -1
}

// The node serves its metrics on metrics.listen, and mail moves them by
// exactly what happened to it: accepted and refused at the door, routed
// per destination, delivered, bounced and written to Badmail, connections
// opened and reused, the queue by state and the group commit's syncs. The
// exposition passes promtool.
func TestMetricsCountMail(t *testing.T) {
	w := newWorld(t)
	reject := w.addMX(t, "reject.test", 4)
	reject.RcptFunc = func(to string) error {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	cfg := testConfig(t, w, t.TempDir())
	cfg.Ingress.MaxMessageSize = 32 << 10
	cfg.Delivery.ConnectionCacheTime = config.Duration(time.Minute) // the second mail to remote.test reuses the first's connection
	cfg.Domains = append(cfg.Domains, config.Domain{Name: "held.test", Type: config.DomainRemote, Hold: true})
	n := startNode(t, cfg)
	addr := n.MetricsAddr()
	if addr == "" || strings.HasSuffix(addr, ":0") {
		t.Fatalf("metrics address %q: want the bound address", addr)
	}
	fams, _ := scrape(t, addr)
	if v := value(fams, "mailroot_ingress_messages_received_total", "site=default"); v != 0 {
		t.Fatalf("received before any mail: %v, want the series at 0", v)
	}
	smtpAddr := n.Ingress.Addrs()[0]

	bodyA := "Subject: a\r\n\r\nfor two remote recipients\r\n"
	submitSMTP(t, smtpAddr, "sender@local.test", []string{"one@remote.test", "two@remote.test"}, bodyA)
	// Each next mail to a host waits for the one before to be settled,
	// its connection back in the cache.
	waitMetric(t, addr, "mailroot_delivery_recipients_total", 2, "result=delivered")
	bodyB := "Subject: b\r\n\r\nsecond remote mail, over the cached connection\r\n"
	submitSMTP(t, smtpAddr, "sender@local.test", []string{"three@remote.test"}, bodyB)
	bodyC := "Subject: c\r\n\r\nlocal\r\n"
	submitSMTP(t, smtpAddr, "someone@remote.test", []string{"user@local.test"}, bodyC)
	bodyD := "Subject: d\r\n\r\nrefused by the remote: a report to the sender\r\n"
	submitSMTP(t, smtpAddr, "sender@local.test", []string{"ghost@reject.test"}, bodyD)
	waitMetric(t, addr, "mailroot_delivery_recipients_total", 1, "result=bounced")
	bodyE := "Subject: e\r\n\r\nrefused, null sender: Badmail\r\n"
	submitSMTP(t, smtpAddr, "", []string{"ghost2@reject.test"}, bodyE)
	bodyF := "Subject: f\r\n\r\nheld until ETRN\r\n"
	submitSMTP(t, smtpAddr, "sender@local.test", []string{"waits@held.test"}, bodyF)
	big := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 1024)
	if _, err := submitFrom(smtpAddr, "", "sender@local.test", []string{"big@remote.test"}, big); err == nil || !strings.Contains(err.Error(), "552") {
		t.Fatalf("message over max_message_size: %v, want 552", err)
	}
	accepted := len(bodyA) + len(bodyB) + len(bodyC) + len(bodyD) + len(bodyE) + len(bodyF)

	// D's report lands in Drop/local.test: the last step of all.
	want := map[string]float64{
		"mailroot_ingress_connections_total|site=default":                7,
		"mailroot_ingress_messages_received_total|site=default":          6,
		"mailroot_ingress_messages_refused_total|site=default|class=5xx": 1,
		"mailroot_ingress_messages_refused_total|site=default|class=4xx": 0,
		"mailroot_ingress_received_bytes_total|site=default":             float64(accepted),
		"mailroot_ingress_sessions|site=default":                         0,
		// A, B, D, E remote; C and D's report to Drop; F held.
		"mailroot_router_messages_total|outcome=remote": 4,
		"mailroot_router_messages_total|outcome=drop":   2,
		"mailroot_router_messages_total|outcome=hold":   1,
		"mailroot_router_messages_total|outcome=bad":    0,
		// A (2), B, C and D's report delivered; D and E bounced.
		"mailroot_delivery_recipients_total|result=delivered": 5,
		"mailroot_delivery_recipients_total|result=bounced":   2,
		"mailroot_delivery_recipients_total|result=deferred":  0,
		"mailroot_delivery_attempt_duration_seconds":          4,
		// remote.test once, reused for B; reject.test once, reused for E.
		"mailroot_delivery_connections_total|how=opened": 2,
		"mailroot_delivery_connections_total|how=reused": 2,
		"mailroot_badmail_messages_total":                1,
		"mailroot_queue_messages|state=held":             1,
		"mailroot_queue_messages|state=active":           0,
		"mailroot_queue_messages|state=incoming":         0,
		"mailroot_queue_messages|state=deferred":         0,
		// Histograms by their count: each accepted message, each
		// delivered recipient.
		"mailroot_ingress_accept_duration_seconds|site=default":            6,
		"mailroot_delivery_latency_seconds":                                5,
		"mailroot_ingress_refusals_total|site=default|reason=relay_denied": 0,
		"mailroot_nats_connection_state|state=connected":                   1,
		"mailroot_nats_connection_state|state=reconnecting":                0,
		"mailroot_pickup_files":                                            0,
	}
	var raw []byte
	var diff []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		fams, raw = scrape(t, addr)
		diff = diff[:0]
		for k, v := range want {
			parts := strings.Split(k, "|")
			if got := value(fams, parts[0], parts[1:]...); got != v {
				diff = append(diff, fmt.Sprintf("%s = %v, want %v", k, got, v))
			}
		}
		if len(diff) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // polling a scrape, which the queue caches for QueueCacheFor
	}
	if len(diff) > 0 {
		t.Fatalf("metrics did not reach what the mail did:\n%s\n\n%s", strings.Join(diff, "\n"), raw)
	}
	if bus.HaveSyncFS && cfg.NATS.Sync == config.SyncAlways {
		if v := value(fams, "mailroot_store_syncs_total"); v < 1 {
			t.Errorf("group commit syncs %v, want some", v)
		}
		if v := value(fams, "mailroot_store_sync_duration_seconds"); v < 1 {
			t.Errorf("sync duration observations %v, want some", v)
		}
	}
	// The streams' reading is cached like the queue's: the one of the
	// first scrape, before any mail, may still be served.
	testutil.WaitFor(t, 20*time.Second, "store bytes of MAIL and MAIL_EVENTS", func() bool {
		fams, _ := scrape(t, addr)
		return value(fams, "mailroot_jetstream_stream_bytes", "stream="+bus.StreamMail) > 0 &&
			value(fams, "mailroot_jetstream_stream_bytes", "stream="+bus.StreamEvents) > 0
	})
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total", "process_open_fds", "mailroot_delivery_idle_connections"} {
		if value(fams, name) < 0 {
			t.Errorf("%s missing from the scrape", name)
		}
	}
	promtoolCheck(t, raw)
}

// waitMetric polls addr's metrics until name (with labels) is v.
func waitMetric(t *testing.T, addr, name string, v float64, labels ...string) {
	t.Helper()
	testutil.WaitFor(t, 20*time.Second, fmt.Sprintf("%s%v = %v", name, labels, v), func() bool {
		fams, _ := scrape(t, addr)
		return value(fams, name, labels...) == v
	})
}

// promtoolCheck validates an exposition with `promtool check metrics`
// (Debian package prometheus; .ci/run installs it and sets
// MAILROOT_REQUIRE_PROMTOOL, so that CI never skips it).
func promtoolCheck(t *testing.T, raw []byte) {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("MAILROOT_REQUIRE_PROMTOOL") != "" {
			t.Fatal("promtool not installed, and MAILROOT_REQUIRE_PROMTOOL is set (CI): apt-get install prometheus")
		}
		t.Skip("promtool not installed (apt-get install prometheus): exposition not validated")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "check", "metrics")
	cmd.Stdin = bytes.NewReader(raw)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check metrics: %v\n%s\n\nthe exposition:\n%s", err, out, raw)
	}
}

// Two processes on one host left on the same metrics.listen: the second
// serves no metrics, says so, and carries mail all the same.
func TestMetricsPortInUseDoesNotStopMail(t *testing.T) {
	w := newWorld(t)
	cfg := testConfig(t, w, t.TempDir())
	first := startNode(t, cfg)
	cfg2 := testConfig(t, w, t.TempDir())
	cfg2.Metrics.Listen = first.MetricsAddr()
	var logs testutil.Logs
	second, err := StartEmbedded(context.Background(), cfg2, logs.Logger(t))
	if err != nil {
		t.Fatalf("start with the metrics port in use: %v", err)
	}
	t.Cleanup(second.Stop)
	<-second.Ingress.Ready()
	if second.MetricsAddr() != "" || logs.Count("metrics listener failed") != 1 {
		t.Fatalf("metrics address %q, logs:\n%s", second.MetricsAddr(), logs.String())
	}
	submitSMTP(t, second.Ingress.Addrs()[0], "sender@local.test", []string{"rcpt@remote.test"}, "Subject: x\r\n\r\nx\r\n")
	testutil.WaitFor(t, 20*time.Second, "delivery by the node without metrics", func() bool { return w.mx["remote.test"].Count() == 1 })
}
