// Package dsn writes and reads delivery status notifications: the
// "multipart/report; report-type=delivery-status" messages of RFC 3464
// (RFC 6522 for multipart/report) that tell a sender what became of a
// message — failed, delayed, delivered or relayed. It is where non-delivery
// reports (NDRs) and delay notices are made (docs/DESIGN.md §4, "Reports to senders").
//
// A notification has three parts:
//
//  1. text/plain: what happened, why, and what to do, for a human;
//  2. message/delivery-status: the per-message fields (Reporting-MTA,
//     Original-Envelope-Id, Received-From-MTA, Arrival-Date) and one block
//     per recipient (Original-Recipient, Final-Recipient, Action, Status,
//     Remote-MTA, Diagnostic-Code, Last-Attempt-Date, Will-Retry-Until);
//  3. the original message (message/rfc822) or only its header section
//     (text/rfc822-headers), as the sender asked with RET= (RFC 3461).
//
// Write renders a Message; Parse reads one back (tests, fuzzing, and
// anyone who needs to read reports). Values are cleaned on the way out so
// that a report always parses, and Parse returns exactly the cleaned values:
// Parse(Write(m)) == Clean(m) is what the round-trip fuzz test checks.
//
// The package is a codec only: it publishes nothing. Notice describes a
// notification about a queued envelope; internal/notify builds the report
// from it and publishes it as new mail on mail.in from the null sender.
package dsn

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime/quotedprintable"
	"strings"
	"time"
	"unicode/utf8"
)

// Action values of the Action field (RFC 3464 §2.3.3).
const (
	ActionFailed    = "failed"
	ActionDelayed   = "delayed"
	ActionDelivered = "delivered"
	ActionRelayed   = "relayed"
	ActionExpanded  = "expanded"
)

// Content types of the parts.
const (
	TypeReport         = "multipart/report"
	TypeDeliveryStatus = "message/delivery-status"
	TypeMessage        = "message/rfc822"
	TypeHeaders        = "text/rfc822-headers"
)

// maxField is the longest field value written; longer ones are cut (the
// whole line must stay under RFC 5322's 998 octets).
const maxField = 900

// dateLayout is the RFC 5322 date-time used for every date field.
const dateLayout = "Mon, 02 Jan 2006 15:04:05 -0700"

// Report is the machine-readable message/delivery-status part.
type Report struct {
	// ReportingMTA is the host name of the MTA writing the report
	// ("Reporting-MTA: dns; <name>"). Required.
	ReportingMTA string
	// OriginalEnvelopeID is the sender's ENVID, decoded from xtext; empty
	// when none was given (the field is then left out).
	OriginalEnvelopeID string
	// ReceivedFromMTA names the host the message came from
	// ("Received-From-MTA: dns; <name>"), or is empty.
	ReceivedFromMTA string
	// ArrivalDate is when the message was accepted, zero for none.
	ArrivalDate time.Time
	// QueueID is Mailroot's queue id of the original message, written as
	// the extension field X-Mailroot-Queue-ID.
	QueueID string
	// Recipients has one entry per recipient the report is about. At
	// least one is required.
	Recipients []Recipient
}

// Recipient is one per-recipient block of a report.
type Recipient struct {
	// OriginalRecipient is the sender's ORCPT as "type;address" with the
	// address decoded from xtext, or empty.
	OriginalRecipient string
	// FinalRecipient is the address the report is about. It is written as
	// "rfc822; <addr>" when it is printable ASCII, else as RFC 6533
	// "utf-8; <utf-8-addr-xtext>"; Parse decodes either. Required.
	FinalRecipient string
	// Action is one of the Action* constants. Required.
	Action string
	// Status is the RFC 3463 enhanced status code, e.g. "5.1.1". Required.
	Status string
	// RemoteMTA is the host name of the server that gave the answer
	// ("Remote-MTA: dns; <name>"), or empty.
	RemoteMTA string
	// DiagnosticCode is "type; text", e.g. "smtp; 550 5.1.1 user unknown",
	// or empty.
	DiagnosticCode string
	// LastAttemptDate is the time of the last delivery attempt, or zero.
	LastAttemptDate time.Time
	// WillRetryUntil is, for delayed recipients, when the MTA gives up; zero
	// leaves the field out.
	WillRetryUntil time.Time
}

