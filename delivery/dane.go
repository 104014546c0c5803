package delivery

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/mailroot/mailroot/internal/dane"
	"github.com/mailroot/mailroot/internal/tlsrpt"
)

// daneFor is the DANE policy (RFC 7672) of an attempt to domain: nil when
// no MX host has secure TLSA records, else a policy whose hosts map gives
// each such host its own (forHost). DANE needs a validating resolver
// (dns.trust_ad) and delivery.dane; it applies to MX hosts (and the
// domain's own host) whose address records are secure, not to a smart
// host or an address literal. An MX answer that was not secure still
// lets a host's own signed TLSA records protect it (RFC 7672 §2.2.1 "MAY
// proceed", as for domains hosted by a provider with a signed zone), but
// then only the host name, not the mail domain, identifies the server for
// DANE-TA (§3.2.2): an attacker could have chosen the host.
//
// For a host with a secure TLSA RRset TLS is mandatory and its certificate
// must match a usable record (internal/dane): a mismatch makes the host a
// temporary failure (4.7.5) that names the reason, and the next host is
// tried. A set of unusable records only asks for TLS (§2.2). A TLSA lookup
// that fails (SERVFAIL, timeout) keeps the mail from that host, 4.7.5 too:
// an attacker who blocks the answer must not turn DANE off (§2.2). Hosts
// without secure TLSA records get the domain's other policy. DANE takes
// precedence over MTA-STS (RFC 8461 §2).
func (s *Service) daneFor(ctx context.Context, domain string, targets []target) (*tlsPolicy, *Error) {
	if !s.conf().Delivery.DANE || !s.dns.TrustAD {
		return nil, nil
	}
	var hosts map[string]*tlsPolicy
	for _, t := range targets {
		if t.kind != "MX host" && t.kind != "mail host" {
			continue
		}
		if _, done := hosts[t.host]; done {
			continue
		}
		if !s.addrsSecure(ctx, t.host) {
			continue
		}
		set, err := dane.Lookup(ctx, s.dns, t.host, t.port)
		var hp *tlsPolicy
		switch {
		case err != nil:
			why := fmt.Sprintf("its TLSA records could not be looked up, and DANE needs them: %v", err)
			hp = &tlsPolicy{kind: PolicyDANE, enforce: true, why: "DANE", allow: func(string) string { return why }, rptType: tlsrpt.PolicyTLSA}
		case set.Found:
			hp = danePolicy(domain, t.host, t.dnssec, set)
		default:
			continue
		}
		if hosts == nil {
			hosts = map[string]*tlsPolicy{}
		}
		hosts[t.host] = hp
	}
	if hosts == nil {
		return nil, nil
	}
	return &tlsPolicy{kind: PolicyDANE, hosts: hosts}, nil
}

// danePolicy is the policy of a host with the secure TLSA records set:
// TLS, verified by set instead of WebPKI. The names DANE-TA checks are the
// host's and, when the MX answer was secure (mxSecure), the destination
// domain's (RFC 7672 §3.2.2).
func danePolicy(domain, host string, mxSecure bool, set dane.Set) *tlsPolicy {
	names := []string{host}
	if mxSecure && domain != host {
		names = append(names, domain)
	}
	sum := sha256.New()
	for _, r := range set.Records {
		fmt.Fprintln(sum, r.String())
	}
	p := &tlsPolicy{
		kind:    PolicyDANE,
		enforce: true,
		why:     "the DANE TLSA records of " + host + " (" + strings.TrimSuffix(set.Name, ".") + ") require TLS",
		verify: func(_ string, st tls.ConnectionState) string {
			if err := set.Verify(st, names, time.Time{}); err != nil {
				return err.Error()
			}
			return ""
		},
		// Sessions are pooled per check: only mail checked against the same
		// records reuses one.
		verifier: "dane " + hex.EncodeToString(sum.Sum(nil)[:12]),
		rptType:  tlsrpt.PolicyTLSA,
	}
	for _, r := range set.Records {
		p.rptString = append(p.rptString, r.String())
	}
	if !set.Authenticate() {
		p.why = "the DANE TLSA records of " + host + " (all unusable: " + strings.Join(set.Unusable, "; ") + ") require TLS"
	}
	return p
}

// forHost is the policy for t: its own under DANE, else the domain's.
func (p *tlsPolicy) forHost(t target) *tlsPolicy {
	if p.kind != PolicyDANE || p.hosts == nil {
		return p
	}
	if hp, ok := p.hosts[t.host]; ok && p.applies(t) {
		hp.domain = p.domain
		return hp
	}
	return p.other
}

// addrsSecure reports whether host's address records are DNSSEC-validated:
// TLSA records are looked up only for such hosts (RFC 7672 §2.2.2). The
// answers come from the resolver's cache when it keeps one.
func (s *Service) addrsSecure(ctx context.Context, host string) bool {
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		if a, err := s.dns.LookupSecure(ctx, host, qt); err == nil && a.Secure {
			return true
		}
	}
	return false
}
