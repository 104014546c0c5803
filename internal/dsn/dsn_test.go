package dsn

import (
	"bytes"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

var (
	arrival = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	attempt = time.Date(2026, 3, 6, 5, 6, 7, 0, time.FixedZone("", 3600))
)

func sampleMessage(original string, headersOnly bool) *Message {
	m := &Message{
		From:      "MAILER-DAEMON@mx.example.test",
		FromName:  "Mail Delivery System",
		To:        "sender@example.test",
		Subject:   "Undeliverable: hello",
		Date:      attempt,
		MessageID: "Q1-dsn@mx.example.test",
		Text:      "Your message could not be delivered.\nGr\u00fc\u00dfe\n",
		Report: Report{
			ReportingMTA:       "mx.example.test",
			OriginalEnvelopeID: "env+1",
			ReceivedFromMTA:    "client.example.test",
			ArrivalDate:        arrival,
			QueueID:            "Q1",
			Recipients: []Recipient{{
				OriginalRecipient: "rfc822;Bob@example.net",
				FinalRecipient:    "bob@example.net",
				Action:            ActionFailed,
				Status:            "5.1.1",
				RemoteMTA:         "mx.example.net",
				DiagnosticCode:    "smtp; 550 5.1.1 user unknown",
				LastAttemptDate:   attempt,
			}, {
				FinalRecipient:  "j\u00f6rg+x@example.net",
				Action:          ActionDelayed,
				Status:          "4.4.1",
				DiagnosticCode:  "X-Mailroot; 4.4.1 connect: connection refused",
				LastAttemptDate: attempt,
				WillRetryUntil:  arrival.Add(48 * time.Hour),
			}},
		},
		Boundary:    "b-o-u-n-d",
		HeadersOnly: headersOnly,
	}
	if original != "" {
		m.Original = strings.NewReader(original)
	}
	return m
}

const original = "Received: from a by b; Tue, 3 Mar 2026 10:00:00 +0000\r\nSubject: hello\r\nFrom: sender@example.test\r\n\r\nbody line\r\n.dot line\r\n"

// The report is checked with the standard library's MIME reader, not with
// our own Parse.
func TestWriteIsValidMultipartReport(t *testing.T) {
	var buf bytes.Buffer
	if err := Write(&buf, sampleMessage(original, false)); err != nil {
		t.Fatal(err)
	}
	raw := buf.String()
	for i, l := range strings.SplitAfter(raw, "\n") {
		if strings.HasSuffix(l, "\n") && !strings.HasSuffix(l, "\r\n") {
			t.Fatalf("line %d has a bare LF: %q", i+1, l)
		}
	}
	msg, err := mail.ReadMessage(strings.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{
		"From":           "Mail Delivery System <MAILER-DAEMON@mx.example.test>",
		"To":             "<sender@example.test>",
		"Auto-Submitted": "auto-replied",
		"MIME-Version":   "1.0",
		"Message-Id":     "<Q1-dsn@mx.example.test>",
	} {
		if got := msg.Header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("Content-Type %q: %v", msg.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	var types []string
	var parts [][]byte
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p)
		ct, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		types = append(types, ct)
		parts = append(parts, b)
	}
	if want := []string{"text/plain", "message/delivery-status", "message/rfc822"}; !slices.Equal(types, want) {
		t.Fatalf("parts %v, want %v", types, want)
	}
	if !strings.Contains(string(parts[0]), "Grüße") {
		t.Errorf("text part %q", parts[0])
	}
	status := string(parts[1])
	for _, want := range []string{
		"Reporting-MTA: dns; mx.example.test\r\n",
		"Original-Envelope-Id: env+1\r\n",
		"Received-From-MTA: dns; client.example.test\r\n",
		"Arrival-Date: Wed, 04 Mar 2026 05:06:07 +0000\r\n",
		"\r\n\r\nOriginal-Recipient: rfc822;Bob@example.net\r\nFinal-Recipient: rfc822; bob@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.example.net\r\nDiagnostic-Code: smtp; 550 5.1.1 user unknown\r\nLast-Attempt-Date: Fri, 06 Mar 2026 05:06:07 +0100\r\n",
		"Final-Recipient: utf-8; j\\x{F6}rg\\x{2B}x@example.net\r\n",
		"Will-Retry-Until: Fri, 06 Mar 2026 05:06:07 +0000\r\n",
	} {
		if !strings.Contains(status, want) {
			t.Errorf("delivery-status lacks %q:\n%s", want, status)
		}
	}
	if string(parts[2]) != original {
		t.Errorf("original part %q, want %q", parts[2], original)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name        string
		original    string
		headersOnly bool
		wantType    string
	}{
		{"full", original, false, TypeMessage},
		{"headers", "Subject: hello\r\nFrom: a@b\r\n", true, TypeHeaders},
		{"none", "", false, ""},
		{"no final newline", "Subject: x\r\n\r\nno newline", false, TypeMessage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := sampleMessage(tc.original, tc.headersOnly)
			var buf bytes.Buffer
			if err := Write(&buf, m); err != nil {
				t.Fatal(err)
			}
			p, err := Parse(&buf)
			if err != nil {
				t.Fatal(err)
			}
			if d := reportDiff(m.Report, p.Report); d != "" {
				t.Errorf("report differs: %s", d)
			}
			if p.OriginalType != tc.wantType || string(p.Original) != tc.original {
				t.Errorf("original %s %q, want %s %q", p.OriginalType, p.Original, tc.wantType, tc.original)
			}
			if got, want := normText(p.Text), normText(m.Text); got != want {
				t.Errorf("text %q, want %q", got, want)
			}
			if p.Header.Get("Subject") != m.Subject {
				t.Errorf("subject %q", p.Header.Get("Subject"))
			}
		})
	}
}

func normText(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	return strings.TrimRight(strings.ToValidUTF8(s, "\uFFFD"), "\n")
}

func TestWriteRejectsIncompleteReports(t *testing.T) {
	for name, edit := range map[string]func(*Message){
		"no reporting MTA": func(m *Message) { m.Report.ReportingMTA = " " },
		"no recipients":    func(m *Message) { m.Report.Recipients = nil },
		"no status":        func(m *Message) { m.Report.Recipients[0].Status = "" },
		"no final rcpt":    func(m *Message) { m.Report.Recipients[1].FinalRecipient = "" },
	} {
		m := sampleMessage("", false)
		edit(m)
		if err := Write(io.Discard, m); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestParseRejects(t *testing.T) {
	for name, in := range map[string]string{
		"not mime":         "Subject: hi\r\n\r\nbody\r\n",
		"other report":     "Content-Type: multipart/report; report-type=disposition-notification; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n",
		"no status part":   "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n",
		"no recipients":    "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n--b--\r\n",
		"bad date":         "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\nArrival-Date: yesterday\r\n\r\nFinal-Recipient: rfc822; a@b\r\nAction: failed\r\nStatus: 5.0.0\r\n--b--\r\n",
		"missing action":   "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\nFinal-Recipient: rfc822; a@b\r\nStatus: 5.0.0\r\n--b--\r\n",
		"orphan fold":      "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n folded\r\n--b--\r\n",
		"bad utf-8 escape": "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\nFinal-Recipient: utf-8; a\\x{ZZ}@b\r\nAction: failed\r\nStatus: 5.0.0\r\n--b--\r\n",
	} {
		if _, err := Parse(strings.NewReader(in)); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

// Reports from other MTAs parse too: folded fields, LF line ends, comments.
func TestParseForeignReport(t *testing.T) {
	in := "From: MAILER-DAEMON@other.test\nContent-Type: multipart/report; report-type=delivery-status;\n\tboundary=\"XYZ\"\n\n--XYZ\n\nhuman\n--XYZ\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; other.test\nX-Postfix-Queue-ID: ABC\n\nFinal-Recipient: rfc822; a@b.test\nOriginal-Recipient: rfc822;a@b.test\nAction: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 <a@b.test>:\n    Recipient address rejected\n\n--XYZ\nContent-Type: text/rfc822-headers\n\nSubject: x\n\n--XYZ--\n"
	p, err := Parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	rc := p.Report.Recipients[0]
	if p.Report.ReportingMTA != "other.test" || rc.FinalRecipient != "a@b.test" || rc.DiagnosticCode != "smtp; 550 5.1.1 <a@b.test>:    Recipient address rejected" {
		t.Errorf("parsed %+v", p.Report)
	}
	if p.OriginalType != TypeHeaders || string(p.Original) != "Subject: x\n" {
		t.Errorf("original %s %q", p.OriginalType, p.Original)
	}
}

func TestXtext(t *testing.T) {
	for _, s := range []string{"", "plain", "a+b=c", "sp ace\x01\xff"} {
		if got := DecodeXtext(EncodeXtext(s)); got != s {
			t.Errorf("xtext round trip of %q: %q", s, got)
		}
	}
	if got := DecodeXtext("a+2Bb+zz+4"); got != "a+b+zz+4" {
		t.Errorf("decode %q", got)
	}
	for _, s := range []string{"jörg@example.net", `a\b+c=d e@x`, "日本@例え.jp"} {
		enc := EncodeUTF8Addr(s)
		if !isAtext(enc) {
			t.Errorf("encoding of %q is not atext: %q", s, enc)
		}
		if got, ok := DecodeUTF8Addr(enc); !ok || got != s {
			t.Errorf("utf-8 addr round trip of %q: %q %v", s, got, ok)
		}
	}
}

// reportDiff describes how two reports differ ("" if they do not); times
// are compared as instants.
func reportDiff(a, b Report) string {
	norm := func(r Report) Report {
		r.ArrivalDate = r.ArrivalDate.UTC()
		r.Recipients = slices.Clone(r.Recipients)
		for i := range r.Recipients {
			r.Recipients[i].LastAttemptDate = r.Recipients[i].LastAttemptDate.UTC()
			r.Recipients[i].WillRetryUntil = r.Recipients[i].WillRetryUntil.UTC()
		}
		return r
	}
	a, b = norm(a), norm(b)
	if reflect.DeepEqual(a, b) {
		return ""
	}
	return fmt.Sprintf("\n sent   %+v\n parsed %+v", a, b)
}
