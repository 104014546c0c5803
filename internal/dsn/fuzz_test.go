package dsn

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

// cleaned is what a report looks like after Write and Parse: every value
// as CleanText makes it, Final-Recipient as RFC 6533 encoding preserves it,
// times to the second.
func cleaned(r Report) Report {
	sec := func(t time.Time) time.Time {
		if t.IsZero() {
			return t
		}
		return t.Truncate(time.Second).UTC()
	}
	out := Report{
		ReportingMTA:       CleanText(r.ReportingMTA),
		OriginalEnvelopeID: CleanText(r.OriginalEnvelopeID),
		ReceivedFromMTA:    CleanText(r.ReceivedFromMTA),
		ArrivalDate:        sec(r.ArrivalDate),
		QueueID:            CleanText(r.QueueID),
	}
	for _, rc := range r.Recipients {
		f := rc.FinalRecipient
		if !isAtext(f) {
			f = strings.ToValidUTF8(f, "\uFFFD")
		}
		out.Recipients = append(out.Recipients, Recipient{
			OriginalRecipient: CleanText(rc.OriginalRecipient),
			FinalRecipient:    f,
			Action:            CleanText(rc.Action),
			Status:            CleanText(rc.Status),
			RemoteMTA:         CleanText(rc.RemoteMTA),
			DiagnosticCode:    CleanText(rc.DiagnosticCode),
			LastAttemptDate:   sec(rc.LastAttemptDate),
			WillRetryUntil:    sec(rc.WillRetryUntil),
		})
	}
	return out
}

// fits reports whether every value is short enough to be written whole
// (longer ones are cut, by design).
func fits(r Report) bool {
	short := func(vs ...string) bool {
		for _, v := range vs {
			if len(v) > 200 {
				return false
			}
		}
		return true
	}
	if !short(r.ReportingMTA, r.OriginalEnvelopeID, r.ReceivedFromMTA, r.QueueID) {
		return false
	}
	for _, rc := range r.Recipients {
		if !short(rc.OriginalRecipient, rc.FinalRecipient, rc.Action, rc.Status, rc.RemoteMTA, rc.DiagnosticCode) {
			return false
		}
		// An address whose xtext form is longer than a field is cut on
		// purpose (formatAddress), so it cannot come back whole: 180
		// control bytes are already 900 characters as \x{1} escapes.
		if !isAtext(rc.FinalRecipient) && len("utf-8; "+EncodeUTF8Addr(rc.FinalRecipient)) > maxField {
			return false
		}
	}
	return true
}

// fuzzTime maps any int64 to a time Write can render (years 1 to 9999).
func fuzzTime(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	const span = 253402300799 + 62135596800 // 0001-01-01 .. 9999-12-31
	if n < 0 {
		n = -n
	}
	return time.Unix(n%span-62135596800, 0).UTC()
}

