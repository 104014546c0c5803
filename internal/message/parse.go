// Package message turns a message submitted on this host into an envelope
// and the message to queue: the parser shared by the Pickup directory
// (pickupwatcher) and `mailroot sendmail`. See Parse for the format.
package message

import (
	"bytes"
	"errors"
	"fmt"
	"net/mail"
	"strings"
	"time"

	"github.com/mailroot/mailroot/internal/envelope"
)

// Kinds of bad pickup files. Every error Parse returns wraps exactly one
// of them, with a text saying where and why; all of them are permanent:
// the file goes to Badmail. Their texts keep the "pickupwatcher:" prefix
// they had before the parser was its own package: they are the Reason of
// Pickup's .BDR files.
var (
	// ErrTooBig: the message is larger than the configured maximum.
	ErrTooBig = errors.New("pickupwatcher: message too big")
	// ErrBinary: the file holds NUL bytes, so it is not a text message.
	ErrBinary = errors.New("pickupwatcher: binary data")
	// ErrUnterminated: the header section does not end with an empty line.
	ErrUnterminated = errors.New("pickupwatcher: header section not terminated")
	// ErrBadHeader: a line of the header section is not a header field.
	ErrBadHeader = errors.New("pickupwatcher: unparsable header")
	// ErrBadAddress: an envelope line or address header does not parse.
	ErrBadAddress = errors.New("pickupwatcher: bad address")
	// ErrNoSender: neither an X-Sender line nor a From: header.
	ErrNoSender = errors.New("pickupwatcher: no sender")
	// ErrNoRecipient: neither X-Receiver lines nor To/Cc/Bcc addresses.
	ErrNoRecipient = errors.New("pickupwatcher: no recipient")
	// ErrTooManyRecipients: more than MaxRecipients recipients.
	ErrTooManyRecipients = errors.New("pickupwatcher: too many recipients")
)

// MaxRecipients bounds the recipients of one pickup file: all of them
// travel in the headers of one NATS message.
const MaxRecipients = 1000

// Options tell Parse what it cannot learn from the file.
type Options struct {
	// DefaultDomain qualifies addresses without a domain ("root" becomes
	// "root@<DefaultDomain>"); empty means such addresses are errors.
	DefaultDomain string
	// Hostname names this server in the Received: and Message-ID: headers.
	Hostname string
	// QueueID is the queue id the message will get.
	QueueID string
	// Now is the time of pickup (time.Now when zero).
	Now time.Time
	// MaxSize is the largest message accepted, counted after the envelope
	// lines and Bcc: are removed and before Mailroot adds its headers;
	// 0 means no limit.
	MaxSize int64

	// The fields below serve other local submitters (mailroot sendmail);
	// the pickup directory leaves them empty.

	// Via names the source in the Received: header ("from <Via>"),
	// default "pickup"; Protocol its "with" clause, default "local-file".
	Via, Protocol string
	// Sender, when not empty, is the envelope sender ("<>" for the null
	// sender) instead of X-Sender or From:.
	Sender string
	// Rcpts, when not empty, are envelope recipients given outside the
	// message. They are the only recipients unless HeaderRcpts is set,
	// which adds those of To:, Cc: and Bcc: (sendmail -t).
	Rcpts       []string
	HeaderRcpts bool
	// AddFrom, when not empty, is the From: header value added to a
	// message that has none.
	AddFrom string
}

// Parsed is a pickup file turned into an envelope and a message.
type Parsed struct {
	// From is the envelope sender ("" for "X-Sender: <>").
	From string
	// Rcpts are the envelope recipients, deduplicated, in file order.
	Rcpts []string
	// Message is the message to queue: CRLF line ends only, the envelope
	// lines and Bcc: removed, a Received: header prepended and Date: and
	// Message-ID: added when the file had none.
	Message []byte
	// FromXHeaders is true when the envelope came from X-Sender /
	// X-Receiver lines, false when it came from From/To/Cc/Bcc.
	FromXHeaders bool
	// EightBit is true when the message has bytes above 127 (BODY=8BITMIME).
	EightBit bool
	// SMTPUTF8 is true when an envelope address is not ASCII.
	SMTPUTF8 bool
	// Hops is the number of Received: header fields, Mailroot's included.
	Hops int
}

var crlf = []byte("\r\n")

