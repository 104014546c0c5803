package delivery

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
	"github.com/mailroot/mailroot/internal/tlsrpt"
	"github.com/mailroot/mailroot/router"
)

// rptEndpoint is an https: rua: a TLS server for rua.test that keeps
// every report POSTed to it.
type rptEndpoint struct {
	mu    sync.Mutex
	posts [][]byte
	types []string
	url   string
}

func startRPTEndpoint(t *testing.T, cert tls.Certificate) *rptEndpoint {
	t.Helper()
	e := &rptEndpoint{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil || r.Method != http.MethodPost || r.URL.Path != "/v1" {
			http.Error(rw, "bad request", http.StatusBadRequest)
			return
		}
		e.mu.Lock()
		e.posts = append(e.posts, b)
		e.types = append(e.types, r.Header.Get("Content-Type"))
		e.mu.Unlock()
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, _ := strings.Cut(srv.Listener.Addr().String(), ":")
	e.url = "https://rua.test:" + port + "/v1"
	return e
}

func (e *rptEndpoint) got() ([][]byte, []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([][]byte(nil), e.posts...), append([]string(nil), e.types...)
}

// gunzipReport reads a gzipped RFC 8460 report, refusing unknown members.
func gunzipReport(t *testing.T, gz io.Reader) tlsrpt.Report {
	t.Helper()
	zr, err := gzip.NewReader(gz)
	if err != nil {
		t.Fatal(err)
	}
	js, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	var rep tlsrpt.Report
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("report JSON %s: %v", js, err)
	}
	return rep
}

