package tlsrpt

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/resolver"
	"github.com/mailroot/mailroot/internal/testutil"
)

func TestParseRUA(t *testing.T) {
	for _, tc := range []struct {
		txts []string
		want []string
	}{
		{[]string{"v=TLSRPTv1; rua=mailto:reports@example.com"}, []string{"reports@example.com"}},
		{[]string{"v=spf1 -all", "v=TLSRPTv1;rua=mailto:a@x.test,https://r.x.test/v1, mailto:b%40y@y.test"}, []string{"a@x.test"}},
		{[]string{"v=TLSRPTv1; rua=https://reports.example.com/v1"}, nil},
		{[]string{"v=TLSRPTv1; rua=mailto:a@x.test", "v=TLSRPTv1; rua=mailto:b@x.test"}, nil},
		{[]string{"rua=mailto:a@x.test; v=TLSRPTv1"}, nil},
		{[]string{"v=TLSRPTv1; rua=mailto:Name <a@x.test>"}, nil},
		{nil, nil},
	} {
		got, err := ParseRUA(tc.txts)
		if !slices.Equal(got, tc.want) || (err != nil) != (tc.want == nil) {
			t.Errorf("ParseRUA(%q) = %q, %v; want %q", tc.txts, got, err, tc.want)
		}
	}
}

func TestParseRecordHTTPS(t *testing.T) {
	for _, tc := range []struct {
		txt          string
		mailto, http []string
	}{
		{"v=TLSRPTv1; rua=https://reports.example.com/v1", nil, []string{"https://reports.example.com/v1"}},
		{"v=TLSRPTv1;rua=mailto:a@x.test,https://r.x.test:8443/tlsrpt", []string{"a@x.test"}, []string{"https://r.x.test:8443/tlsrpt"}},
		{"v=TLSRPTv1; rua=http://r.x.test/v1", nil, nil},
		{"v=TLSRPTv1; rua=https://user:pw@r.x.test/v1", nil, nil},
		{"v=TLSRPTv1; rua=https:///v1", nil, nil},
		{"v=TLSRPTv1; rua=ftp://r.x.test/", nil, nil},
	} {
		got, err := ParseRecord([]string{tc.txt})
		if !slices.Equal(got.Mailto, tc.mailto) || !slices.Equal(got.HTTPS, tc.http) || (err != nil) != (tc.mailto == nil && tc.http == nil) {
			t.Errorf("ParseRecord(%q) = %+v, %v; want %q %q", tc.txt, got, err, tc.mailto, tc.http)
		}
	}
}

func FuzzParseRecord(f *testing.F) {
	f.Add("v=TLSRPTv1; rua=mailto:reports@example.com")
	f.Add("v=TLSRPTv1;rua=mailto:a@x.test,https://r.x.test/v1")
	f.Add("v=TLSRPTv1; rua=mailto:%0d%0a@x")
	f.Add("v=TLSRPTv1; rua=https://[::1]:8443/v1?x=1")
	f.Add("v=TLSRPTv1; rua=https://%zz/")
	f.Fuzz(func(t *testing.T, txt string) {
		rua, err := ParseRecord([]string{txt})
		if err == nil && len(rua.Mailto)+len(rua.HTTPS) == 0 {
			t.Fatal("no error and no destination")
		}
		for _, a := range rua.Mailto {
			if strings.ContainsAny(a, "\r\n<>,") {
				t.Fatalf("address %q from %q", a, txt)
			}
		}
		for _, u := range rua.HTTPS {
			pu, err := url.Parse(u)
			if err != nil || pu.Scheme != "https" || pu.Hostname() == "" || strings.ContainsAny(u, " \r\n") {
				t.Fatalf("URL %q from %q", u, txt)
			}
		}
	})
}

func TestClassifyVerify(t *testing.T) {
	for why, want := range map[string]string{
		"x509: certificate is valid for mx.elsewhere.test, not mx.sts.test": ResultCertHostMismatch,
		"x509: certificate signed by unknown authority":                     ResultCertNotTrusted,
		"x509: certificate has expired or is not yet valid: current time":   ResultCertExpired,
		"no certificate": ResultValidationFailure,
	} {
		if got := ClassifyVerify(why); got != want {
			t.Errorf("ClassifyVerify(%q) = %s, want %s", why, got, want)
		}
	}
}

