package authcheck

import (
	"bytes"
	"errors"
	"net/mail"
	"strings"

	"github.com/emersion/go-msgauth/authres"

	"github.com/mailroot/mailroot/internal/envelope"
)

// Errors of FromDomains.
var (
	ErrNoFrom     = errors.New("authcheck: no From header")
	ErrFromSyntax = errors.New("authcheck: From has an address without a domain")
)

// HeaderName is the header field Mailroot adds.
const HeaderName = "Authentication-Results"

// field is one header field of a message: its name and the bytes
// [start, end) it takes, its line ends included.
type field struct {
	name       string
	start, end int
}

// fields lists the header fields of msg, up to the blank line that ends
// the header section (or the end of msg) and the offset where the body
// starts. A line that is neither a field nor a continuation (no colon)
// is kept as a field without a name, so that nothing is lost.
func fields(msg []byte) (out []field, bodyAt int) {
	i := 0
	for i < len(msg) {
		end := lineEnd(msg, i)
		line := msg[i:end]
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			return out, end
		}
		if (line[0] == ' ' || line[0] == '\t') && len(out) > 0 {
			out[len(out)-1].end = end
			i = end
			continue
		}
		name := ""
		if c := bytes.IndexByte(line, ':'); c > 0 {
			name = string(bytes.TrimRight(line[:c], " \t"))
		}
		out = append(out, field{name: name, start: i, end: end})
		i = end
	}
	return out, len(msg)
}

// lineEnd is the offset just past the line starting at i (its LF, or the
// end of msg).
func lineEnd(msg []byte, i int) int {
	if n := bytes.IndexByte(msg[i:], '\n'); n >= 0 {
		return i + n + 1
	}
	return len(msg)
}

// value is the unfolded value of a field.
func value(msg []byte, f field) string {
	raw := msg[f.start:f.end]
	if c := bytes.IndexByte(raw, ':'); c >= 0 {
		raw = raw[c+1:]
	}
	v := strings.NewReplacer("\r\n", "", "\n", "", "\r", "").Replace(string(raw))
	return strings.TrimSpace(v)
}

// HeaderSection returns the header section of msg, its final blank line
// included when there is one.
func HeaderSection(msg []byte) []byte {
	_, at := fields(msg)
	return msg[:at]
}

// FromDomains returns the domains of the RFC5322.From of a message's
// header section, lower case, each once, in order. RFC 7489 §6.6.1 wants
// one From with one domain; a message with more (several From fields, or
// addresses of several domains) is checked against each, so that a
// second From cannot hide a failing one.
func FromDomains(header []byte) ([]string, error) {
	fs, _ := fields(header)
	var out []string
	seen := func(d string) bool {
		for _, x := range out {
			if x == d {
				return true
			}
		}
		return false
	}
	for _, f := range fs {
		if !strings.EqualFold(f.name, "From") {
			continue
		}
		v := value(header, f)
		var domains []string
		if list, err := mail.ParseAddressList(v); err == nil {
			for _, a := range list {
				domains = append(domains, domainOf(a.Address))
			}
		} else {
			// Not RFC 5322 (raw UTF-8, a stray character): the domain of
			// the last address-looking word, as a lenient reader sees it.
			domains = append(domains, lenientDomain(v))
		}
		for _, d := range domains {
			if d == "" {
				return nil, ErrFromSyntax
			}
			if !seen(d) {
				out = append(out, d)
			}
		}
	}
	if len(out) == 0 {
		return nil, ErrNoFrom
	}
	return out, nil
}

func domainOf(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return ""
	}
	return envelope.NormalizeDomain(addr[at+1:])
}

// lenientDomain finds the domain after the last "@" of s, up to the
// first character that cannot be in a domain name.
func lenientDomain(s string) string {
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return ""
	}
	d := s[at+1:]
	if end := strings.IndexAny(d, "> \t,;()<\"[]"); end >= 0 {
		d = d[:end]
	}
	return envelope.NormalizeDomain(d)
}

