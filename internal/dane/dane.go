// Package dane authenticates the TLS certificates of SMTP servers by
// DNSSEC-validated TLSA records (DANE for SMTP, RFC 7672), for delivery.
//
// Lookup asks for the TLSA RRset of "_<port>._tcp.<host>" and keeps it only
// when the answer is secure, i.e. DNSSEC-validated by a resolver that is
// trusted to say so (internal/resolver, dns.trust_ad): an insecure answer,
// or none, means DANE does not apply to the host (RFC 7672 §2.2). A lookup
// that fails otherwise (SERVFAIL, timeout) is an error, and the caller must
// not use the host: an attacker who can block the TLSA answer must not be
// able to downgrade the session (§2.2).
//
// A secure RRset makes TLS mandatory for the host. Of its records only
// DANE-EE(3) and DANE-TA(2) are usable for SMTP (§3.1.3: PKIX-TA(0) and
// PKIX-EE(1) are not), with selector Cert(0) or SPKI(1) and matching type
// Full(0), SHA2-256(1) or SHA2-512(2); a record with another value, or
// whose digest has the wrong length, is unusable. When every record is
// unusable, TLS is still mandatory but the certificate is not
// authenticated (§2.2, Postfix's "encrypt" level): Set.Authenticate then
// reports false and Verify accepts any certificate.
//
// Verify checks a TLS session's certificates against the usable records:
//
//   - DANE-EE: the server's own certificate (or its public key) is the one
//     published. Neither its names nor its validity dates are checked
//     (§3.1.1): the TLSA record is the binding.
//   - DANE-TA: a certificate the server sent in its chain (or its public
//     key) is the trust anchor published; the server's certificate must
//     chain to it as in PKIX (dates included) and name one of the
//     reference identifiers: the TLSA base domain (the MX host name) and,
//     when the MX lookup was secure, the destination domain (§3.1.2,
//     §3.2.2). The anchor must be in the chain: SMTP servers that publish
//     DANE-TA records are required to send it (§3.1.2).
//
// One matching record is enough (RFC 6698 §4.1).
package dane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/mailroot/mailroot/internal/resolver"
)

// Certificate usages (RFC 6698 §2.1.1, RFC 7218 acronyms).
const (
	PKIXTA uint8 = 0
	PKIXEE uint8 = 1
	DANETA uint8 = 2
	DANEEE uint8 = 3
)

// Selectors (RFC 6698 §2.1.2).
const (
	SelectorCert uint8 = 0
	SelectorSPKI uint8 = 1
)

// Matching types (RFC 6698 §2.1.3).
const (
	MatchFull   uint8 = 0
	MatchSHA256 uint8 = 1
	MatchSHA512 uint8 = 2
)

// ErrMismatch is wrapped by Verify's errors: no usable record matched the
// server's certificates.
var ErrMismatch = errors.New("dane: no TLSA record matches the certificate")

// Record is one TLSA record in usable form.
type Record struct {
	Usage, Selector, MatchingType uint8
	// Data is the certificate association data: the DER of a certificate
	// or SubjectPublicKeyInfo, or its digest.
	Data []byte
}

// String renders r as in a zone file, "3 1 1 <hex>".
func (r Record) String() string {
	return fmt.Sprintf("%d %d %d %x", r.Usage, r.Selector, r.MatchingType, r.Data)
}

// ParseRecord checks a TLSA RR and returns it in usable form, or why it is
// unusable for SMTP.
func ParseRecord(rr *dns.TLSA) (Record, error) {
	return NewRecord(rr.Usage, rr.Selector, rr.MatchingType, rr.Certificate)
}

// NewRecord is ParseRecord from the record's fields, data in hex.
func NewRecord(usage, selector, matching uint8, data string) (Record, error) {
	r := Record{Usage: usage, Selector: selector, MatchingType: matching}
	switch usage {
	case DANETA, DANEEE:
	case PKIXTA, PKIXEE:
		return r, fmt.Errorf("usage %d (PKIX) is not used for SMTP (RFC 7672 §3.1.3)", usage)
	default:
		return r, fmt.Errorf("unknown usage %d", usage)
	}
	if selector != SelectorCert && selector != SelectorSPKI {
		return r, fmt.Errorf("unknown selector %d", selector)
	}
	b, err := hex.DecodeString(data)
	if err != nil {
		return r, fmt.Errorf("association data is not hex: %v", err)
	}
	switch matching {
	case MatchFull:
		if len(b) == 0 {
			return r, errors.New("empty association data")
		}
	case MatchSHA256:
		if len(b) != sha256.Size {
			return r, fmt.Errorf("SHA2-256 digest of %d bytes", len(b))
		}
	case MatchSHA512:
		if len(b) != sha512.Size {
			return r, fmt.Errorf("SHA2-512 digest of %d bytes", len(b))
		}
	default:
		return r, fmt.Errorf("unknown matching type %d", matching)
	}
	r.Data = b
	return r, nil
}

// Matches reports whether cert is the certificate (or has the public key)
// that r names.
func (r Record) Matches(cert *x509.Certificate) bool {
	var b []byte
	switch r.Selector {
	case SelectorCert:
		b = cert.Raw
	case SelectorSPKI:
		b = cert.RawSubjectPublicKeyInfo
	default:
		return false
	}
	switch r.MatchingType {
	case MatchFull:
		return bytes.Equal(b, r.Data)
	case MatchSHA256:
		d := sha256.Sum256(b)
		return bytes.Equal(d[:], r.Data)
	case MatchSHA512:
		d := sha512.Sum512(b)
		return bytes.Equal(d[:], r.Data)
	}
	return false
}