// Message is a whole notification.
type Message struct {
	// From is the address of the From: header (e.g. MAILER-DAEMON@host);
	// FromName its display name.
	From, FromName string
	// To is the address the notification goes to (the original sender).
	To string
	// Subject is the Subject: header.
	Subject string
	// Date is the Date: header.
	Date time.Time
	// MessageID is the Message-ID: without angle brackets.
	MessageID string
	// Text is the human-readable first part (UTF-8, any line ends).
	Text string
	// Report is the delivery-status part.
	Report Report
	// Original is the returned message or, when HeadersOnly, its header
	// section; nil returns nothing (a two-part report).
	Original io.Reader
	// HeadersOnly makes the third part text/rfc822-headers.
	HeadersOnly bool
	// Boundary is the MIME boundary; empty picks a random one.
	Boundary string
}

// ErrInvalid is wrapped by Write when a required value is missing.
var ErrInvalid = errors.New("dsn: invalid report")

// Write renders m as an RFC 5322 message with CRLF line ends. The original
// message is streamed from m.Original, never held in memory whole.
func Write(w io.Writer, m *Message) error {
	if err := m.Report.check(); err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, 32<<10)
	boundary := m.Boundary
	if boundary == "" {
		var b [18]byte
		_, _ = rand.Read(b[:])
		boundary = "=_mailroot_" + hex.EncodeToString(b[:])
	}
	hdr := func(k, v string) { fmt.Fprintf(bw, "%s: %s\r\n", k, v) }
	from := "<" + CleanAddress(m.From) + ">"
	if n := CleanText(m.FromName); n != "" {
		from = n + " " + from
	}
	hdr("From", from)
	hdr("To", "<"+CleanAddress(m.To)+">")
	hdr("Subject", CleanText(m.Subject))
	date := m.Date
	if date.IsZero() {
		date = time.Now()
	}
	hdr("Date", date.Format(dateLayout))
	if id := CleanText(m.MessageID); id != "" {
		hdr("Message-ID", "<"+id+">")
	}
	hdr("Auto-Submitted", "auto-replied")
	hdr("MIME-Version", "1.0")
	fmt.Fprintf(bw, "Content-Type: %s; report-type=delivery-status;\r\n\tboundary=\"%s\"\r\n\r\n", TypeReport, boundary)
	bw.WriteString("This is a MIME-encapsulated delivery status notification.\r\n")

	// Part 1: for humans.
	fmt.Fprintf(bw, "\r\n--%s\r\n", boundary)
	text := crlf(m.Text)
	if isASCII(text) && maxLine(text) <= maxField {
		bw.WriteString("Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n")
		bw.WriteString(text)
	} else {
		bw.WriteString("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n")
		qp := quotedprintable.NewWriter(bw)
		if _, err := qp.Write([]byte(strings.ToValidUTF8(text, "\uFFFD"))); err != nil {
			return err
		}
		if err := qp.Close(); err != nil {
			return err
		}
	}

	// Part 2: for machines.
	fmt.Fprintf(bw, "\r\n--%s\r\nContent-Type: %s\r\n\r\n", boundary, TypeDeliveryStatus)
	m.Report.write(bw)

	// Part 3: what was sent.
	if m.Original != nil {
		typ := TypeMessage
		if m.HeadersOnly {
			typ = TypeHeaders
		}
		fmt.Fprintf(bw, "\r\n--%s\r\nContent-Type: %s\r\n\r\n", boundary, typ)
		if _, err := io.Copy(bw, m.Original); err != nil {
			return fmt.Errorf("dsn: copy original message: %w", err)
		}
	}
	fmt.Fprintf(bw, "\r\n--%s--\r\n", boundary)
	return bw.Flush()
}

