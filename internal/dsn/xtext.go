package dsn

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// DecodeXtext decodes RFC 3461 §4 xtext ("+2B" is "+"). A '+' not followed
// by two hex digits is kept as it is, so a value that was never encoded
// comes back unchanged.
func DecodeXtext(s string) string {
	if !strings.Contains(s, "+") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '+' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// EncodeXtext encodes s as RFC 3461 xtext: '+', '=' and anything outside
// printable ASCII become "+XX".
func EncodeXtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '!' || c > '~' || c == '+' || c == '=' {
			fmt.Fprintf(&b, "+%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// EncodeUTF8Addr encodes an address as RFC 6533 utf-8-addr-xtext: every
// character outside printable ASCII, and '+', '=' and '\', becomes
// "\x{HEX}". Invalid UTF-8 becomes U+FFFD.
func EncodeUTF8Addr(s string) string {
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(s, "\uFFFD") {
		if r > ' ' && r <= '~' && r != '+' && r != '=' && r != '\\' {
			b.WriteRune(r)
			continue
		}
		b.WriteString(`\x{` + strings.ToUpper(strconv.FormatUint(uint64(r), 16)) + "}")
	}
	return b.String()
}

// DecodeUTF8Addr decodes RFC 6533 utf-8-addr-xtext or -unitext
// ("\x{2B}" is "+"); ok is false when an escape is malformed.
func DecodeUTF8Addr(s string) (addr string, ok bool) {
	var b strings.Builder
	for i := 0; i < len(s); {
		if strings.HasPrefix(s[i:], `\x{`) {
			end := strings.IndexByte(s[i:], '}')
			if end < 4 || end > 9 {
				return "", false
			}
			v, err := strconv.ParseUint(s[i+3:i+end], 16, 32)
			if err != nil || v > utf8.MaxRune {
				return "", false
			}
			b.WriteRune(rune(v))
			i += end + 1
			continue
		}
		b.WriteByte(s[i])
		i++
	}
	return b.String(), true
}