// Set is the outcome of a TLSA lookup for one host and port.
type Set struct {
	// Name is the name asked, "_25._tcp.mx.example.com.".
	Name string
	// Found: the TLSA RRset exists and is secure. TLS is then mandatory
	// for the host; without it DANE does not apply.
	Found bool
	// Records are the usable records of the set.
	Records []Record
	// Unusable says, for every record that is not usable, why.
	Unusable []string
}

// Authenticate reports whether a session must be verified by the records:
// the set was found and has usable records. A found set of unusable
// records only asks for TLS.
func (s Set) Authenticate() bool { return s.Found && len(s.Records) > 0 }

// Equal reports whether s and o ask the same of a session: a session
// verified under one is then verified under the other.
func (s Set) Equal(o Set) bool {
	if s.Found != o.Found || len(s.Records) != len(o.Records) {
		return false
	}
	for i, r := range s.Records {
		q := o.Records[i]
		if r.Usage != q.Usage || r.Selector != q.Selector || r.MatchingType != q.MatchingType || !bytes.Equal(r.Data, q.Data) {
			return false
		}
	}
	return true
}

// Resolver is what Lookup needs of internal/resolver.
type Resolver interface {
	LookupSecure(ctx context.Context, name string, qtype uint16) (resolver.Answer, error)
}

var _ Resolver = (*resolver.Resolver)(nil)

// Name is the TLSA owner name of host at port, "_25._tcp.host.".
func Name(host string, port int) string {
	return "_" + strconv.Itoa(port) + "._tcp." + dns.Fqdn(strings.ToLower(host))
}

// Lookup returns the secure TLSA records of host at port. A set that does
// not exist (an NXDOMAIN or NODATA answer, secure or not) or whose answer is
// not secure is a Set with Found false and a nil error: DANE does not
// apply. Any other failure is an error: the host must not be used.
func Lookup(ctx context.Context, r Resolver, host string, port int) (Set, error) {
	s := Set{Name: Name(host, port)}
	a, err := r.LookupSecure(ctx, s.Name, dns.TypeTLSA)
	switch {
	case resolver.IsNegative(err):
		return s, nil
	case err != nil:
		return s, fmt.Errorf("dane: lookup %s TLSA: %w", s.Name, err)
	case !a.Secure:
		return s, nil
	}
	s.Found = true
	for _, rr := range a.RRs {
		t, ok := rr.(*dns.TLSA)
		if !ok {
			continue
		}
		rec, err := ParseRecord(t)
		if err != nil {
			s.Unusable = append(s.Unusable, fmt.Sprintf("%d %d %d: %v", t.Usage, t.Selector, t.MatchingType, err))
			continue
		}
		s.Records = append(s.Records, rec)
	}
	return s, nil
}

// Verify checks the certificates of a TLS session against s: nil when one
// usable record matches (see the package comment), or when s has no
// usable record (TLS alone is asked); else an error wrapping ErrMismatch
// that says what was tried. names are the reference identifiers for
// DANE-TA (the MX host name first); now is the time for DANE-TA's chain
// (zero: the current time).
func (s Set) Verify(st tls.ConnectionState, names []string, now time.Time) error {
	if !s.Authenticate() {
		return nil
	}
	certs := st.PeerCertificates
	if len(certs) == 0 {
		return fmt.Errorf("%w: the server sent no certificate", ErrMismatch)
	}
	leaf := certs[0]
	var taErrs []string
	triedTA := false
	for _, r := range s.Records {
		switch r.Usage {
		case DANEEE:
			if r.Matches(leaf) {
				return nil
			}
		case DANETA:
			for i, c := range certs {
				if !r.Matches(c) {
					continue
				}
				triedTA = true
				err := chainTo(certs, i, names, now)
				if err == nil {
					return nil
				}
				taErrs = append(taErrs, err.Error())
			}
		}
	}
	switch {
	case len(taErrs) > 0:
		return fmt.Errorf("%w: DANE-TA anchor found in the chain, but %s", ErrMismatch, strings.Join(taErrs, "; "))
	case triedTA:
		return ErrMismatch
	default:
		return fmt.Errorf("%w: none of %d record(s) of %s matches the certificate of %s or its chain", ErrMismatch, len(s.Records), s.Name, subject(leaf))
	}
}

// chainTo verifies certs[0] to the anchor certs[ta] with the certificates
// between them as intermediates, for one of names.
func chainTo(certs []*x509.Certificate, ta int, names []string, now time.Time) error {
	roots := x509.NewCertPool()
	roots.AddCert(certs[ta])
	inter := x509.NewCertPool()
	for _, c := range certs[1:ta] {
		inter.AddCert(c)
	}
	if ta == 0 {
		// The anchor is the server's certificate itself: nothing to chain,
		// but the name and dates still hold as for any DANE-TA.
		roots = x509.NewCertPool()
		roots.AddCert(certs[0])
	}
	var last error
	for _, n := range names {
		n = strings.TrimSuffix(n, ".")
		if n == "" {
			continue
		}
		_, err := certs[0].Verify(x509.VerifyOptions{DNSName: n, Roots: roots, Intermediates: inter, CurrentTime: now})
		if err == nil {
			return nil
		}
		last = err
	}
	if last == nil {
		return errors.New("no name to check the certificate for")
	}
	return fmt.Errorf("the chain does not verify for %s: %v", strings.Join(names, " or "), last)
}

func subject(c *x509.Certificate) string {
	if len(c.DNSNames) > 0 {
		return strconv.Quote(c.DNSNames[0])
	}
	return strconv.Quote(c.Subject.String())
}
