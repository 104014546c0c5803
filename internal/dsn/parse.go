package dsn

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
	"time"
)

// ErrNotReport is wrapped by Parse errors: the input is not a readable
// delivery status notification.
var ErrNotReport = errors.New("dsn: not a delivery status notification")

// MaxParseSize bounds what Parse reads of any one part.
const MaxParseSize = 64 << 20

// Parsed is a notification read by Parse.
type Parsed struct {
	// Header is the top-level header section.
	Header mail.Header
	// Text is the human-readable first part, transfer-decoded.
	Text string
	// Report holds the delivery-status fields.
	Report Report
	// OriginalType is the content type of the third part (TypeMessage or
	// TypeHeaders), empty when there is none.
	OriginalType string
	// Original is the third part's content.
	Original []byte
}

// Parse reads a multipart/report; report-type=delivery-status message
// (RFC 3464, RFC 6522). It accepts message/global-delivery-status and the
// RFC 6533 global variants of the other parts as well.
func Parse(r io.Reader) (*Parsed, error) {
	msg, err := mail.ReadMessage(bufio.NewReader(r))
	if err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrNotReport, err)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil {
		return nil, fmt.Errorf("%w: Content-Type: %v", ErrNotReport, err)
	}
	if mt != TypeReport || !strings.EqualFold(params["report-type"], "delivery-status") {
		return nil, fmt.Errorf("%w: Content-Type is %s; report-type=%s", ErrNotReport, mt, params["report-type"])
	}
	if params["boundary"] == "" {
		return nil, fmt.Errorf("%w: no boundary", ErrNotReport)
	}
	p := &Parsed{Header: msg.Header}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	var haveStatus bool
	for i := 0; ; i++ {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: part %d: %v", ErrNotReport, i+1, err)
		}
		data, err := io.ReadAll(io.LimitReader(part, MaxParseSize+1))
		if err != nil {
			return nil, fmt.Errorf("%w: part %d: %v", ErrNotReport, i+1, err)
		}
		if len(data) > MaxParseSize {
			return nil, fmt.Errorf("%w: part %d is larger than %d bytes", ErrNotReport, i+1, MaxParseSize)
		}
		ct := "text/plain"
		if v := part.Header.Get("Content-Type"); v != "" {
			if t, _, err := mime.ParseMediaType(v); err == nil {
				ct = t
			}
		}
		switch {
		case ct == TypeDeliveryStatus || ct == "message/global-delivery-status":
			if haveStatus {
				return nil, fmt.Errorf("%w: two delivery-status parts", ErrNotReport)
			}
			if p.Report, err = parseStatus(data); err != nil {
				return nil, err
			}
			haveStatus = true
		case haveStatus && (ct == TypeMessage || ct == TypeHeaders || ct == "message/global" || ct == "message/global-headers"):
			p.OriginalType, p.Original = ct, data
		case i == 0:
			p.Text = string(data)
		}
	}
	if !haveStatus {
		return nil, fmt.Errorf("%w: no %s part", ErrNotReport, TypeDeliveryStatus)
	}
	return p, nil
}

// parseStatus reads the fields of a delivery-status part: the per-message
// block, then one block per recipient, separated by blank lines.
func parseStatus(data []byte) (Report, error) {
	var r Report
	blocks, err := statusBlocks(data)
	if err != nil {
		return r, err
	}
	if len(blocks) < 2 {
		return r, fmt.Errorf("%w: no per-recipient fields", ErrNotReport)
	}
	for _, f := range blocks[0] {
		switch f.name {
		case "reporting-mta":
			r.ReportingMTA = typed(f.value)
		case "x-mailroot-queue-id":
			r.QueueID = f.value
		case "original-envelope-id":
			r.OriginalEnvelopeID = f.value
		case "received-from-mta":
			r.ReceivedFromMTA = typed(f.value)
		case "arrival-date":
			if r.ArrivalDate, err = parseDate(f); err != nil {
				return r, err
			}
		}
	}
	if r.ReportingMTA == "" {
		return r, fmt.Errorf("%w: no Reporting-MTA", ErrNotReport)
	}
	for _, b := range blocks[1:] {
		var rc Recipient
		for _, f := range b {
			switch f.name {
			case "original-recipient":
				rc.OriginalRecipient = f.value
			case "final-recipient":
				typ, addr, _ := strings.Cut(f.value, ";")
				addr = strings.TrimSpace(addr)
				if strings.EqualFold(strings.TrimSpace(typ), "utf-8") {
					var ok bool
					if addr, ok = DecodeUTF8Addr(addr); !ok {
						return r, fmt.Errorf("%w: bad utf-8 address in Final-Recipient %q", ErrNotReport, f.value)
					}
				}
				rc.FinalRecipient = addr
			case "action":
				rc.Action = f.value
			case "status":
				rc.Status = f.value
			case "remote-mta":
				rc.RemoteMTA = typed(f.value)
			case "diagnostic-code":
				rc.DiagnosticCode = f.value
			case "last-attempt-date":
				if rc.LastAttemptDate, err = parseDate(f); err != nil {
					return r, err
				}
			case "will-retry-until":
				if rc.WillRetryUntil, err = parseDate(f); err != nil {
					return r, err
				}
			}
		}
		if rc.FinalRecipient == "" || rc.Action == "" || rc.Status == "" {
			return r, fmt.Errorf("%w: a recipient block lacks Final-Recipient, Action or Status", ErrNotReport)
		}
		r.Recipients = append(r.Recipients, rc)
	}
	return r, nil
}

// field is one "Name: value" line, unfolded; name is lower-case.
type field struct{ name, value string }

// statusBlocks splits a delivery-status body into blocks of fields.
func statusBlocks(data []byte) ([][]field, error) {
	data = bytes.ReplaceAll(data, []byte("\r\n"), []byte("\n"))
	var blocks [][]field
	var cur []field
	for _, line := range strings.Split(string(data), "\n") {
		switch {
		case strings.TrimSpace(line) == "":
			if len(cur) > 0 {
				blocks = append(blocks, cur)
				cur = nil
			}
		case line[0] == ' ' || line[0] == '\t':
			if len(cur) == 0 {
				return nil, fmt.Errorf("%w: continuation line without a field", ErrNotReport)
			}
			cur[len(cur)-1].value = strings.TrimSpace(cur[len(cur)-1].value + line)
		default:
			name, value, ok := strings.Cut(line, ":")
			if !ok || strings.TrimSpace(name) == "" {
				return nil, fmt.Errorf("%w: bad field line %q", ErrNotReport, line)
			}
			cur = append(cur, field{strings.ToLower(strings.TrimSpace(name)), strings.TrimSpace(value)})
		}
	}
	if len(cur) > 0 {
		blocks = append(blocks, cur)
	}
	return blocks, nil
}

// typed returns the value after "type;" (e.g. the host of "dns; host").
func typed(v string) string {
	if _, rest, ok := strings.Cut(v, ";"); ok {
		return strings.TrimSpace(rest)
	}
	return v
}

func parseDate(f field) (time.Time, error) {
	t, err := mail.ParseDate(f.value)
	if err != nil {
		return t, fmt.Errorf("%w: %s %q: %v", ErrNotReport, f.name, f.value, err)
	}
	return t, nil
}
