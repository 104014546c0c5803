package envelope

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/net/idna"
)

// ErrBadAddress is wrapped by address errors.
var ErrBadAddress = errors.New("envelope: bad address")

// ErrBadDomain is wrapped by domain errors (and so by the address errors
// of an address with a bad domain).
var ErrBadDomain = errors.New("envelope: bad domain")

// MaxAddressLen is the longest address accepted (RFC 5321 §4.5.3.1.3: a path
// is at most 256 octets including the brackets).
const MaxAddressLen = 254

// CheckAddress reports whether addr is a plausible mailbox "local@domain"
// with no control characters or spaces outside a quoted local part. It
// accepts UTF-8 (SMTPUTF8) and address literals.
func CheckAddress(addr string) error {
	if len(addr) > MaxAddressLen {
		return fmt.Errorf("%w: longer than %d octets", ErrBadAddress, MaxAddressLen)
	}
	local, domain, err := Split(addr)
	if err != nil {
		return err
	}
	if local == "" {
		return fmt.Errorf("%w: %q has an empty local part", ErrBadAddress, addr)
	}
	if domain == "" {
		return fmt.Errorf("%w: %q has no domain", ErrBadAddress, addr)
	}
	for _, c := range addr {
		if c < 0x20 || c == 0x7f {
			return fmt.Errorf("%w: %q has a control character", ErrBadAddress, addr)
		}
	}
	if !strings.HasPrefix(local, `"`) && strings.ContainsAny(local, " <>()[],;:\\\"") {
		return fmt.Errorf("%w: %q has a special character in an unquoted local part", ErrBadAddress, addr)
	}
	if strings.HasPrefix(domain, "[") {
		if !strings.HasSuffix(domain, "]") {
			return fmt.Errorf("%w: %q has a malformed address literal", ErrBadAddress, addr)
		}
		return nil
	}
	if err := CheckDomain(domain); err != nil {
		return fmt.Errorf("%w: %q: %w", ErrBadAddress, addr, err)
	}
	return nil
}

// MaxDomainLen is the longest domain name accepted, in octets of its
// A-label form without a final dot (RFC 1035 §2.3.4).
const MaxDomainLen = 253

// CheckDomain reports whether d is a domain name: labels of 1 to 63
// octets joined by single dots, each made of letters, digits, hyphens
// (not first or last) and underscores, or a UTF-8 U-label that has an
// A-label (SMTPUTF8, RFC 6531). One final dot, the absolute form, is
// allowed (NormalizeDomain drops it); a leading dot, an empty label
// ("a..b", "b..") or any other character is an error. Address literals
// ("[192.0.2.1]") are not domain names.
func CheckDomain(d string) error {
	name := strings.TrimSuffix(d, ".")
	if name == "" {
		return fmt.Errorf("%w: %q is empty", ErrBadDomain, d)
	}
	total := 0
	for label := range strings.SplitSeq(name, ".") {
		if label == "" {
			return fmt.Errorf("%w: %q has an empty label", ErrBadDomain, d)
		}
		ascii := label
		for i := 0; i < len(label); i++ {
			c := label[i]
			switch {
			case c >= 0x80:
				a, err := idna.Lookup.ToASCII(label)
				if err != nil {
					return fmt.Errorf("%w: %q: %v", ErrBadDomain, d, err)
				}
				ascii, i = a, len(label)
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_':
			case c == '-' && i > 0 && i < len(label)-1:
			default:
				return fmt.Errorf("%w: %q has a bad label %q", ErrBadDomain, d, label)
			}
		}
		if len(ascii) > 63 {
			return fmt.Errorf("%w: %q has a label longer than 63 octets", ErrBadDomain, d)
		}
		total += len(ascii) + 1
	}
	if total-1 > MaxDomainLen {
		return fmt.Errorf("%w: %q is longer than %d octets", ErrBadDomain, d, MaxDomainLen)
	}
	return nil
}

// Split splits addr at its last '@' outside quotes into local part and
// domain. The domain is returned as given.
func Split(addr string) (local, domain string, err error) {
	at, balanced := scanUnquoted(addr, 0, '@', false)
	if !balanced {
		return "", "", fmt.Errorf("%w: %q has an unterminated quote", ErrBadAddress, addr)
	}
	if at < 0 {
		return addr, "", nil
	}
	return addr[:at], addr[at+1:], nil
}

// Domain returns the normalised domain of addr: lower-case A-label without
// a trailing dot, or the address literal as given. It returns "" when addr
// has no domain.
func Domain(addr string) string {
	_, d, err := Split(addr)
	if err != nil {
		return ""
	}
	return NormalizeDomain(d)
}

// NormalizeDomain lower-cases a domain, converts it to its A-label and drops
// a trailing dot. Address literals are returned as given.
func NormalizeDomain(d string) string {
	if strings.HasPrefix(d, "[") {
		return strings.ToLower(d)
	}
	d = strings.TrimSuffix(strings.ToLower(d), ".")
	if isASCII(d) && !strings.Contains(d, "xn--") {
		// UTS #46 maps no lower-case ASCII: outside A-labels (which it
		// decodes and checks) ToASCII gives d back or fails, and either
		// way the answer is d. Most domains take this path, and idna
		// costs a trie walk per character.
		return d
	}
	return toASCII(d)
}

// toASCII is NormalizeDomain's answer for d, lower-cased and without its
// trailing dot, by idna alone.
func toASCII(d string) string {
	if a, err := idna.Lookup.ToASCII(d); err == nil {
		return a
	}
	return d
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// scanUnquoted returns the index of target in s[start:] outside a quoted
// string (backslash escapes honoured inside quotes): the first one when
// first is set, else the last one; -1 if none. balanced reports whether the
// quotes were closed by the end of the scan.
func scanUnquoted(s string, start int, target byte, first bool) (idx int, balanced bool) {
	idx, quoted := -1, false
	for i := start; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && quoted:
			i++
		case c == '"':
			quoted = !quoted
		case c == target && !quoted:
			idx = i
			if first {
				return idx, true
			}
		}
	}
	return idx, !quoted
}
