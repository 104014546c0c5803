// Package resolver is Mailroot's one DNS client, used by ingress (client
// names, and the inbound checks) and delivery (MX, addresses, TLSA, the
// MTA-STS record). It asks the configured name servers, or every
// nameserver of /etc/resolv.conf, in order: a server that times out,
// fails (SERVFAIL, REFUSED) or cannot be reached is skipped for the next,
// each try bounded by the timeout and the whole lookup by the caller's
// context. UDP answers that are truncated are asked again over TCP.
//
// Negative answers are told apart, because mail needs to: a name that does
// not exist (ErrNXDomain) and a name without records of the type asked
// (ErrNoData) are final; anything else is temporary. Every error is a
// *net.DNSError whose UnwrapErr is ErrNXDomain, ErrNoData or the cause,
// so that errors.Is works and libraries written for net.Resolver (an SPF
// library, go-msgauth) read IsNotFound and IsTemporary as they expect.
//
// The AD bit (RFC 4035 §3.2.3) of an answer is believed only when the
// resolver was configured as a validating one (TrustAD): DANE needs to
// know an answer was DNSSEC-validated, and a forged AD bit from an
// arbitrary server on the path must not be taken for that (RFC 7672 §1.3).
//
// Answers may be cached (CacheSize > 0), for their TTL capped at
// MaxCacheTTL; negative answers for the SOA minimum, capped the same way.
package resolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/mailroot/mailroot/internal/config"
)

// The two final negative answers.
var (
	ErrNXDomain = errors.New("no such domain")
	ErrNoData   = errors.New("no records of that type")
)

// IsNegative reports whether err is a final negative answer: the name does
// not exist, or has no records of the type asked.
func IsNegative(err error) bool { return errors.Is(err, ErrNXDomain) || errors.Is(err, ErrNoData) }

// Resolver asks DNS servers. The zero value is not usable: make one with
// New or set Servers.
type Resolver struct {
	// Servers are "ip:port", asked in order.
	Servers []string
	// Timeout bounds one question to one server (default 5 s).
	Timeout time.Duration
	// Attempts is how many rounds over Servers a lookup makes (default 2).
	Attempts int
	// TrustAD: the servers validate DNSSEC, and their AD bit is believed.
	TrustAD bool
	// CacheSize is the most answers kept; 0 keeps none.
	CacheSize int
	// MaxCacheTTL caps how long an answer is kept (default 5 min).
	MaxCacheTTL time.Duration
	// Now is the clock of the cache (default time.Now).
	Now func() time.Time

	mu    sync.Mutex
	cache map[cacheKey]*cached
}

// Config configures New.
type Config struct {
	// Servers ("ip:port"); empty means every nameserver of
	// /etc/resolv.conf.
	Servers   []string
	Timeout   time.Duration
	Attempts  int
	TrustAD   bool
	CacheSize int
}

// New returns a resolver for c.
func New(c Config) (*Resolver, error) {
	servers := c.Servers
	if len(servers) == 0 {
		var err error
		if servers, err = SystemServers("/etc/resolv.conf"); err != nil {
			return nil, err
		}
	}
	return &Resolver{Servers: servers, Timeout: c.Timeout, Attempts: c.Attempts, TrustAD: c.TrustAD, CacheSize: c.CacheSize}, nil
}

// SystemServers returns every nameserver of the resolv.conf file at path.
func SystemServers(path string) ([]string, error) {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("resolver: read %s: %w", path, err)
	}
	if len(cc.Servers) == 0 {
		return nil, fmt.Errorf("resolver: no nameserver in %s", path)
	}
	out := make([]string, len(cc.Servers))
	for i, s := range cc.Servers {
		out[i] = net.JoinHostPort(s, cc.Port)
	}
	return out, nil
}

// Answer is the records of one type for one name.
type Answer struct {
	RRs []dns.RR
	// Secure: the server set the AD bit and the resolver trusts it.
	Secure bool
}

// Lookup returns the records of type qtype for name (CNAMEs followed by the
// server), or an error (see the package comment).
func (r *Resolver) Lookup(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	a, err := r.LookupSecure(ctx, name, qtype)
	return a.RRs, err
}

