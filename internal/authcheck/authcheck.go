// Package authcheck gives the verdicts on who sent inbound mail: SPF (RFC
// 7208) for the MAIL FROM and HELO identities, DKIM (RFC 6376) for every
// signature, DMARC (RFC 7489) from those two, and the
// Authentication-Results header (RFC 8601) that records them
// (docs/DESIGN.md §4, "Ingress"; README "Inbound authentication checks").
//
// The checks are libraries' work: SPF is blitiri.com.ar/go/spf (chasquid's:
// the RFC's lookup limits, macros, void lookups, and a resolver option, so
// that its lookups go through Mailroot's one resolver); DKIM, DMARC record
// parsing and the header's syntax are go-msgauth's. What this package adds
// is the glue the libraries leave out: DMARC policy discovery with the
// organizational domain fallback (golang.org/x/net/publicsuffix),
// identifier alignment, p=/sp=/pct=, one deadline over every lookup, and
// the removal of forged Authentication-Results claiming our authserv-id.
//
// ingress runs Check at the end of DATA for mail from unauthenticated
// clients outside relay_networks (ingress/checks.go); what it does with a
// verdict (tag, quarantine, reject) is the site's configuration.
package authcheck

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"

	"blitiri.com.ar/go/spf"
	"github.com/emersion/go-msgauth/dkim"

	"github.com/mailroot/mailroot/internal/envelope"
)

// Resolver is the DNS the checks use: net.Resolver's shapes, which
// internal/resolver's Resolver has (errors as *net.DNSError, IsNotFound
// for a final negative answer, IsTemporary or IsTimeout otherwise).
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
	LookupAddr(ctx context.Context, addr string) ([]string, error)
}

var _ spf.DNSResolver = Resolver(nil)

// MaxSignatures is how many DKIM signatures of one message are verified;
// the others are ignored (each costs a DNS lookup and a hash of the body).
const MaxSignatures = 8

// Checker runs the checks. The zero value is not usable: Resolver is
// needed.
type Checker struct {
	// Resolver answers every lookup of every check.
	Resolver Resolver
	// Percent returns a number in [0, 100) that decides whether a DMARC
	// policy with pct= below 100 applies to a message (RFC 7489 §6.6.4);
	// nil is uniformly random (a test seam).
	Percent func() int
}

// Input is what the checks look at.
type Input struct {
	// IP is the client's address.
	IP netip.Addr
	// Helo is the EHLO/HELO argument.
	Helo string
	// MailFrom is the MAIL FROM address, "" for the null sender.
	MailFrom string
	// Message is the message as received, header and body (for DKIM).
	Message io.Reader
	// Header is the message's header section (or a prefix of the message
	// that holds it): the RFC5322.From for DMARC.
	Header []byte
}

// SPFResult is one SPF check.
type SPFResult struct {
	// Result is pass, fail, softfail, neutral, none, temperror or
	// permerror.
	Result spf.Result
	// Domain is the domain whose policy was evaluated.
	Domain string
	// Err says why, for the log (may be set on pass: "matched ip").
	Err error
}

// DKIMResult is the verdict on one DKIM-Signature.
type DKIMResult struct {
	// Result is pass, fail, temperror, permerror, or neutral (not
	// verified: over MaxSignatures).
	Result string
	// Domain is the signature's d=, Identifier its i=.
	Domain, Identifier string
	// Reason is why it did not pass.
	Reason string
}

// Verdict is the result of every check.
type Verdict struct {
	// SPF is the check of the MAIL FROM identity (the HELO identity for
	// the null sender, RFC 7208 §2.4); Helo that of the HELO identity
	// (Result "" when HELO is not a domain name).
	SPF, Helo SPFResult
	// DKIM has one result per signature, in header order.
	DKIM []DKIMResult
	// DMARC is the DMARC verdict.
	DMARC DMARCResult
}

