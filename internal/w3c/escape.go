package w3c

import (
	"errors"
	"strings"
)

// None is the value of a field that has none: W3C fields are never blank.
const None = "-"

const hexDigits = "0123456789ABCDEF"

// Escape makes s one field: never empty (None for ""), without a space,
// control character or non-ASCII byte. A space is '+', as IIS wrote it
// (the argument of "MAIL FROM:<a> SIZE=1" is "FROM:<a>+SIZE=1"); '+', '%',
// every byte outside the printable ASCII range, and a value that is
// exactly "-" are %XX, so that Unescape gives s back byte for byte and
// "-" only ever means none. IIS left '+' and '%' as they were, which made
// an address with a '+' in it unreadable; here it is %2B.
func Escape(s string) string {
	if s == "" {
		return None
	}
	if s == None {
		return "%2D"
	}
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == '+' || c == '%' {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == ' ':
			b.WriteByte('+')
		case c < ' ' || c >= 0x7f || c == '+' || c == '%':
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&15])
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// ErrEscape is a field that Escape cannot have written.
var ErrEscape = errors.New("w3c: malformed field")

// Unescape reverses Escape: None is "", '+' a space, %XX the byte XX.
func Unescape(f string) (string, error) {
	if f == "" {
		return "", ErrEscape
	}
	if f == None {
		return "", nil
	}
	if !strings.ContainsAny(f, "+%") {
		for i := 0; i < len(f); i++ {
			if c := f[i]; c <= ' ' || c >= 0x7f {
				return "", ErrEscape
			}
		}
		return f, nil
	}
	b := make([]byte, 0, len(f))
	for i := 0; i < len(f); i++ {
		switch c := f[i]; {
		case c == '+':
			b = append(b, ' ')
		case c == '%':
			if i+2 >= len(f) {
				return "", ErrEscape
			}
			hi, lo := unhex(f[i+1]), unhex(f[i+2])
			if hi < 0 || lo < 0 {
				return "", ErrEscape
			}
			b = append(b, byte(hi<<4|lo))
			i += 2
		case c <= ' ' || c >= 0x7f:
			return "", ErrEscape
		default:
			b = append(b, c)
		}
	}
	return string(b), nil
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}