// LookupSecure is Lookup that also says whether the answer was validated.
// A negative answer is returned with Secure set too (an authenticated
// denial of existence), alongside its error.
func (r *Resolver) LookupSecure(ctx context.Context, name string, qtype uint16) (Answer, error) {
	name = dns.Fqdn(strings.ToLower(name))
	key := cacheKey{name, qtype}
	if c, ok := r.fromCache(key); ok {
		return c.answer, c.err
	}
	resp, err := r.ask(ctx, name, qtype)
	if err != nil {
		return Answer{}, dnsError(name, qtype, err, "")
	}
	a := Answer{Secure: r.TrustAD && resp.AuthenticatedData}
	for _, rr := range resp.Answer {
		if rr.Header().Rrtype == qtype {
			a.RRs = append(a.RRs, rr)
		}
	}
	var nerr error
	switch {
	case resp.Rcode == dns.RcodeNameError:
		nerr = dnsError(name, qtype, ErrNXDomain, "")
	case len(a.RRs) == 0:
		nerr = dnsError(name, qtype, ErrNoData, "")
	}
	r.toCache(key, resp, a, nerr)
	return a, nerr
}

// ask sends the question to the servers in turn until one answers with
// NOERROR or NXDOMAIN.
func (r *Resolver) ask(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	if len(r.Servers) == 0 {
		return nil, errors.New("no DNS server configured")
	}
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	q.SetEdns0(1232, false)
	// Ask for the AD bit (RFC 6840 §5.7) when it will be believed.
	q.AuthenticatedData = r.TrustAD
	attempts := r.Attempts
	if attempts <= 0 {
		attempts = 2
	}
	var last error
	for range attempts {
		for _, srv := range r.Servers {
			if err := ctx.Err(); err != nil {
				if last == nil {
					last = err
				}
				return nil, last
			}
			resp, err := r.exchange(ctx, q, srv, "udp")
			if err == nil && resp.Truncated {
				resp, err = r.exchange(ctx, q, srv, "tcp")
			}
			if err != nil {
				last = fmt.Errorf("%s: %w", srv, err)
				continue
			}
			switch resp.Rcode {
			case dns.RcodeSuccess, dns.RcodeNameError:
				return resp, nil
			}
			last = fmt.Errorf("%s: %s", srv, dns.RcodeToString[resp.Rcode])
		}
	}
	return nil, last
}

// exchange sends q to srv over network with the resolver's timeout.
func (r *Resolver) exchange(ctx context.Context, q *dns.Msg, srv, network string) (*dns.Msg, error) {
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := &dns.Client{Net: network, Timeout: timeout}
	m, _, err := c.ExchangeContext(ctx, q, srv)
	return m, err
}

// dnsError wraps cause as the *net.DNSError the package returns.
func dnsError(name string, qtype uint16, cause error, server string) error {
	e := &net.DNSError{Name: strings.TrimSuffix(name, "."), Server: server, UnwrapErr: cause}
	switch {
	case errors.Is(cause, ErrNXDomain):
		e.Err, e.IsNotFound = "no such host", true
	case errors.Is(cause, ErrNoData):
		e.Err, e.IsNotFound = "no "+dns.TypeToString[qtype]+" records", true
	default:
		e.Err = dns.TypeToString[qtype] + " query failed: " + cause.Error()
		e.IsTemporary = true
		var ne net.Error
		e.IsTimeout = errors.As(cause, &ne) && ne.Timeout() || errors.Is(cause, context.DeadlineExceeded)
	}
	return e
}

// Addrs looks up the A then AAAA records of host. It returns ErrNXDomain
// when the name does not exist, ErrNoData when it has no address, or a
// temporary error when neither lookup gave an answer.
func (r *Resolver) Addrs(ctx context.Context, host string) ([]netip.Addr, error) {
	var out []netip.Addr
	var errs [2]error
	for i, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		rrs, err := r.Lookup(ctx, host, qt)
		errs[i] = err
		for _, rr := range rrs {
			var ip net.IP
			switch v := rr.(type) {
			case *dns.A:
				ip = v.A
			case *dns.AAAA:
				ip = v.AAAA
			}
			if a, ok := netip.AddrFromSlice(ip); ok {
				out = append(out, a.Unmap())
			}
		}
	}
	switch {
	case len(out) > 0:
		return out, nil
	case errors.Is(errs[0], ErrNXDomain) && errors.Is(errs[1], ErrNXDomain):
		return nil, errs[0]
	case IsNegative(errs[0]) && IsNegative(errs[1]):
		return nil, dnsError(dns.Fqdn(host), dns.TypeA, ErrNoData, "")
	case !IsNegative(errs[0]):
		return nil, errs[0]
	default:
		return nil, errs[1]
	}
}

