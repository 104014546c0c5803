package ingress

import (
	"strconv"
	"strings"

	"github.com/mailroot/mailroot/internal/dsn"
)

// reply is an SMTP reply made by the policy code.
type reply struct {
	Code     int
	Enhanced string // RFC 3463, "" for none
	Text     string
}

func (r *reply) Error() string { return strconv.Itoa(r.Code) + " " + r.Enhanced + " " + r.Text }

func rep(code int, enhanced, text string) *reply {
	return &reply{Code: code, Enhanced: enhanced, Text: text}
}

// BODY values (RFC 6152, RFC 3030).
const (
	body7Bit   = "7BIT"
	body8Bit   = "8BITMIME"
	bodyBinary = "BINARYMIME"
)

// mailParams are the MAIL FROM parameters.
type mailParams struct {
	Size       int64  // SIZE (RFC 1870), 0 when not given
	Body       string // BODY: "", 7BIT, 8BITMIME or BINARYMIME
	UTF8       bool   // SMTPUTF8 (RFC 6531)
	RequireTLS bool   // REQUIRETLS (RFC 8689)
	Ret        string // RET (RFC 3461): "", FULL or HDRS
	EnvID      string // ENVID, decoded from xtext
}

// rcptParams are the RCPT TO parameters (RFC 3461).
type rcptParams struct {
	Notify []string // NOTIFY values, upper case
	// ORCPT: the address type in upper case ("RFC822", "UTF-8") and the
	// address, decoded.
	ORcptType, ORcpt string
}

// parsePath parses "<path> params" (RFC 5321 §4.1.2): the address (""
// for "<>" when null is allowed), with a source route dropped and a
// quoted local part kept quoted only where it must be, and the parameter
// text after it. The angle brackets may be missing, as many clients
// forget them.
func parsePath(s string, null bool) (addr, params string, ok bool) {
	if null && strings.HasPrefix(s, "<>") {
		return "", s[2:], true
	}
	bracket := strings.HasPrefix(s, "<")
	if bracket {
		s = s[1:]
		if strings.HasPrefix(s, "@") {
			// A source route, "@a,@b:": ignored (RFC 5321 §4.1.2).
			i := strings.IndexByte(s, ':')
			if i < 0 {
				return "", "", false
			}
			s = s[i+1:]
		}
	}
	local, rest, ok := parseLocal(s)
	if !ok || local == "" {
		return "", "", false
	}
	addr = local
	if strings.HasPrefix(rest, "@") {
		end := strings.IndexAny(rest, " \t>")
		if end < 0 {
			end = len(rest)
		}
		if end == 1 {
			return "", "", false
		}
		addr, rest = local+rest[:end], rest[end:]
	}
	if bracket {
		if !strings.HasPrefix(rest, ">") {
			return "", "", false
		}
		rest = rest[1:]
	}
	if rest != "" && rest[0] != ' ' && rest[0] != '\t' {
		return "", "", false
	}
	return addr, rest, true
}

// parseLocal parses a local part, a Dot-string or a Quoted-string, and
// returns it as it must be written: unquoted when it is a dot-atom.
func parseLocal(s string) (local, rest string, ok bool) {
	if !strings.HasPrefix(s, `"`) {
		end := strings.IndexAny(s, "@ \t<>()[]:;\\,\"")
		if end < 0 {
			end = len(s)
		}
		return s[:end], s[end:], true
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			if i+1 >= len(s) {
				return "", "", false
			}
			i++
			b.WriteByte(s[i])
		case '"':
			return quoteLocal(b.String()), s[i+1:], b.Len() > 0
		default:
			b.WriteByte(c)
		}
	}
	return "", "", false
}

