// Package mtasts is SMTP MTA Strict Transport Security (RFC 8461) for
// outbound mail: a domain that publishes a TXT record
// `_mta-sts.<domain>` ("v=STSv1; id=…") and a policy at
// `https://mta-sts.<domain>/.well-known/mta-sts.txt` says which MX hosts
// may receive its mail and that they must be reached over TLS whose
// certificate verifies for the MX host name.
//
// Client.Get finds a domain's policy: the TXT record, then the policy
// over HTTPS with a verified certificate (10 s, at most 64 KiB,
// text/plain, no redirects), cached in the NATS KV bucket `mta-sts` for
// the policy's max_age and fetched anew when the TXT id changes or the
// cached copy is near its end; a cached policy is used when a refresh
// fails (§5.1). Delivery (delivery/tlspolicy.go) applies it: enforce
// refuses hosts the policy does not name and sessions that do not verify,
// testing delivers and records, none is opportunistic.
package mtasts

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Mode is a policy's mode (RFC 8461 §3.2).
type Mode string

// The three modes.
const (
	// Enforce: mail goes only to matching MX hosts over verified TLS.
	Enforce Mode = "enforce"
	// Testing: failures are reported (TLS-RPT) but mail is delivered.
	Testing Mode = "testing"
	// None: the domain has withdrawn its policy.
	None Mode = "none"
)

// MaxAge is the largest max_age a policy may have (RFC 8461 §3.2, about
// a year); larger values are taken as MaxAge.
const MaxAge = 31557600 * time.Second

// MaxPolicySize is the largest policy body accepted (§3.3 lets senders
// bound it; 64 KiB is plenty for any list of MX patterns).
const MaxPolicySize = 64 << 10

// ErrPolicy marks a policy body that is not a valid STSv1 policy.
var ErrPolicy = errors.New("mtasts: invalid policy")

// ErrRecord marks a `_mta-sts` TXT record set that does not give one
// valid STSv1 record.
var ErrRecord = errors.New("mtasts: invalid TXT record")

// Policy is a parsed MTA-STS policy.
type Policy struct {
	// Mode is enforce, testing or none.
	Mode Mode
	// MX are the patterns of the MX hosts allowed: host names, or
	// "*.example.net" matching one label in place of the star. Lower
	// case, no trailing dot.
	MX []string
	// MaxAge is how long the policy may be cached.
	MaxAge time.Duration
}

// Parse parses a policy body (RFC 8461 §3.2): "key: value" lines
// separated by LF or CRLF; version must be STSv1, mode one of the three,
// max_age a number of seconds, and at least one mx unless the mode is
// none. Unknown keys are ignored, as the RFC says.
func Parse(b []byte) (*Policy, error) {
	if len(b) > MaxPolicySize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrPolicy, MaxPolicySize)
	}
	var p Policy
	var version, mode, maxAge bool
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSuffix(line, "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("%w: line %d has no colon", ErrPolicy, i+1)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "version":
			if version {
				return nil, fmt.Errorf("%w: version given twice", ErrPolicy)
			}
			if v != "STSv1" {
				return nil, fmt.Errorf("%w: version %q, want STSv1", ErrPolicy, v)
			}
			version = true
		case "mode":
			if mode {
				return nil, fmt.Errorf("%w: mode given twice", ErrPolicy)
			}
			switch Mode(v) {
			case Enforce, Testing, None:
				p.Mode, mode = Mode(v), true
			default:
				return nil, fmt.Errorf("%w: mode %q", ErrPolicy, v)
			}
		case "max_age":
			if maxAge {
				return nil, fmt.Errorf("%w: max_age given twice", ErrPolicy)
			}
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil || len(v) > 10 {
				return nil, fmt.Errorf("%w: max_age %q is not a number of seconds", ErrPolicy, v)
			}
			p.MaxAge, maxAge = min(time.Duration(n)*time.Second, MaxAge), true
		case "mx":
			pat := strings.ToLower(strings.TrimSuffix(v, "."))
			if !validPattern(pat) {
				return nil, fmt.Errorf("%w: mx %q is not a host name or *.name", ErrPolicy, v)
			}
			p.MX = append(p.MX, pat)
		}
	}
	switch {
	case !version:
		return nil, fmt.Errorf("%w: no version", ErrPolicy)
	case !mode:
		return nil, fmt.Errorf("%w: no mode", ErrPolicy)
	case !maxAge:
		return nil, fmt.Errorf("%w: no max_age", ErrPolicy)
	case len(p.MX) == 0 && p.Mode != None:
		return nil, fmt.Errorf("%w: no mx", ErrPolicy)
	}
	return &p, nil
}

// validPattern reports whether pat is a host name, optionally with "*."
// in front.
func validPattern(pat string) bool {
	name := strings.TrimPrefix(pat, "*.")
	if name == "" || len(name) > 253 {
		return false
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// Match reports whether the MX host name host is one the policy allows
// (RFC 8461 §4.1): equal to a pattern, or one label more than a "*."
// pattern's name ("*.example.net" matches "mx.example.net", not
// "a.b.example.net" nor "example.net"). Case and a trailing dot do not
// matter.
func (p *Policy) Match(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, pat := range p.MX {
		if rest, ok := strings.CutPrefix(pat, "*."); ok {
			label, parent, found := strings.Cut(host, ".")
			if found && label != "" && parent == rest {
				return true
			}
			continue
		}
		if host == pat {
			return true
		}
	}
	return false
}

// String renders p in the policy format, as the TLS-RPT report's
// policy-string and the cache need it.
func (p *Policy) String() string {
	var b strings.Builder
	b.WriteString("version: STSv1\n")
	b.WriteString("mode: " + string(p.Mode) + "\n")
	for _, mx := range p.MX {
		b.WriteString("mx: " + mx + "\n")
	}
	b.WriteString("max_age: " + strconv.FormatInt(int64(p.MaxAge/time.Second), 10) + "\n")
	return b.String()
}

// ParseRecord finds the policy id in the TXT records of
// `_mta-sts.<domain>` (RFC 8461 §3.1): records not starting with
// "v=STSv1" are ignored; exactly one must, with an id of 1 to 32 letters
// and digits. found is false when no record is an STSv1 record (the
// domain has no policy); err is set when the STSv1 records are not
// valid or are more than one (the RFC says: as if there were none, but
// a cached policy still holds).
func ParseRecord(txts []string) (id string, found bool, err error) {
	var recs []string
	for _, t := range txts {
		if f, _, _ := strings.Cut(t, ";"); strings.TrimSpace(f) == "v=STSv1" {
			recs = append(recs, t)
		}
	}
	switch len(recs) {
	case 0:
		return "", false, nil
	case 1:
	default:
		return "", true, fmt.Errorf("%w: %d STSv1 records", ErrRecord, len(recs))
	}
	for _, f := range strings.Split(recs[0], ";")[1:] {
		k, v, _ := strings.Cut(strings.TrimSpace(f), "=")
		if k != "id" {
			continue
		}
		if v == "" || len(v) > 32 || strings.IndexFunc(v, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
		}) >= 0 {
			return "", true, fmt.Errorf("%w: id %q is not 1 to 32 letters and digits", ErrRecord, v)
		}
		return v, true, nil
	}
	return "", true, fmt.Errorf("%w: no id", ErrRecord)
}
