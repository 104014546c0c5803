package envelope

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/net/idna"
)

// ErrBadAddress is wrapped by address errors.
var ErrBadAddress = errors.New("envelope: bad address")

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
	if strings.ContainsAny(domain, " <>()[],;:\\\"@") {
		return fmt.Errorf("%w: %q has a bad domain", ErrBadAddress, addr)
	}
	return nil
}

// Split splits addr at its last '@' outside quotes into local part and
// domain. The domain is returned as given.
func Split(addr string) (local, domain string, err error) {
	quoted := false
	at := -1
	for i := 0; i < len(addr); i++ {
		switch c := addr[i]; {
		case c == '\\' && quoted:
			i++
		case c == '"':
			quoted = !quoted
		case c == '@' && !quoted:
			at = i
		}
	}
	if quoted {
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
	if a, err := idna.Lookup.ToASCII(d); err == nil {
		return a
	}
	return d
}
