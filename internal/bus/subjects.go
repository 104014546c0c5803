// Package bus holds everything Mailroot knows about NATS: subjects, the
// MAIL stream and its consumers, the mail-bodies Object Store, connecting
// to a server (or embedding one), and publishing with the retry rules that
// make "250" mean "stored" (docs/DESIGN.md §2, §4).
package bus

import (
	"strings"

	"github.com/mailroot/mailroot/internal/envelope"
)

// Subjects of the MAIL stream. A destination domain is always exactly one
// subject token (see Token).
const (
	SubjAll         = "mail.>"
	SubjIn          = "mail.in"
	SubjOutPrefix   = "mail.out."
	SubjOutAll      = "mail.out.*"
	SubjDeferPrefix = "mail.defer."
	SubjHoldPrefix  = "mail.hold."
	SubjDrop        = "mail.drop"
	SubjBad         = "mail.bad"
	// SubjQuarantine is mail the inbound checks quarantined (DMARC,
	// ingress/checks.go): written to <data_dir>/Quarantine by delivery.
	SubjQuarantine = "mail.quarantine"
)

// Token turns a domain into a single subject token: the lower-case A-label
// with "." replaced by "_" (RFC 5321 domains cannot contain "_", so this is
// reversible). Address literals become lit4-a-b-c-d / lit6-…, and any other
// character that NATS subjects cannot carry is replaced by "-".
func Token(domain string) string {
	d := envelope.NormalizeDomain(domain)
	if strings.HasPrefix(d, "[") {
		lit := strings.Trim(d, "[]")
		prefix := "lit4-"
		if rest, ok := strings.CutPrefix(strings.ToLower(lit), "ipv6:"); ok {
			prefix, lit = "lit6-", rest
		}
		return prefix + mapToken(lit, '-')
	}
	return mapToken(d, '_')
}

func mapToken(s string, dot rune) string {
	if s == "" {
		return "-"
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r == '.':
			return dot
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		case r >= 'A' && r <= 'Z':
			return r + ('a' - 'A')
		default:
			return '-'
		}
	}, s)
}

// Out is the subject of mail ready for delivery to the domain with token tok.
func Out(tok string) string { return SubjOutPrefix + tok }

// Defer is the schedule subject of one deferred envelope.
func Defer(tok, qid string) string { return SubjDeferPrefix + tok + "." + qid }

// Hold is the subject of mail held for ETRN/ATRN.
func Hold(tok string) string { return SubjHoldPrefix + tok }