// Results recorded on day D (on the stream every delivery process adds
// to) make one report on D+1: mailed once to the rua address through
// mail.in, however many reporters run, with the gzipped RFC 8460 JSON
// attached; the next day's results are not in it, and a domain without a
// TLSRPT record (plain.test) gets none.
func TestDailyReport(t *testing.T) {
	ns := testutil.StartNATS(t)
	_, js := ns.Connect(t)
	ctx := t.Context()
	cfg := config.Default()
	if _, err := bus.Setup(ctx, js, cfg); err != nil {
		t.Fatal(err)
	}
	kv, err := EnsureStream(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	d := testutil.StartDNS(t, `_smtp._tls.sts.test. TXT "v=TLSRPTv1; rua=mailto:tlsrpt@sts.test"`)
	res, err := resolver.New(resolver.Config{Servers: []string{d.Addr}, Timeout: 2 * time.Second, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	dayD := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	sts := Result{Domain: "sts.test", PolicyType: PolicySTS, PolicyString: []string{"version: STSv1", "mode: enforce", "mx: *.sts.test", "max_age: 86400"}, MXHost: []string{"*.sts.test"}}
	fail := sts
	fail.ResultType, fail.ReceivingMX, fail.ReceivingIP, fail.Reason = ResultCertHostMismatch, "mx1.sts.test", "127.0.0.2", "x509: certificate is valid for mx.elsewhere.test"
	ok := sts
	ok.Success = true
	for _, r := range []Result{fail, ok, fail, ok, ok} {
		Record(js, Day(dayD), r, "")
	}
	Record(js, Day(dayD), Result{Domain: "plain.test", PolicyType: PolicyNone, Success: true}, "")
	Record(js, Day(dayD.Add(24*time.Hour)), fail, "") // the next day: not in D's report
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(10 * time.Second):
		t.Fatal("records not published")
	}

	now := dayD.Add(24*time.Hour + 90*time.Minute)
	newReporter := func() *Reporter {
		return &Reporter{JS: js, Room: &bus.Room{JS: js}, KV: kv, LookupTXT: res.LookupTXT, Now: func() time.Time { return now },
			Hostname: "mailroot.test", Org: "Mailroot test", Contact: "postmaster@mailroot.test", From: "postmaster@mailroot.test",
			Log: testutil.Logger(t)}
	}
	sent, err := newReporter().SendDay(ctx, now.Add(-24*time.Hour))
	if err != nil || len(sent) != 1 {
		t.Fatalf("SendDay = %v, %v; want one report", sent, err)
	}
	// Another process, later: nothing more.
	if again, err := newReporter().SendDay(ctx, now.Add(-24*time.Hour)); err != nil || len(again) != 0 {
		t.Fatalf("second SendDay = %v, %v; want nothing", again, err)
	}

	st, err := js.Stream(ctx, bus.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(bus.SubjIn))
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Subjects[bus.SubjIn]; n != 1 {
		t.Fatalf("%d messages on mail.in, want 1 report", n)
	}
	raw, err := st.GetLastMsgForSubject(ctx, bus.SubjIn)
	if err != nil {
		t.Fatal(err)
	}
	env, err := envelope.Decode(raw.Header)
	if err != nil {
		t.Fatal(err)
	}
	if sent[0] != "sts.test" || env.QueueID != envelope.QueueIDFor("tlsrpt.20261201.sts_test") || len(env.Rcpts) != 1 || env.Rcpts[0].Addr != "tlsrpt@sts.test" || env.From != "postmaster@mailroot.test" {
		t.Errorf("report envelope %+v", env)
	}
	rep := parseReportMail(t, raw.Data)
	if rep.OrganizationName != "Mailroot test" || rep.ContactInfo != "postmaster@mailroot.test" || rep.ReportID == "" ||
		!rep.DateRange.Start.Equal(dayD) || !rep.DateRange.End.Equal(dayD.Add(24*time.Hour)) {
		t.Errorf("report head %+v", rep)
	}
	if len(rep.Policies) != 1 {
		t.Fatalf("policies %+v, want one", rep.Policies)
	}
	p := rep.Policies[0]
	if p.Policy.PolicyType != "sts" || p.Policy.PolicyDomain != "sts.test" || !slices.Equal(p.Policy.MXHost, []string{"*.sts.test"}) || len(p.Policy.PolicyString) != 4 {
		t.Errorf("policy %+v", p.Policy)
	}
	if p.Summary.TotalSuccessfulSessionCount != 3 || p.Summary.TotalFailureSessionCount != 2 {
		t.Errorf("summary %+v, want 3 successful, 2 failed", p.Summary)
	}
	if len(p.FailureDetails) != 1 || p.FailureDetails[0].ResultType != "certificate-host-mismatch" || p.FailureDetails[0].FailedSessionCount != 2 ||
		p.FailureDetails[0].ReceivingMXHostname != "mx1.sts.test" || p.FailureDetails[0].ReceivingIP != "127.0.0.2" {
		t.Errorf("failure details %+v", p.FailureDetails)
	}
}

// parseReportMail checks the RFC 8460 §5.3 shape of a report message and
// returns its JSON report, as a receiver would read it.
func parseReportMail(t *testing.T, data []byte) Report {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get("TLS-Report-Domain") != "sts.test" || m.Header.Get("TLS-Report-Submitter") != "mailroot.test" || !strings.HasPrefix(m.Header.Get("Subject"), "Report Domain: sts.test Submitter: mailroot.test Report-ID: <") {
		t.Errorf("headers %v", m.Header)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "tlsrpt" {
		t.Fatalf("content type %q", m.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	var rep *Report
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		pt, pp, _ := mime.ParseMediaType(part.Header.Get("Content-Type"))
		if pt != "application/tlsrpt+gzip" {
			continue
		}
		if !strings.HasPrefix(pp["name"], "mailroot.test!sts.test!") || !strings.HasSuffix(pp["name"], ".json.gz") {
			t.Errorf("attachment name %q", pp["name"])
		}
		zr, err := gzip.NewReader(base64.NewDecoder(base64.StdEncoding, part))
		if err != nil {
			t.Fatal(err)
		}
		js, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		rep = new(Report)
		dec := json.NewDecoder(bytes.NewReader(js))
		dec.DisallowUnknownFields()
		if err := dec.Decode(rep); err != nil {
			t.Fatalf("report JSON: %v", err)
		}
		// The RFC 8460 §4.4 member names, read without our types.
		var raw map[string]any
		if err := json.Unmarshal(js, &raw); err != nil {
			t.Fatal(err)
		}
		dr, _ := raw["date-range"].(map[string]any)
		pols, _ := raw["policies"].([]any)
		if raw["organization-name"] == nil || raw["contact-info"] == nil || raw["report-id"] == nil || dr["start-datetime"] != "2026-12-01T00:00:00Z" || dr["end-datetime"] != "2026-12-02T00:00:00Z" || len(pols) == 0 {
			t.Fatalf("report JSON %s", js)
		}
		p0, _ := pols[0].(map[string]any)
		pol, _ := p0["policy"].(map[string]any)
		sum, _ := p0["summary"].(map[string]any)
		fd, _ := p0["failure-details"].([]any)
		if pol["policy-type"] == nil || pol["policy-domain"] == nil || sum["total-successful-session-count"] == nil || sum["total-failure-session-count"] == nil || len(fd) == 0 {
			t.Fatalf("report JSON %s", js)
		}
		if f0, _ := fd[0].(map[string]any); f0["result-type"] == nil || f0["failed-session-count"] == nil || f0["receiving-mx-hostname"] == nil {
			t.Fatalf("failure details JSON %s", js)
		}
	}
	if rep == nil {
		t.Fatal("no application/tlsrpt+gzip part")
	}
	return *rep
}
