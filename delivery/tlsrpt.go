package delivery

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/mailroot/mailroot/internal/mtasts"
	"github.com/mailroot/mailroot/internal/smtpclient"
	"github.com/mailroot/mailroot/internal/tlsrpt"
)

// TLS-RPT (RFC 8460, delivery.tls_rpt): every session with an MX host of
// a domain whose policy is MTA-STS (enforce or testing) or DANE is
// counted, success or the failure's result type, per policy domain,
// policy, MX host and UTC day, by a tlsrpt.Counter that publishes its
// counts to the TLSRPT stream every few seconds (so the cost per session
// is a map update, not a write); every delivery process adds its own
// records there. Each delivery process also runs a tlsrpt.Reporter,
// which on the day after claims each domain's report in the mta-tlsrpt
// bucket (one process wins) and sends it to the rua of the domain's
// `_smtp._tls` record: mail through mail.in, or an HTTPS POST.

// tlsReporting is the TLS-RPT part of a Service; nil when off.
type tlsReporting struct {
	counter  *tlsrpt.Counter
	reporter *tlsrpt.Reporter
}

// rptFailure is the RFC 8460 result type of a failed session, carried in
// the Err of the host's *Error to be counted (countTry).
type rptFailure struct {
	resultType, reason string
}

func (f *rptFailure) Error() string { return f.resultType + ": " + f.reason }

// setupTLSRPT creates the TLSRPT stream and bucket and the Counter and
// Reporter of delivery.tls_rpt (Run, before the first delivery).
func (s *Service) setupTLSRPT(ctx context.Context) error {
	cfg := s.conf() // read once: the TLS-RPT settings take effect at start
	if !cfg.Delivery.TLSRPT {
		return nil
	}
	kv, err := tlsrpt.EnsureStream(ctx, s.js, cfg.NATS.Replicas)
	if err != nil {
		return err
	}
	contact := cfg.Delivery.TLSRPTContact
	if contact == "" {
		contact = "postmaster@" + cfg.Hostname
	}
	org := cfg.Delivery.TLSRPTOrg
	if org == "" {
		org = cfg.Hostname
	}
	now := func() time.Time { return s.Now() }
	log := s.log.With("part", "tlsrpt")
	s.rpt = &tlsReporting{
		counter: &tlsrpt.Counter{JS: s.js, ID: fmt.Sprintf("%s.%d.%d", cfg.Hostname, os.Getpid(), time.Now().UnixNano()),
			Now: now, Log: log},
		reporter: &tlsrpt.Reporter{JS: s.js, Room: s.Room, KV: kv, LookupTXT: s.dns.LookupTXT, Addrs: s.dns.Addrs, Roots: s.roots,
			Now: now, Hostname: cfg.Hostname, Org: org, Contact: contact, From: contact, Log: log},
	}
	return nil
}

// runTLSRPT runs the Counter's flushes and the Reporter until ctx ends.
func (s *Service) runTLSRPT(ctx context.Context) {
	if s.rpt == nil {
		return
	}
	go s.rpt.reporter.Run(ctx)
	s.rpt.counter.Run(ctx)
}

// stopTLSRPT stores the last counts, once no delivery is in flight.
func (s *Service) stopTLSRPT() {
	if s.rpt != nil {
		s.rpt.counter.Stop(10 * time.Second)
	}
}

// countTLS counts one outcome for t under pol: rtype "" is a success.
func (s *Service) countTLS(pol *tlsPolicy, t target, ip netip.Addr, rtype, reason string) {
	if s.rpt == nil || pol.rptType == "" || !pol.applies(t) {
		return
	}
	r := tlsrpt.Result{Domain: pol.domain, PolicyType: pol.rptType, PolicyString: pol.rptString, MXHost: pol.rptMX, Success: rtype == ""}
	if rtype != "" {
		r.ResultType, r.ReceivingMX, r.Reason = rtype, t.host, reasonCode(reason)
		if ip.IsValid() {
			r.ReceivingIP = ip.String()
		}
	}
	s.rpt.counter.Add(r)
}

// reasonCode shortens a failure's words for failure-reason-code.
func reasonCode(why string) string {
	why = smtpclient.OneLine(why)
	if len(why) > 200 {
		why = why[:200]
	}
	return why
}