// Check runs SPF, DKIM and DMARC. Every lookup is bounded by ctx: a
// lookup that does not finish in time is a temperror, and Check returns
// soon after ctx is done.
func (c *Checker) Check(ctx context.Context, in Input) Verdict {
	var v Verdict
	var wg sync.WaitGroup
	wg.Go(func() { v.SPF, v.Helo = c.spf(ctx, in) })
	v.DKIM = c.dkim(ctx, in.Message)
	wg.Wait()
	v.DMARC = c.dmarc(ctx, in.Header, v)
	return v
}

// spf checks the MAIL FROM identity and, when HELO is a domain name, the
// HELO identity.
func (c *Checker) spf(ctx context.Context, in Input) (from, helo SPFResult) {
	ip := net.IP(in.IP.Unmap().AsSlice())
	opts := []spf.Option{spf.WithContext(ctx), spf.WithResolver(c.Resolver)}
	heloDomain := ""
	if h := strings.TrimSuffix(in.Helo, "."); isDomain(h) {
		heloDomain = strings.ToLower(h)
	}
	if heloDomain != "" {
		r, err := spf.CheckHostWithSender(ip, heloDomain, "postmaster@"+heloDomain, opts...)
		helo = SPFResult{Result: r, Domain: heloDomain, Err: err}
	}
	if in.MailFrom == "" {
		// The null sender: the HELO identity is the MAIL FROM identity.
		if heloDomain == "" {
			return SPFResult{Result: spf.None, Err: errors.New("null sender and no HELO domain")}, helo
		}
		return helo, helo
	}
	at := strings.LastIndexByte(in.MailFrom, '@')
	if at < 0 {
		return SPFResult{Result: spf.None, Err: errors.New("sender without a domain")}, helo
	}
	domain := envelope.NormalizeDomain(in.MailFrom[at+1:]) // the A-label, as DMARC compares
	if domain == heloDomain && strings.EqualFold(in.MailFrom[:at], "postmaster") {
		return helo, helo
	}
	r, err := spf.CheckHostWithSender(ip, heloDomain, in.MailFrom[:at]+"@"+domain, opts...)
	return SPFResult{Result: r, Domain: domain, Err: err}, helo
}

// dkim verifies every signature of the message (at most MaxSignatures).
func (c *Checker) dkim(ctx context.Context, msg io.Reader) []DKIMResult {
	if msg == nil {
		return nil
	}
	opts := &dkim.VerifyOptions{
		LookupTXT:        func(name string) ([]string, error) { return c.Resolver.LookupTXT(ctx, name) },
		MaxVerifications: MaxSignatures,
	}
	verifs, err := dkim.VerifyWithOptions(msg, opts)
	out := make([]DKIMResult, 0, len(verifs))
	for _, vf := range verifs {
		r := DKIMResult{Result: "pass", Domain: strings.ToLower(vf.Domain), Identifier: vf.Identifier}
		if vf.Err != nil {
			r.Reason = vf.Err.Error()
			switch {
			case dkim.IsTempFail(vf.Err):
				r.Result = "temperror"
			case dkim.IsPermFail(vf.Err):
				r.Result = "permerror"
			default:
				r.Result = "fail"
			}
		}
		out = append(out, r)
	}
	if errors.Is(err, dkim.ErrTooManySignatures) {
		out = append(out, DKIMResult{Result: "neutral", Reason: "more signatures than verified"})
	} else if err != nil && len(out) == 0 {
		// The header could not be read: a malformed message.
		out = append(out, DKIMResult{Result: "permerror", Reason: err.Error()})
	}
	return out
}

func (c *Checker) percent() int {
	if c.Percent != nil {
		return c.Percent()
	}
	return rand.IntN(100)
}

// isDomain reports whether s looks like a domain name of two labels or
// more (LDH and "_", RFC 1123), so that HELO is checked only when it is
// one (not an address literal or a bare word).
func isDomain(s string) bool {
	if len(s) == 0 || len(s) > 253 || !strings.Contains(s, ".") {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i] | 0x20
			if !(c >= 'a' && c <= 'z' || l[i] >= '0' && l[i] <= '9' || l[i] == '-' || l[i] == '_') {
				return false
			}
		}
	}
	return true
}