// StripOwn returns msg without the Authentication-Results fields of its
// header section that claim authservID (RFC 8601 §5: such a field from
// outside is forged), and how many it removed. msg itself is returned
// when there is none.
func StripOwn(msg []byte, authservID string) ([]byte, int) {
	fs, _ := fields(msg)
	var out []byte
	removed, kept := 0, 0
	for _, f := range fs {
		if !strings.EqualFold(f.name, HeaderName) || !strings.EqualFold(ServID(value(msg, f)), authservID) {
			continue
		}
		if out == nil {
			out = make([]byte, 0, len(msg))
		}
		out = append(out, msg[kept:f.start]...)
		kept = f.end
		removed++
	}
	if removed == 0 {
		return msg, 0
	}
	return append(out, msg[kept:]...), removed
}

// ServID is the authserv-id of an Authentication-Results value: what
// go-msgauth's parser reads, or, for a value it cannot parse, the first
// word before ";" with comments removed, so that a malformed forgery is
// recognised too.
func ServID(v string) string {
	if id, _, err := authres.Parse(v); err == nil {
		return strings.TrimSpace(id)
	}
	head, _, _ := strings.Cut(v, ";")
	var b strings.Builder
	depth := 0
	for _, r := range head {
		switch {
		case r == '(':
			depth++
		case r == ')' && depth > 0:
			depth--
		case depth == 0:
			b.WriteRune(r)
		}
	}
	f := strings.Fields(b.String())
	if len(f) == 0 {
		return ""
	}
	return strings.Trim(f[0], `"`)
}

// Header renders the Authentication-Results field of v for authservID,
// folded one result a line, ending in CRLF. Every value is made safe for
// a header (clean): domains and reasons may come from the client.
func Header(authservID string, v Verdict) string {
	var rs []authres.Result
	if v.SPF.Result != "" {
		rs = append(rs, &authres.SPFResult{Value: authres.ResultValue(v.SPF.Result), From: clean(v.SPF.Domain, maxDomain)})
	}
	if v.Helo.Result != "" {
		rs = append(rs, &authres.SPFResult{Value: authres.ResultValue(v.Helo.Result), Helo: clean(v.Helo.Domain, maxDomain)})
	}
	if len(v.DKIM) == 0 {
		rs = append(rs, &authres.DKIMResult{Value: authres.ResultNone})
	}
	for _, d := range v.DKIM {
		rs = append(rs, &authres.DKIMResult{Value: authres.ResultValue(d.Result), Reason: clean(d.Reason, maxReason),
			Domain: clean(d.Domain, maxDomain), Identifier: clean(d.Identifier, maxDomain)})
	}
	if v.DMARC.Result != "" {
		reason := ""
		if v.DMARC.Result == "fail" {
			reason = "p=" + string(v.DMARC.Policy)
		} else if v.DMARC.Result != "pass" && v.DMARC.Result != "none" {
			reason = clean(v.DMARC.Reason, maxReason)
		}
		rs = append(rs, &authres.DMARCResult{Value: authres.ResultValue(v.DMARC.Result), Reason: reason, From: clean(v.DMARC.From, maxDomain)})
	}
	s := authres.Format(clean(authservID, maxDomain), rs)
	return HeaderName + ": " + strings.ReplaceAll(s, "; ", ";\r\n\t") + "\r\n"
}

// The longest values written into the header.
const (
	maxDomain = 255
	maxReason = 120
)

// clean makes s safe inside a header value: one line of printable ASCII
// without quotes, backslashes or ";" (results are folded after it), and
// without spaces but in reasons (n = maxReason), at most n bytes.
func clean(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case r == ' ' && n == maxReason:
			return ' ' // reasons are quoted
		case r <= ' ' || r >= 0x7f:
			return '_'
		case r == ';' || r == '"' || r == '\\':
			return '_'
		}
		return r
	}, s)
	if len(s) > n {
		s = s[:n]
	}
	return s
}
