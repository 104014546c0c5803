package authcheck

import (
	"context"
	"errors"
	"strings"

	"blitiri.com.ar/go/spf"
	"github.com/emersion/go-msgauth/dmarc"
	"golang.org/x/net/publicsuffix"
)

// DMARCResult is the DMARC verdict (RFC 7489).
type DMARCResult struct {
	// Result is pass, fail, none (no policy, or no From domain),
	// temperror (the policy could not be looked up) or permerror (the
	// From header or the policy record is unusable).
	Result string
	// From is the RFC5322.From domain.
	From string
	// Policy is what the domain asks for a failing message, after sp=
	// and pct=: none, quarantine or reject ("" unless Result is fail).
	Policy dmarc.Policy
	// Published is the policy as published (p=, or sp= for a subdomain),
	// before pct= sampling.
	Published dmarc.Policy
	// SPFAligned and DKIMAligned tell which identifier passed aligned.
	SPFAligned, DKIMAligned bool
	// Reason says why, for the log and the header.
	Reason string
}

// OrgDomain is the organizational domain of d (RFC 7489 §3.2): the public
// suffix plus one label, or d itself when it is a public suffix.
func OrgDomain(d string) string {
	d = strings.ToLower(strings.TrimSuffix(d, "."))
	if o, err := publicsuffix.EffectiveTLDPlusOne(d); err == nil {
		return o
	}
	return d
}

// aligned reports whether the authenticated domain id is aligned with
// the From domain (RFC 7489 §3.1): the same name (strict), or the same
// organizational domain (relaxed).
func aligned(from, id string, mode dmarc.AlignmentMode) bool {
	from, id = strings.ToLower(from), strings.ToLower(strings.TrimSuffix(id, "."))
	if mode == dmarc.AlignmentStrict {
		return from == id
	}
	return OrgDomain(from) == OrgDomain(id)
}

// dmarc evaluates the policy of the From domain against the SPF and DKIM
// results; with several From domains, each, and the worst verdict counts.
func (c *Checker) dmarc(ctx context.Context, header []byte, v Verdict) DMARCResult {
	froms, err := FromDomains(header)
	if err != nil {
		return DMARCResult{Result: "permerror", Reason: err.Error()}
	}
	var worst DMARCResult
	for i, from := range froms {
		if r := c.dmarcFor(ctx, from, v); i == 0 || rank(r) > rank(worst) {
			worst = r
		}
	}
	if len(froms) > 1 {
		worst.Reason = strings.TrimSpace(worst.Reason + " (the worst of " + strings.Join(froms, ", ") + ")")
	}
	return worst
}

// rank orders verdicts from the best (pass) to the worst (fail under
// p=reject).
func rank(r DMARCResult) int {
	switch r.Result {
	case "pass":
		return 0
	case "none":
		return 1
	case "permerror":
		return 2
	case "temperror":
		return 3
	}
	switch r.Policy {
	case dmarc.PolicyReject:
		return 6
	case dmarc.PolicyQuarantine:
		return 5
	}
	return 4
}

// dmarcFor evaluates the policy of one From domain.
func (c *Checker) dmarcFor(ctx context.Context, from string, v Verdict) DMARCResult {
	res := DMARCResult{From: from}
	rec, sub, err := c.lookupPolicy(ctx, from)
	switch {
	case errors.Is(err, dmarc.ErrNoPolicy):
		res.Result, res.Reason = "none", "no DMARC policy"
		return res
	case dmarc.IsTempFail(err):
		res.Result, res.Reason = "temperror", err.Error()
		return res
	case err != nil:
		res.Result, res.Reason = "permerror", err.Error()
		return res
	}
	aspf, adkim := rec.SPFAlignment, rec.DKIMAlignment
	res.SPFAligned = v.SPF.Result == spf.Pass && aligned(from, v.SPF.Domain, aspf)
	for _, d := range v.DKIM {
		if d.Result == "pass" && aligned(from, d.Domain, adkim) {
			res.DKIMAligned = true
			break
		}
	}
	if res.SPFAligned || res.DKIMAligned {
		res.Result = "pass"
		return res
	}
	res.Result = "fail"
	res.Reason = "neither SPF nor DKIM passed aligned with " + from
	p := rec.Policy
	if sub && rec.SubdomainPolicy != "" {
		p = rec.SubdomainPolicy
	}
	res.Published, res.Policy = p, p
	if rec.Percent != nil && c.percent() >= *rec.Percent {
		// Not sampled: the next policy down (RFC 7489 §6.6.4).
		switch p {
		case dmarc.PolicyReject:
			res.Policy = dmarc.PolicyQuarantine
		case dmarc.PolicyQuarantine:
			res.Policy = dmarc.PolicyNone
		}
	}
	return res
}

// lookupPolicy finds the DMARC record of domain, else of its
// organizational domain (RFC 7489 §6.6.3); sub is true when the record is
// the organizational domain's and domain is below it (sp= applies).
func (c *Checker) lookupPolicy(ctx context.Context, domain string) (rec *dmarc.Record, sub bool, err error) {
	opts := &dmarc.LookupOptions{LookupTXT: func(name string) ([]string, error) { return c.Resolver.LookupTXT(ctx, name) }}
	rec, err = dmarc.LookupWithOptions(domain, opts)
	if !errors.Is(err, dmarc.ErrNoPolicy) {
		return rec, false, err
	}
	org := OrgDomain(domain)
	if org == domain {
		return nil, false, err
	}
	rec, err = dmarc.LookupWithOptions(org, opts)
	return rec, true, err
}