// reportOfMail checks the RFC 8460 §5.3 report mail and returns its report.
func reportOfMail(t *testing.T, data []byte) tlsrpt.Report {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get("TLS-Report-Domain") != "sts.test" || m.Header.Get("TLS-Report-Submitter") != "mailroot.test" {
		t.Errorf("report headers %v", m.Header)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "tlsrpt" {
		t.Fatalf("content type %q", m.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	for {
		part, err := mr.NextPart()
		if err != nil {
			t.Fatalf("no application/tlsrpt+gzip part: %v", err)
		}
		if pt, _, _ := mime.ParseMediaType(part.Header.Get("Content-Type")); pt == "application/tlsrpt+gzip" {
			return gunzipReport(t, base64.NewDecoder(base64.StdEncoding, part))
		}
	}
}

// checkReport asserts the totals of the day: 3 sessions that met the
// enforce policy (mx2) and 3 refused for mx1's certificate.
func checkReport(t *testing.T, how string, rep tlsrpt.Report) {
	t.Helper()
	if rep.ContactInfo != "tlsrpt-admin@mailroot.test" || rep.OrganizationName != "Mailroot Test Org" || !strings.Contains(rep.ReportID, "sts.test") {
		t.Errorf("%s: report head %+v", how, rep)
	}
	if len(rep.Policies) != 1 {
		t.Fatalf("%s: policies %+v, want one", how, rep.Policies)
	}
	p := rep.Policies[0]
	if p.Policy.PolicyType != "sts" || p.Policy.PolicyDomain != "sts.test" || len(p.Policy.MXHost) != 1 || p.Policy.MXHost[0] != "*.sts.test" ||
		strings.Join(p.Policy.PolicyString, "\n")+"\n" != stsEnforce {
		t.Errorf("%s: policy %+v", how, p.Policy)
	}
	if p.Summary.TotalSuccessfulSessionCount != 3 || p.Summary.TotalFailureSessionCount != 3 {
		t.Errorf("%s: summary %+v, want 3 successful and 3 failed", how, p.Summary)
	}
	if len(p.FailureDetails) != 1 {
		t.Fatalf("%s: failure details %+v, want one kind", how, p.FailureDetails)
	}
	f := p.FailureDetails[0]
	if f.ResultType != tlsrpt.ResultCertHostMismatch || f.ReceivingMXHostname != "mx1.sts.test" || f.ReceivingIP != "127.0.0.2" || f.FailedSessionCount != 3 {
		t.Errorf("%s: failure detail %+v, want 3 certificate-host-mismatch at mx1.sts.test[127.0.0.2]", how, f)
	}
}

// TLS-RPT end to end, with two delivery services sharing the queue (and
// a router, so that the report mail takes the pipeline): under an
// MTA-STS enforce policy mx1's certificate does not match and each mail
// goes to mx2, so every delivery counts one failure and one success,
// whichever service made it. The day's report, made by both services at
// once, is claimed by one: it reaches the rua mailbox once, as an RFC
// 8460 mail, and the https: endpoint once, as application/tlsrpt+gzip,
// both with the day's totals; asking again sends nothing more.
func TestTLSRPTReportOnce(t *testing.T) {
	var svcs []*Service
	keep := func(s *Service) { svcs = append(svcs, s) }
	w := newSTSWorld(t, stsEnforce, []string{"mx.elsewhere.test"}, []string{"mx2.sts.test"}, func(h *harness) {
		h.cfg.Delivery.TLSRPT = true
		h.cfg.Delivery.TLSRPTContact = "tlsrpt-admin@mailroot.test"
		h.cfg.Delivery.TLSRPTOrg = "Mailroot Test Org"
		h.cfg.Delivery.ConnectionCacheTime = 0 // a session per mail: three sessions each
	})
	h := w.h
	keep(h.svc)
	mod := w.mod
	h.start(func(s *Service) { mod(s); keep(s) })
	ep := startRPTEndpoint(t, w.ruaCert)
	h.dns.Add(t, `_smtp._tls.sts.test. TXT "v=TLSRPTv1; rua=mailto:tlsrpt@rua.test,`+ep.url+`"`)
	h.dns.Add(t, "rua.test. A 127.0.0.1")
	h.dns.Add(t, "rua.test. MX 10 mx.rua.test.")
	h.dns.Add(t, "mx.rua.test. A 127.0.0.4")
	rt, err := router.New(h.cfg, testutil.Logger(t), h.js)
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(context.Background())
	rdone := make(chan struct{})
	go func() { defer close(rdone); _ = rt.Run(rctx) }()
	t.Cleanup(func() { rcancel(); <-rdone })

	for range 3 {
		env := newEnv("sts.test", "x@sts.test")
		h.publishOut(env, sampleBody)
		if ev := h.deliveredEvent(env.QueueID); ev.MX != "mx2.sts.test" {
			t.Fatalf("delivered to %s, want mx2", ev.MX)
		}
	}
	ctx := t.Context()
	var pending int64
	for _, s := range svcs {
		pending += s.rpt.counter.Pending()
		if err := s.rpt.counter.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if pending != 6 {
		t.Errorf("%d sessions counted by the two services, want 6 (3 failed at mx1, 3 at mx2)", pending)
	}

	day := time.Now()
	var wg sync.WaitGroup
	sent := make([][]string, len(svcs))
	for i, s := range svcs {
		wg.Go(func() {
			var err error
			if sent[i], err = s.rpt.reporter.SendDay(ctx, day); err != nil {
				t.Errorf("service %d: SendDay: %v", i, err)
			}
		})
	}
	wg.Wait()
	if n := len(sent[0]) + len(sent[1]); n != 1 {
		t.Fatalf("reports sent by the two services: %q, want one in all", sent)
	}
	for _, s := range svcs {
		if again, err := s.rpt.reporter.SendDay(ctx, day); err != nil || len(again) != 0 {
			t.Errorf("SendDay again = %v, %v; want nothing", again, err)
		}
	}

	var reports []testutil.Mail
	testutil.WaitFor(t, wait, "the report at the rua mailbox", func() bool {
		reports = reports[:0]
		for _, m := range h.sink.Mails() {
			if len(m.To) == 1 && m.To[0] == "tlsrpt@rua.test" {
				reports = append(reports, m)
			}
		}
		return len(reports) > 0
	})
	h.waitEmpty()
	if n := h.sink.Count(); n != 1 {
		t.Errorf("%d mails at the rua mailbox, want the one report", n)
	}
	if reports[0].From != "tlsrpt-admin@mailroot.test" {
		t.Errorf("report mail from %q", reports[0].From)
	}
	checkReport(t, "mail", reportOfMail(t, reports[0].Data))

	posts, types := ep.got()
	if len(posts) != 1 || types[0] != "application/tlsrpt+gzip" {
		t.Fatalf("%d POSTs (%q), want one application/tlsrpt+gzip", len(posts), types)
	}
	checkReport(t, "https", gunzipReport(t, bytes.NewReader(posts[0])))
}

// A testing policy delivers to mx1 whose certificate does not verify:
// counted as a failure of its kind, not as a success; a domain without
// MTA-STS or DANE is not counted at all.
func TestTLSRPTCountsTestingFailures(t *testing.T) {
	w := newSTSWorld(t, "version: STSv1\nmode: testing\nmx: *.sts.test\nmax_age: 86400\n", []string{"mx.elsewhere.test"}, []string{"mx2.sts.test"},
		func(h *harness) { h.cfg.Delivery.TLSRPT = true })
	h := w.h
	h.dns.Add(t, "plain.test. MX 10 mx.plain.test.")
	h.dns.Add(t, "mx.plain.test. A 127.0.0.4")
	for _, d := range []string{"sts.test", "plain.test"} {
		env := newEnv(d, "x@"+d)
		h.publishOut(env, sampleBody)
		h.deliveredEvent(env.QueueID)
	}
	ctx := t.Context()
	if err := h.svc.rpt.counter.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := h.js.Stream(ctx, tlsrpt.Stream)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := st.GetLastMsgForSubject(ctx, tlsrpt.Subject(tlsrpt.Day(time.Now()), "sts.test"))
	if err != nil {
		t.Fatal(err)
	}
	var r tlsrpt.Result
	if err := json.Unmarshal(raw.Data, &r); err != nil {
		t.Fatal(err)
	}
	if r.Success || r.ResultType != tlsrpt.ResultCertHostMismatch || r.ReceivingMX != "mx1.sts.test" || r.Count != 1 || r.PolicyType != "sts" {
		t.Errorf("recorded %+v, want one certificate-host-mismatch at mx1 under sts", r)
	}
	if _, err := st.GetLastMsgForSubject(ctx, tlsrpt.Subject(tlsrpt.Day(time.Now()), "plain.test")); err == nil {
		t.Errorf("a domain without a policy was counted")
	}
}

// recorded flushes h's counter and returns the day's records of domain.
func (h *harness) recorded(domain string) []tlsrpt.Result {
	h.t.Helper()
	ctx := h.t.Context()
	if err := h.svc.rpt.counter.Flush(ctx); err != nil {
		h.t.Fatal(err)
	}
	st, err := h.js.Stream(ctx, tlsrpt.Stream)
	if err != nil {
		h.t.Fatal(err)
	}
	subj := tlsrpt.Subject(tlsrpt.Day(time.Now()), domain)
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(subj))
	if err != nil {
		h.t.Fatal(err)
	}
	if n := info.State.Subjects[subj]; n != 1 {
		h.t.Fatalf("%d TLS-RPT records for %s, want 1 (one outcome)", n, domain)
	}
	raw, err := st.GetLastMsgForSubject(ctx, subj)
	if err != nil {
		h.t.Fatalf("no TLS-RPT record for %s: %v", domain, err)
	}
	var r tlsrpt.Result
	if err := json.Unmarshal(raw.Data, &r); err != nil {
		h.t.Fatal(err)
	}
	return []tlsrpt.Result{r}
}

// DANE: a match counts a success under the tlsa policy, with the records
// as its policy string; a certificate no record matches counts
// tlsa-invalid.
func TestTLSRPTCountsDANE(t *testing.T) {
	for _, tc := range []struct {
		name  string
		match bool
	}{{"match", true}, {"mismatch", false}} {
		t.Run(tc.name, func(t *testing.T) {
			cert := selfSigned(t, "mx.dane.test")
			rec := cert
			if !tc.match {
				rec = selfSigned(t, "mx.dane.test")
			}
			tlsa := "3 1 1 " + spki256(t, rec.Certificate[0])
			h, _ := daneHarness(t, &cert, true, tlsa)
			h.cfg.Delivery.TLSRPT = true
			h.cfg.Delivery.Retry = []config.Duration{config.Duration(time.Hour)} // one attempt, one session
			h.start(nil)
			env := newEnv("dane.test", "x@dane.test")
			h.publishOut(env, sampleBody)
			if tc.match {
				h.deliveredEvent(env.QueueID)
			} else {
				h.deferred(env)
			}
			r := h.recorded("dane.test")[0]
			if r.PolicyType != "tlsa" || r.Domain != "dane.test" || len(r.PolicyString) != 1 || r.PolicyString[0] != tlsa || r.Count != 1 {
				t.Errorf("recorded %+v, want one session under the tlsa policy with its record", r)
			}
			if tc.match && !r.Success {
				t.Errorf("a matching certificate counted as %s", r.ResultType)
			}
			if !tc.match && (r.Success || r.ResultType != tlsrpt.ResultTLSAInvalid || r.ReceivingMX != "mx.dane.test") {
				t.Errorf("a mismatch counted as %+v, want tlsa-invalid at mx.dane.test", r)
			}
		})
	}
}

// Counts survive a restart: a service stopped before its next flush
// stores what it counted on the way out, and the next one adds to them.
func TestTLSRPTCountsSurviveRestart(t *testing.T) {
	w := newSTSWorld(t, stsEnforce, []string{"mx.elsewhere.test"}, []string{"mx2.sts.test"}, func(h *harness) { h.cfg.Delivery.TLSRPT = true })
	h := w.h
	ctx := t.Context()
	stored := func() (ok, failed int64) {
		t.Helper()
		st, err := h.js.Stream(ctx, tlsrpt.Stream)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
			m, err := st.GetMsg(ctx, seq)
			if err != nil {
				t.Fatal(err)
			}
			var r tlsrpt.Result
			if err := json.Unmarshal(m.Data, &r); err != nil {
				t.Fatal(err)
			}
			if r.Success {
				ok += r.Count
			} else {
				failed += r.Count
			}
		}
		return ok, failed
	}
	first := h.svc
	env := newEnv("sts.test", "x@sts.test")
	h.publishOut(env, sampleBody)
	h.deliveredEvent(env.QueueID)
	if n := first.rpt.counter.Pending(); n != 2 {
		t.Fatalf("%d sessions pending, want 2 (mx1 refused, mx2 delivered)", n)
	}
	w.stop()
	if n := first.rpt.counter.Pending(); n != 0 {
		t.Errorf("%d sessions still pending after the stop", n)
	}
	if ok, failed := stored(); ok != 1 || failed != 1 {
		t.Fatalf("stored after the stop: %d successful, %d failed; want 1 and 1", ok, failed)
	}
	h.start(w.mod)
	env = newEnv("sts.test", "x@sts.test")
	h.publishOut(env, sampleBody)
	h.deliveredEvent(env.QueueID)
	if err := h.svc.rpt.counter.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, failed := stored(); ok != 2 || failed != 2 {
		t.Errorf("stored after the restart: %d successful, %d failed; want 2 and 2", ok, failed)
	}
}

// A policy the TXT record announces but that does not parse counts
// sts-policy-invalid (and the mail goes as if there were no policy,
// which is not counted).
func TestTLSRPTCountsInvalidPolicy(t *testing.T) {
	w := newSTSWorld(t, "version: STSv1\nmode: sometimes\n", []string{"mx1.sts.test"}, []string{"mx2.sts.test"},
		func(h *harness) { h.cfg.Delivery.TLSRPT = true })
	env := newEnv("sts.test", "x@sts.test")
	w.h.publishOut(env, sampleBody)
	if ev := w.h.deliveredEvent(env.QueueID); ev.TLSPolicy != PolicyOpportunistic {
		t.Errorf("delivered under %s, want opportunistic", ev.TLSPolicy)
	}
	r := w.h.recorded("sts.test")[0]
	if r.Success || r.ResultType != tlsrpt.ResultSTSPolicyInvalid || r.PolicyType != "sts" || r.Count != 1 {
		t.Errorf("recorded %+v, want one sts-policy-invalid", r)
	}
}
