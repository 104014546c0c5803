package delivery

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"

	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/mtasts"
	"github.com/mailroot/mailroot/internal/smtpclient"
)

// TLS policy kinds: what a delivery attempt asked of the remote's TLS,
// as the delivered event's tls_policy and the delivery log line name it
// (README "TLS policies").
const (
	// PolicyOpportunistic: STARTTLS when offered, any certificate; a failed
	// handshake is retried in plain text. The default.
	PolicyOpportunistic = "opportunistic"
	// PolicyMTASTS: the domain's MTA-STS policy (RFC 8461) in enforce
	// mode: only MX hosts its patterns match, and only over TLS whose
	// certificate verifies for the MX host name.
	PolicyMTASTS = "mta-sts"
	// PolicyMTASTSTesting: an MTA-STS policy in testing mode: delivered as
	// opportunistic, what enforce would have refused is recorded.
	PolicyMTASTSTesting = "mta-sts-testing"
	// PolicyDANE: TLSA records (RFC 7672) decide how a host's certificate
	// verifies. Not built here: daneFor is the hook.
	PolicyDANE = "dane"
	// PolicyRequireTLS: the domain's require_tls: TLS that verifies
	// (WebPKI, system roots or delivery.tls_ca_file) for every MX host.
	PolicyRequireTLS = "require_tls"
	// PolicyREQUIRETLS: the message's REQUIRETLS (RFC 8689), the same
	// requirement whatever the domain asks.
	PolicyREQUIRETLS = "requiretls"
)

// tlsPolicy is what one delivery attempt asks of the TLS of each host,
// decided once per attempt (policyFor) and consulted by deliver (which
// hosts may be used) and tryHost (how a host's TLS must verify).
type tlsPolicy struct {
	// kind is one of the Policy* constants.
	kind string
	// domain is the destination domain the policy is of.
	domain string
	// enforce means a host is used only over TLS whose certificate
	// verifies; anything less is a temporary failure of that host (4.7.5,
	// 4.7.10) and the next host is tried.
	enforce bool
	// report means failures are recorded but do not stop delivery
	// (MTA-STS testing mode): the delivered event and the log say what
	// enforce would have refused.
	report bool
	// why names the requirement in failures: "TLS is required for
	// example.com", "the MTA-STS policy of example.com requires verified
	// TLS", ...
	why string
	// allow, when set, says whether an MX host may be used at all (the
	// MTA-STS mx patterns); "" when it may, else why not.
	allow func(host string) string
	// verify, when set, replaces the WebPKI check of a host's certificate
	// (smtpclient.Options.Verify: DANE's TLSA match), and verifier names
	// it for the connection pool's key (smtpclient.Dest.Verifier).
	verify   func(host string, st tls.ConnectionState) string
	verifier string
	// hosts and other make a DANE policy per host (delivery/dane.go,
	// forHost): hosts has the policy of each MX host with secure TLSA
	// records (or whose TLSA lookup failed), other the domain's policy
	// without DANE for the rest.
	hosts map[string]*tlsPolicy
	other *tlsPolicy
	// rptType, rptString and rptMX describe the policy to TLS-RPT
	// (delivery/tlsrpt.go): "sts" or "tlsa", "" for a policy not counted.
	rptType          string
	rptString, rptMX []string
}

// applies reports whether the policy governs t: MTA-STS and DANE are
// about a domain's MX hosts (the domain itself when it has no MX), not
// about a smart host or an address literal; require_tls and REQUIRETLS
// are about every host.
func (p *tlsPolicy) applies(t target) bool {
	switch p.kind {
	case PolicyMTASTS, PolicyMTASTSTesting, PolicyDANE:
		return t.kind == "MX host" || t.kind == "mail host"
	}
	return true
}

// hostAllowed says why t may not be used under p ("" when it may). In
// testing mode a refused host is used all the same and the refusal
// recorded in fail.
func (p *tlsPolicy) hostAllowed(t target, fail *string) string {
	if p.allow == nil || !p.applies(t) {
		return ""
	}
	why := p.allow(t.host)
	if why != "" && p.report {
		*fail = why
		return ""
	}
	return why
}

// hostOpts sets the certificate check of p in o, for a host it applies to.
func (p *tlsPolicy) hostOpts(t target, o *smtpclient.Options) {
	if p.verify != nil && p.applies(t) {
		o.Verify, o.Verifier = p.verify, p.verifier
	}
}