// Write then Parse gives back the cleaned report, text and original.
func FuzzRoundTrip(f *testing.F) {
	f.Add("mx.example.test", "env+1", "client.test", int64(1772600767), "Q1",
		"rfc822;Bob@example.net", "bob@example.net", "failed", "5.1.1", "mx.example.net", "smtp; 550 5.1.1 user unknown", int64(1772773567), int64(0),
		"Undeliverable: hi", "Your message could not be delivered.\n", []byte(original), false)
	f.Add("h", "", "", int64(0), "", "", "j\u00f6rg+x@example.net", "delayed", "4.4.1", "", "X-Mailroot; connect: refused", int64(1), int64(253402300799),
		"", "Gr\u00fc\u00dfe\r\nline two  \n", []byte("Subject: x\r\n"), true)
	f.Add("a;b", "+2B", "x", int64(-5), "q", "utf-8;a\\x{2B}", "sp ace@x", "relayed", "2.0.0", "[127.0.0.1]", "", int64(0), int64(0),
		"s", "", []byte{}, false)
	f.Add("\xff", "\x00", "\r\n", int64(7), "\t", "\n", "\xff\xfe", "\x01", "5", "", "", int64(0), int64(0),
		"\xff", "\xff\x00\r", []byte("\r\n--=_mailroot_x\r\n"), false)
	f.Fuzz(func(t *testing.T, rmta, envid, from string, arrival int64, qid,
		orcpt, final, action, status, remote, diag string, last, until int64,
		subject, text string, original []byte, headersOnly bool) {
		m := &Message{
			From: "MAILER-DAEMON@x.test", To: "s@x.test", Subject: subject, Date: fuzzTime(last), Text: text,
			Report: Report{
				ReportingMTA: rmta, OriginalEnvelopeID: envid, ReceivedFromMTA: from, ArrivalDate: fuzzTime(arrival), QueueID: qid,
				Recipients: []Recipient{{
					OriginalRecipient: orcpt, FinalRecipient: final, Action: action, Status: status,
					RemoteMTA: remote, DiagnosticCode: diag, LastAttemptDate: fuzzTime(last), WillRetryUntil: fuzzTime(until),
				}},
			},
			HeadersOnly: headersOnly,
		}
		if len(original) > 0 {
			m.Original = bytes.NewReader(original)
		}
		var buf bytes.Buffer
		err := Write(&buf, m)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("write: %v", err)
			}
			return
		}
		p, err := Parse(bytes.NewReader(buf.Bytes()))
		if err != nil {
			t.Fatalf("parse of a written report: %v\n%s", err, buf.Bytes())
		}
		if !fits(m.Report) {
			return
		}
		if d := reportDiff(cleaned(m.Report), p.Report); d != "" {
			t.Fatalf("report changed: %s", d)
		}
		if got, want := normText(p.Text), normText(text); got != want {
			t.Fatalf("text %q, want %q", got, want)
		}
		if got := p.Header.Get("Subject"); got != CleanText(subject) {
			t.Fatalf("subject %q, want %q", got, CleanText(subject))
		}
		wantType := ""
		if len(original) > 0 {
			wantType = TypeMessage
			if headersOnly {
				wantType = TypeHeaders
			}
		}
		if p.OriginalType != wantType || !bytes.Equal(p.Original, original) {
			t.Fatalf("original %s %q, want %s %q", p.OriginalType, p.Original, wantType, original)
		}
	})
}

// Parse never panics, and what it reads writes back as the same (cleaned)
// report.
func FuzzParse(f *testing.F) {
	var buf bytes.Buffer
	if err := Write(&buf, sampleMessage(original, false)); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add([]byte("Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\nFinal-Recipient: rfc822; a@b\r\nAction: failed\r\nStatus: 5.0.0\r\n--b--\r\n"))
	f.Add([]byte("Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; x\n folded\nArrival-Date: Wed, 04 Mar 2026 05:06:07 +0000\n\n\nFinal-Recipient: utf-8; a\\x{F6}@b\nAction: delayed\nStatus: 4.4.1\nWill-Retry-Until: Thu, 5 Mar 2026 05:06:07 GMT\n--b\nContent-Type: message/rfc822\n\nSubject: x\n--b--\n"))
	f.Add([]byte("Subject: not a report\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrNotReport) {
				t.Fatalf("error not ErrNotReport: %v", err)
			}
			return
		}
		if p.Report.ReportingMTA == "" || len(p.Report.Recipients) == 0 {
			t.Fatalf("parsed without Reporting-MTA or recipients: %+v", p.Report)
		}
		var buf bytes.Buffer
		m := &Message{From: "a@b", To: "c@d", Report: p.Report}
		if err := Write(&buf, m); err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("write: %v", err)
			}
			return
		}
		p2, err := Parse(&buf)
		if err != nil {
			t.Fatalf("re-parse: %v\n%s", err, buf.Bytes())
		}
		if !fits(p.Report) {
			return
		}
		if d := reportDiff(cleaned(p.Report), p2.Report); d != "" {
			t.Fatalf("report changed: %s", d)
		}
	})
}