// field is one header field of the file: its name and its raw lines.
type field struct {
	name  string   // as written
	raw   []byte   // all its lines, CRLF-terminated
	value string   // unfolded value without the name and colon
	more  []string // continuation lines while splitting
	line  int      // 1-based line number in the file
}

// Parse turns the bytes of a pickup file into an envelope and the message
// to queue. The file is an RFC 5322 message with any line ends (bare LF
// and bare CR become CRLF). As in IIS, it may start with envelope lines
//
//	x-sender: <sender@example.com>
//	x-receiver: <rcpt1@example.org>
//	x-receiver: <rcpt2@example.net>
//
// (names in any case), which are the envelope and are removed; without
// them the sender is the first mailbox of From: and the recipients are the
// addresses of To:, Cc: and Bcc:. Bcc: is always removed. Errors wrap one
// of the Err* kinds of this package and say exactly why.
func Parse(data []byte, o Options) (*Parsed, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: the file is empty", ErrUnterminated)
	}
	if i := bytes.IndexByte(data, 0); i >= 0 {
		return nil, fmt.Errorf("%w: NUL byte at offset %d, this is not a text message", ErrBinary, i)
	}
	msg := normalize(data)
	lines := splitLines(msg)

	p := &Parsed{}
	// The IIS envelope block: X-Sender / X-Receiver lines at the very top.
	// Without an X-Receiver it is no envelope (some mail programs write an
	// ordinary X-Sender header): those lines then stay in the message.
	var xSender, xRcpts []field
	n := 0
	for ; n < len(lines); n++ {
		name, value, ok := cutField(lines[n])
		if !ok {
			break
		}
		f := field{name: name, value: value, line: n + 1}
		if strings.EqualFold(name, "x-sender") {
			xSender = append(xSender, f)
		} else if strings.EqualFold(name, "x-receiver") {
			xRcpts = append(xRcpts, f)
		} else {
			break
		}
	}
	if len(xRcpts) == 0 {
		n, xSender = 0, nil
	} else {
		p.FromXHeaders = true
		lines = lines[n:]
	}
	if len(xSender) > 1 {
		return nil, fmt.Errorf("%w: the file has %d X-Sender lines, want one", ErrBadAddress, len(xSender))
	}

	fields, body, err := splitHeader(lines, n)
	if err != nil {
		return nil, err
	}

	var from, to, cc, bcc []field
	hasDate, hasMsgID := false, false
	kept := make([]field, 0, len(fields))
	for _, f := range fields {
		switch strings.ToLower(f.name) {
		case "from":
			from = append(from, f)
		case "to":
			to = append(to, f)
		case "cc":
			cc = append(cc, f)
		case "bcc":
			bcc = append(bcc, f)
			continue // never transmitted
		case "date":
			hasDate = true
		case "message-id":
			hasMsgID = true
		}
		kept = append(kept, f)
	}

	// Envelope sender.
	switch {
	case o.Sender == "<>":
		p.From = ""
	case o.Sender != "":
		addrs, err := addressList(o.Sender, o.DefaultDomain, "sender", 0)
		if err != nil {
			return nil, err
		}
		if len(addrs) != 1 {
			return nil, fmt.Errorf("%w: sender %q must be exactly one address", ErrBadAddress, clip(o.Sender))
		}
		p.From = addrs[0]
	case len(xSender) == 1:
		v := xSender[0].value
		if v == "<>" {
			p.From = ""
			break
		}
		addrs, err := addressList(v, o.DefaultDomain, "X-Sender", xSender[0].line)
		if err != nil {
			return nil, err
		}
		if len(addrs) != 1 {
			return nil, fmt.Errorf("%w: X-Sender %q must hold exactly one address", ErrBadAddress, clip(v))
		}
		p.From = addrs[0]
	case len(from) > 0:
		addrs, err := addressList(from[0].value, o.DefaultDomain, "From:", from[0].line)
		if err != nil {
			return nil, err
		}
		if len(addrs) == 0 {
			return nil, fmt.Errorf("%w: From: on line %d holds no address", ErrNoSender, from[0].line)
		}
		p.From = addrs[0]
	default:
		return nil, fmt.Errorf("%w: no X-Sender line and no From: header", ErrNoSender)
	}

	// Envelope recipients.
	seen := map[string]bool{}
	add := func(addrs []string) {
		for _, a := range addrs {
			local, domain, _ := envelope.Split(a)
			k := local + "@" + envelope.NormalizeDomain(domain)
			if !seen[k] {
				seen[k] = true
				p.Rcpts = append(p.Rcpts, a)
			}
		}
	}
	for _, r := range o.Rcpts {
		addrs, err := addressList(r, o.DefaultDomain, "recipient", 0)
		if err != nil {
			return nil, err
		}
		add(addrs)
	}
	switch {
	case len(o.Rcpts) > 0 && !o.HeaderRcpts:
		// The recipients were given: the headers are only text.
	case p.FromXHeaders:
		for _, f := range xRcpts {
			addrs, err := addressList(f.value, o.DefaultDomain, "X-Receiver", f.line)
			if err != nil {
				return nil, err
			}
			add(addrs)
		}
	default:
		for _, group := range [][]field{to, cc, bcc} {
			for _, f := range group {
				addrs, err := addressList(f.value, o.DefaultDomain, f.name+":", f.line)
				if err != nil {
					return nil, err
				}
				add(addrs)
			}
		}
	}
	if len(p.Rcpts) == 0 {
		if p.FromXHeaders {
			return nil, fmt.Errorf("%w: the X-Receiver lines hold no address", ErrNoRecipient)
		}
		return nil, fmt.Errorf("%w: no X-Receiver line and no address in To:, Cc: or Bcc:", ErrNoRecipient)
	}
	if len(p.Rcpts) > MaxRecipients {
		return nil, fmt.Errorf("%w: %d recipients, at most %d", ErrTooManyRecipients, len(p.Rcpts), MaxRecipients)
	}
	for _, a := range append([]string{p.From}, p.Rcpts...) {
		if !isASCII(a) {
			p.SMTPUTF8 = true
		}
	}

	// The message as the file gave it, minus the envelope and Bcc.
	size := len(body) + 2
	for _, f := range kept {
		size += len(f.raw)
	}
	if o.MaxSize > 0 && int64(size) > o.MaxSize {
		return nil, fmt.Errorf("%w: the message is %d bytes, over the limit of %d bytes", ErrTooBig, size, o.MaxSize)
	}

	now := o.Now
	if now.IsZero() {
		now = time.Now()
	}
	host := o.Hostname
	if host == "" {
		host = "localhost"
	}
	date := now.Format(time.RFC1123Z)
	var b bytes.Buffer
	b.Grow(size + 256)
	via, proto := o.Via, o.Protocol
	if via == "" {
		via = "pickup"
	}
	if proto == "" {
		proto = "local-file"
	}
	fmt.Fprintf(&b, "Received: from %s by %s (Mailroot)\r\n\twith %s id %s;\r\n\t%s\r\n", via, host, proto, o.QueueID, date)
	p.Hops = 1
	for _, f := range kept {
		if strings.EqualFold(f.name, "received") {
			p.Hops++
		}
		b.Write(f.raw)
	}
	if len(from) == 0 && o.AddFrom != "" {
		fmt.Fprintf(&b, "From: %s\r\n", o.AddFrom)
	}
	if !hasDate {
		fmt.Fprintf(&b, "Date: %s\r\n", date)
	}
	if !hasMsgID {
		fmt.Fprintf(&b, "Message-ID: <%s@%s>\r\n", o.QueueID, host)
	}
	b.Write(crlf)
	b.Write(body)
	p.Message = b.Bytes()
	p.EightBit = !isASCII(string(p.Message))
	return p, nil
}