// mustVerify reports whether t must be used over verified TLS only.
func (p *tlsPolicy) mustVerify(t target) bool { return p.enforce && p.applies(t) }

// policyFor decides the TLS policy of one delivery attempt to domain,
// strongest first: DANE (daneFor) for the MX hosts that publish secure
// TLSA records, and for the others (forHost) an MTA-STS policy in
// enforce or testing mode, else the domain's require_tls, else
// opportunistic. REQUIRETLS on the message
// asks for verified TLS whatever the policy says. A non-nil *Error ends
// the attempt for every recipient (a policy that could not be decided
// and must not be guessed).
func (s *Service) policyFor(ctx context.Context, env *envelope.Envelope, domain string, targets []target) (*tlsPolicy, *Error) {
	dp, herr := s.daneFor(ctx, domain, targets)
	if herr != nil {
		return nil, herr
	}
	p := s.mtastsFor(ctx, env, domain, targets)
	if d, _ := s.conf().Domain(domain); d.RequireTLS && (p == nil || !p.enforce) {
		// The domain's own setting is a floor a testing policy does not
		// lower.
		p = &tlsPolicy{kind: PolicyRequireTLS, enforce: true, why: "TLS is required for " + domain}
	}
	if p == nil {
		p = &tlsPolicy{kind: PolicyOpportunistic}
	}
	p.domain = domain
	if env.RequireTLS && !p.enforce {
		// RFC 8689 §4.2.1: the message asks for verified TLS; a testing
		// policy's record of failures gives way to refusing them.
		p.kind, p.enforce, p.report, p.allow = PolicyREQUIRETLS, true, false, nil
		p.why = "the message requires TLS (REQUIRETLS)"
	}
	if dp != nil {
		// The hosts without TLSA records keep the policy decided above.
		dp.domain, dp.other = domain, p
		return dp, nil
	}
	return p, nil
}

// unverified is the temporary failure of a host whose certificate could
// not be verified for mail that needs it.
func (p *tlsPolicy) unverified(c *smtpclient.Client) *Error {
	return &Error{Enhanced: "4.7.5", Message: fmt.Sprintf("%s, but the certificate of %s could not be verified: %s", p.why, c.Remote(), c.VerifyError()), Remote: c.Remote(),
		Err: p.failure(c.VerifyError())}
}

// noTLS is the temporary failure of a host that did not offer STARTTLS
// to mail that needs TLS.
func (p *tlsPolicy) noTLS(remote string) *Error {
	return &Error{Enhanced: "4.7.10", Message: fmt.Sprintf("%s, but %s did not offer STARTTLS", p.why, remote), Remote: remote, Err: noTLSFailure}
}

// mtastsFor is the domain's MTA-STS policy (RFC 8461) as a tlsPolicy, nil
// when it has none in force (no policy, mode none, delivery.mta_sts off)
// or the attempt goes to a smart host or an address literal, which the
// policy is not about. A policy that cannot be fetched and is not cached
// is no policy (§5: the domain is treated as without one), logged.
func (s *Service) mtastsFor(ctx context.Context, env *envelope.Envelope, domain string, targets []target) *tlsPolicy {
	if s.MTASTS == nil || len(targets) == 0 || (targets[0].kind != "MX host" && targets[0].kind != "mail host") {
		return nil
	}
	r := s.MTASTS.Get(ctx, domain)
	if r.Err != nil {
		s.log.Warn("MTA-STS policy not fetched", "qid", env.QueueID, "domain", domain, "cached", r.Policy != nil, "err", r.Err)
		s.countSTSFetch(domain, r)
	}
	sts := r.Policy
	if sts == nil || sts.Mode == mtasts.None {
		return nil
	}
	p := &tlsPolicy{
		kind:    PolicyMTASTS,
		enforce: sts.Mode == mtasts.Enforce,
		report:  sts.Mode == mtasts.Testing,
		why:     "the MTA-STS policy of " + domain + " requires verified TLS",
		allow: func(host string) string {
			if sts.Match(host) {
				return ""
			}
			return fmt.Sprintf("not among the MX hosts of the MTA-STS policy of %s (%s)", domain, strings.Join(sts.MX, ", "))
		},
	}
	if p.report {
		p.kind = PolicyMTASTSTesting
	}
	stsReport(p, sts)
	return p
}