// countRefused counts a host the policy does not let us use at all: not
// among an MTA-STS policy's mx patterns, or (DANE) its TLSA records could
// not be looked up.
func (s *Service) countRefused(pol *tlsPolicy, t target, why string) {
	rtype := tlsrpt.ResultValidationFailure
	if pol.kind == PolicyDANE {
		rtype = tlsrpt.ResultDNSSECInvalid
	}
	s.countTLS(pol, t, netip.Addr{}, rtype, why)
}

// countTry counts the session of one tryHost: a delivery that met the
// policy; one that a testing policy let through although it failed it
// (fail: the host was outside the policy; res.tlsFailure: no TLS or an
// unverified certificate); or a host failed for its TLS (rptFailure, or a
// failed handshake where TLS was required). A host that failed otherwise
// (no connection, a 4xx greeting) had no TLS session to count.
func (s *Service) countTry(pol *tlsPolicy, t target, ip netip.Addr, res result, herr *Error, fail string) {
	if s.rpt == nil {
		return
	}
	if herr != nil {
		var f *rptFailure
		switch {
		case errors.As(herr, &f):
			s.countTLS(pol, t, ip, f.resultType, f.reason)
		case errors.Is(herr.Err, smtpclient.ErrTLSFailed) && pol.mustVerify(t):
			s.countTLS(pol, t, ip, tlsrpt.ResultValidationFailure, herr.Message)
		}
		return
	}
	switch {
	case fail != "":
		s.countTLS(pol, t, ip, tlsrpt.ResultValidationFailure, fail)
	case res.tlsFailure == "":
		s.countTLS(pol, t, ip, "", "")
	case strings.Contains(res.tlsFailure, "did not offer STARTTLS"):
		s.countTLS(pol, t, ip, tlsrpt.ResultSTARTTLSNotSupported, "STARTTLS not offered")
	case res.tls == "":
		s.countTLS(pol, t, ip, tlsrpt.ResultValidationFailure, res.tlsFailure)
	default:
		_, why, _ := strings.Cut(res.tls, " unverified: ")
		s.countTLS(pol, t, ip, tlsrpt.ClassifyVerify(why), why)
	}
}

// failure is the rptFailure of a certificate that did not verify under
// pol: a DANE TLSA mismatch, or a WebPKI failure by its kind.
func (p *tlsPolicy) failure(why string) error {
	if p.verify != nil {
		return &rptFailure{tlsrpt.ResultTLSAInvalid, why}
	}
	return &rptFailure{tlsrpt.ClassifyVerify(why), why}
}

// noTLSFailure is the rptFailure of a host that did not offer STARTTLS.
var noTLSFailure error = &rptFailure{tlsrpt.ResultSTARTTLSNotSupported, "STARTTLS not offered"}

// stsReport fills the TLS-RPT description of an MTA-STS policy in p.
func stsReport(p *tlsPolicy, sts *mtasts.Policy) {
	p.rptType = tlsrpt.PolicySTS
	p.rptString = strings.Split(strings.TrimSuffix(sts.String(), "\n"), "\n")
	p.rptMX = sts.MX
}

// countSTSFetch counts a policy that the TXT record announced but that
// could not be had (RFC 8460 §4.3.2.1): not fetched, invalid, or served
// with a certificate that did not verify. With a cached policy still in
// force nothing failed for the session, and nothing is counted.
func (s *Service) countSTSFetch(domain string, r mtasts.Result) {
	if s.rpt == nil || r.Err == nil || r.Policy != nil || r.ID == "" {
		return
	}
	rtype := tlsrpt.ResultSTSPolicyFetch
	var cv *tls.CertificateVerificationError
	switch {
	case errors.Is(r.Err, mtasts.ErrPolicy):
		rtype = tlsrpt.ResultSTSPolicyInvalid
	case errors.As(r.Err, &cv):
		rtype = tlsrpt.ResultSTSWebPKIInvalid
	}
	s.rpt.counter.Add(tlsrpt.Result{Domain: domain, PolicyType: tlsrpt.PolicySTS, ResultType: rtype, Reason: reasonCode(r.Err.Error())})
}