// normalize turns every line end (CRLF, bare LF, bare CR) into CRLF and
// makes sure the message ends with one.
func normalize(data []byte) []byte {
	out := make([]byte, 0, len(data)+len(data)/16+2)
	for i := 0; i < len(data); i++ {
		switch c := data[i]; c {
		case '\r':
			out = append(out, '\r', '\n')
			if i+1 < len(data) && data[i+1] == '\n' {
				i++
			}
		case '\n':
			out = append(out, '\r', '\n')
		default:
			out = append(out, c)
		}
	}
	if !bytes.HasSuffix(out, crlf) {
		out = append(out, crlf...)
	}
	return out
}

// splitLines splits normalised data into CRLF-terminated lines.
func splitLines(msg []byte) [][]byte {
	lines := make([][]byte, 0, bytes.Count(msg, crlf))
	for len(msg) > 0 {
		i := bytes.Index(msg, crlf)
		lines = append(lines, msg[:i+2])
		msg = msg[i+2:]
	}
	return lines
}

// cutField splits a header line "Name: value" into name and value; ok is
// false when the line does not start with a field name and a colon.
func cutField(line []byte) (name, value string, ok bool) {
	i := bytes.IndexByte(line, ':')
	if i <= 0 {
		return "", "", false
	}
	for _, c := range line[:i] {
		if c <= ' ' || c >= 0x7f {
			return "", "", false
		}
	}
	return string(line[:i]), strings.TrimSpace(string(bytes.TrimSuffix(line[i+1:], crlf))), true
}