// The methods below have net.Resolver's shapes, for code and libraries
// written against it.

// LookupTXT returns the TXT records of name, each record's strings joined
// (RFC 7208 §3.3, RFC 6376 §3.6.2.2).
func (r *Resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	rrs, err := r.Lookup(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		out = append(out, strings.Join(rr.(*dns.TXT).Txt, ""))
	}
	return out, nil
}

// LookupMX returns the MX records of name, in the server's order.
func (r *Resolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	rrs, err := r.Lookup(ctx, name, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	out := make([]*net.MX, 0, len(rrs))
	for _, rr := range rrs {
		mx := rr.(*dns.MX)
		out = append(out, &net.MX{Host: mx.Mx, Pref: mx.Preference})
	}
	return out, nil
}

// LookupIPAddr returns the addresses of host (A and AAAA).
func (r *Resolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	addrs, err := r.Addrs(ctx, host)
	if err != nil {
		return nil, err
	}
	out := make([]net.IPAddr, len(addrs))
	for i, a := range addrs {
		out[i] = net.IPAddr{IP: a.AsSlice()}
	}
	return out, nil
}

// LookupNetIP returns the addresses of host: network "ip", "ip4" or "ip6".
func (r *Resolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	switch network {
	case "ip4", "ip6":
		qt := dns.TypeA
		if network == "ip6" {
			qt = dns.TypeAAAA
		}
		rrs, err := r.Lookup(ctx, host, qt)
		if err != nil {
			return nil, err
		}
		var out []netip.Addr
		for _, rr := range rrs {
			var ip net.IP
			if a, ok := rr.(*dns.A); ok {
				ip = a.A
			} else {
				ip = rr.(*dns.AAAA).AAAA
			}
			if a, ok := netip.AddrFromSlice(ip); ok {
				out = append(out, a.Unmap())
			}
		}
		return out, nil
	default:
		return r.Addrs(ctx, host)
	}
}

// LookupAddr returns the names (PTR records, with the trailing dot) of
// the address addr.
func (r *Resolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	rev, err := dns.ReverseAddr(addr)
	if err != nil {
		return nil, &net.DNSError{Err: "unrecognized address", Name: addr}
	}
	rrs, err := r.Lookup(ctx, rev, dns.TypePTR)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		out = append(out, rr.(*dns.PTR).Ptr)
	}
	return out, nil
}

// ConfirmedName returns the forward-confirmed name of ip: a PTR name whose
// own addresses include ip (FCrDNS), lower case, without the trailing dot.
// A lookup that failed only temporarily is returned as an error; no
// confirmed name is "" and nil.
func (r *Resolver) ConfirmedName(ctx context.Context, ip netip.Addr) (string, error) {
	names, err := r.LookupAddr(ctx, ip.String())
	if IsNegative(err) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	var temp error
	for _, n := range names {
		addrs, err := r.Addrs(ctx, n)
		if err != nil {
			if !IsNegative(err) {
				temp = err
			}
			continue
		}
		for _, a := range addrs {
			if a == ip.Unmap() {
				return strings.TrimSuffix(strings.ToLower(n), "."), nil
			}
		}
	}
	return "", temp
}

// ForConfig returns the resolver configured by c's [dns] section.
func ForConfig(c config.Config) (*Resolver, error) {
	return New(Config{
		Servers:   c.ResolverServers(),
		Timeout:   c.DNS.Timeout.D(),
		Attempts:  c.DNS.Attempts,
		TrustAD:   c.DNS.TrustAD,
		CacheSize: c.DNS.CacheSize,
	})
}