// quoteLocal writes a local part: as it is when it is a Dot-string,
// quoted otherwise (so `"a b"` stays one mailbox and `"ab"` is `ab`).
func quoteLocal(local string) string {
	if dotAtom(local) {
		return local
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(local); i++ {
		if c := local[i]; c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(local[i])
	}
	b.WriteByte('"')
	return b.String()
}

// dotAtom reports whether s is an RFC 5321 Dot-string (UTF-8 allowed,
// RFC 6531).
func dotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 0x80, c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-/=?^_`{|}~.", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// eachParam calls fn for each "KEY=value" or "KEY" of s, with the key in
// upper case, until fn returns a reply; a key given twice, or an empty
// one, is a syntax error in what's parameters.
func eachParam(s, what string, fn func(k, v string) *reply) *reply {
	seen := map[string]bool{}
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		k = strings.ToUpper(k)
		if k == "" || seen[k] {
			return rep(501, "5.5.4", "Syntax error in "+what+" parameters")
		}
		seen[k] = true
		if r := fn(k, v); r != nil {
			return r
		}
	}
	return nil
}

// parseMailParams parses the MAIL FROM parameters Mailroot offers.
func parseMailParams(s string, maxSize int64) (mailParams, *reply) {
	var p mailParams
	r := eachParam(s, "MAIL", func(k, v string) *reply {
		switch k {
		case "SIZE":
			n, err := strconv.ParseUint(v, 10, 63)
			if err != nil {
				return rep(501, "5.5.4", "Syntax error in SIZE")
			}
			if maxSize > 0 && int64(n) > maxSize {
				return rep(552, "5.3.4", "Message too big")
			}
			p.Size = int64(n)
		case "BODY":
			switch v = strings.ToUpper(v); v {
			case body7Bit, body8Bit, bodyBinary:
				p.Body = v
			default:
				return rep(501, "5.5.4", "Syntax error in BODY")
			}
		case "SMTPUTF8", "REQUIRETLS":
			if v != "" {
				return rep(501, "5.5.4", "Syntax error in "+k)
			}
			p.UTF8 = p.UTF8 || k == "SMTPUTF8"
			p.RequireTLS = p.RequireTLS || k == "REQUIRETLS"
		case "RET":
			switch v = strings.ToUpper(v); v {
			case "FULL", "HDRS":
				p.Ret = v
			default:
				return rep(501, "5.5.4", "Syntax error in RET")
			}
		case "ENVID":
			id, ok := decodeXtext(v)
			if !ok || id == "" || len(id) > 100 || !printableASCII(id) {
				return rep(501, "5.5.4", "Syntax error in ENVID")
			}
			p.EnvID = id
		case "AUTH":
			// RFC 4954 §5: accepted and not trusted; Mailroot does not
			// relay it.
			if a, ok := decodeXtext(v); !ok || a == "" {
				return rep(501, "5.5.4", "Syntax error in AUTH")
			}
		default:
			return rep(500, "5.5.4", "Unknown MAIL parameter")
		}
		return nil
	})
	return p, r
}

// parseRcptParams parses the RCPT TO parameters Mailroot offers.
func parseRcptParams(s string) (rcptParams, *reply) {
	var p rcptParams
	r := eachParam(s, "RCPT", func(k, v string) *reply {
		switch k {
		case "NOTIFY":
			n, ok := parseNotify(v)
			if !ok {
				return rep(501, "5.5.4", "Syntax error in NOTIFY")
			}
			p.Notify = n
		case "ORCPT":
			typ, addr, _ := strings.Cut(v, ";")
			typ = strings.ToUpper(typ)
			var ok bool
			switch typ {
			case "RFC822":
				addr, ok = decodeXtext(addr)
				ok = ok && printableASCII(addr)
			case "UTF-8":
				addr, ok = dsn.DecodeUTF8Addr(addr)
			}
			if !ok || addr == "" {
				return rep(501, "5.5.4", "Syntax error in ORCPT")
			}
			p.ORcptType, p.ORcpt = typ, addr
		default:
			return rep(500, "5.5.4", "Unknown RCPT parameter")
		}
		return nil
	})
	return p, r
}

// parseNotify checks NOTIFY (RFC 3461 §4.1): NEVER alone, or a set of
// SUCCESS, FAILURE and DELAY.
func parseNotify(v string) ([]string, bool) {
	var out []string
	seen := map[string]bool{}
	for _, n := range strings.Split(strings.ToUpper(v), ",") {
		switch n {
		case "NEVER", "SUCCESS", "FAILURE", "DELAY":
		default:
			return nil, false
		}
		if seen[n] {
			return nil, false
		}
		seen[n] = true
		out = append(out, n)
	}
	if seen["NEVER"] && len(out) > 1 {
		return nil, false
	}
	return out, true
}

// decodeXtext decodes RFC 3461 xtext strictly: "+" must start two upper
// case hex digits.
func decodeXtext(s string) (string, bool) {
	if !strings.Contains(s, "+") {
		return s, true
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '+' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) || !isUpperHex(s[i+1]) || !isUpperHex(s[i+2]) {
			return "", false
		}
		v, _ := strconv.ParseUint(s[i+1:i+3], 16, 8)
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), true
}

func isUpperHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'A' && c <= 'F' }

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}