// splitHeader parses the header section of lines into fields and returns
// the body after the empty line. first is the number of envelope lines
// before lines, for line numbers in errors.
func splitHeader(lines [][]byte, first int) ([]field, []byte, error) {
	if len(lines) == 0 {
		return nil, nil, fmt.Errorf("%w: nothing follows the X-Sender/X-Receiver lines", ErrUnterminated)
	}
	var fields []field
	for i, line := range lines {
		num := first + i + 1
		if len(line) == 2 { // the empty line
			for j := range fields {
				if f := &fields[j]; len(f.more) > 0 {
					f.value = strings.Join(append([]string{f.value}, f.more...), " ")
					f.more = nil
				}
			}
			return fields, bytes.Join(lines[i+1:], nil), nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			if len(fields) == 0 {
				return nil, nil, fmt.Errorf("%w: line %d is a continuation line with no header field before it", ErrBadHeader, num)
			}
			f := &fields[len(fields)-1]
			f.raw = append(f.raw, line...)
			f.more = append(f.more, strings.TrimSpace(string(line)))
			continue
		}
		name, value, ok := cutField(line)
		if !ok {
			return nil, nil, fmt.Errorf("%w: line %d is not a header field (\"Name: value\"): %q", ErrBadHeader, num, clip(strings.TrimSuffix(string(line), "\r\n")))
		}
		fields = append(fields, field{name: name, raw: append([]byte(nil), line...), value: value, line: num})
	}
	return nil, nil, fmt.Errorf("%w: no empty line between the header and the body (truncated file?)", ErrUnterminated)
}

// addressList parses an address list header value (or envelope line) into
// addr-specs, qualifying addresses without a domain with def.
func addressList(v, def, what string, line int) ([]string, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return nil, nil
	}
	list, err := mail.ParseAddressList(v)
	if err != nil {
		if q, ok := qualify(v, def); ok {
			list, err = mail.ParseAddressList(q)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s on line %d: %q: %v", ErrBadAddress, what, line, clip(v), err)
	}
	out := make([]string, 0, len(list))
	for _, a := range list {
		// Address.String quotes a local part that needs it.
		s := (&mail.Address{Address: a.Address}).String()
		s = strings.TrimSuffix(strings.TrimPrefix(s, "<"), ">")
		if err := envelope.CheckAddress(s); err != nil {
			return nil, fmt.Errorf("%w: %s on line %d: %v", ErrBadAddress, what, line, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// qualify appends "@def" to the domain-less addresses of a simple list
// ("root", "Root <root>", "a, b@x"). It gives up (ok false) on anything
// with quotes, where commas cannot be split naively.
func qualify(v, def string) (string, bool) {
	if def == "" || strings.ContainsAny(v, `"\()`) {
		return "", false
	}
	parts := strings.Split(v, ",")
	changed := false
	for i, p := range parts {
		p = strings.TrimSpace(p)
		switch {
		case p == "" || strings.Contains(p, "@"):
		case strings.HasSuffix(p, ">") && strings.Contains(p, "<"):
			lt := strings.LastIndex(p, "<")
			if inner := p[lt+1 : len(p)-1]; inner != "" {
				p = p[:lt+1] + inner + "@" + def + ">"
				changed = true
			}
		case !strings.ContainsAny(p, " \t<>:;"):
			p += "@" + def
			changed = true
		}
		parts[i] = p
	}
	return strings.Join(parts, ", "), changed
}

// clip shortens s for an error message.
func clip(s string) string {
	const max = 80
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