func (r *Report) check() error {
	if CleanText(r.ReportingMTA) == "" {
		return fmt.Errorf("%w: no Reporting-MTA", ErrInvalid)
	}
	if len(r.Recipients) == 0 {
		return fmt.Errorf("%w: no recipients", ErrInvalid)
	}
	for i, rc := range r.Recipients {
		if rc.FinalRecipient == "" || CleanText(rc.Action) == "" || CleanText(rc.Status) == "" {
			return fmt.Errorf("%w: recipient %d needs Final-Recipient, Action and Status", ErrInvalid, i)
		}
	}
	return nil
}

// write renders the delivery-status fields: the per-message block, then a
// blank line before each per-recipient block.
func (r *Report) write(w *bufio.Writer) {
	field := func(k, v string) {
		if v = CleanText(v); v != "" {
			fmt.Fprintf(w, "%s: %s\r\n", k, v)
		}
	}
	date := func(k string, t time.Time) {
		if !t.IsZero() {
			fmt.Fprintf(w, "%s: %s\r\n", k, t.Format(dateLayout))
		}
	}
	field("Reporting-MTA", "dns; "+CleanText(r.ReportingMTA))
	field("X-Mailroot-Queue-ID", r.QueueID)
	field("Original-Envelope-Id", r.OriginalEnvelopeID)
	if v := CleanText(r.ReceivedFromMTA); v != "" {
		field("Received-From-MTA", "dns; "+v)
	}
	date("Arrival-Date", r.ArrivalDate)
	for _, rc := range r.Recipients {
		w.WriteString("\r\n")
		field("Original-Recipient", rc.OriginalRecipient)
		field("Final-Recipient", formatAddress(rc.FinalRecipient))
		field("Action", rc.Action)
		field("Status", rc.Status)
		if v := CleanText(rc.RemoteMTA); v != "" {
			field("Remote-MTA", "dns; "+v)
		}
		field("Diagnostic-Code", rc.DiagnosticCode)
		date("Last-Attempt-Date", rc.LastAttemptDate)
		date("Will-Retry-Until", rc.WillRetryUntil)
	}
}

// formatAddress renders a Final-Recipient value (RFC 3464 §2.3.2,
// RFC 6533 §3).
func formatAddress(addr string) string {
	if isAtext(addr) {
		return "rfc822; " + addr
	}
	v := "utf-8; " + EncodeUTF8Addr(addr)
	if len(v) > maxField {
		// Cut where CleanText would, but never inside an escape.
		v = v[:maxField]
		if i := strings.LastIndex(v, `\`); i >= 0 && !strings.Contains(v[i:], "}") {
			v = v[:i]
		}
	}
	return v
}

// isAtext reports whether s is non-empty printable ASCII without spaces,
// so it can stand in a field as it is.
func isAtext(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// CleanText makes s safe as a field value: control characters become
// spaces, anything outside printable ASCII becomes '?', surrounding spaces
// are trimmed and the result is cut to 900 octets.
func CleanText(s string) string {
	b := []byte(s)
	out := b[:0]
	for i := 0; i < len(b); {
		c := b[i]
		switch {
		case c >= utf8.RuneSelf:
			_, n := utf8.DecodeRune(b[i:])
			out = append(out, '?')
			i += n
			continue
		case c < ' ' || c == 0x7f:
			out = append(out, ' ')
		default:
			out = append(out, c)
		}
		i++
	}
	v := strings.TrimSpace(string(out))
	if len(v) > maxField {
		v = strings.TrimSpace(v[:maxField])
	}
	return v
}

// CleanAddress makes an address safe inside <...> in a header: control
// characters and angle brackets are dropped, UTF-8 is kept (RFC 6532).
func CleanAddress(s string) string {
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f || r == '<' || r == '>' || r == utf8.RuneError {
			return -1
		}
		return r
	}, s)
}

// crlf normalises line ends to CRLF and ends the text with one.
func crlf(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	s = strings.TrimRight(s, "\n") + "\n"
	return strings.ReplaceAll(s, "\n", "\r\n")
}

// maxLine is the length of the longest line of s.
func maxLine(s string) int {
	n := 0
	for _, l := range strings.Split(s, "\n") {
		n = max(n, len(l))
	}
	return n
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
