package delivery

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/miekg/dns"

	"github.com/mailroot/mailroot/internal/resolver"
)

// target is one host to try, in order: an MX host, the domain itself
// (implicit MX), an address literal or the smart host.
type target struct {
	// host is the name used for TLS SNI, the self check and reports; for
	// address literals it is the IP.
	host string
	// port is the TCP port to connect to.
	port int
	// addrs are the host's addresses when already known; nil means they are
	// looked up when the host's turn comes.
	addrs []netip.Addr
	// user and passwordFile are the smart host's login ("": none;
	// passwordFile "" with a user: MAILROOT_SMART_HOST_PASSWORD).
	user, passwordFile string
	// kind says what the host is, for reports: "MX host", "smart host",
	// "mail host" (no MX, the domain's own address) or "address literal".
	kind string
	// dnssec: the host name came from a DNSSEC-validated answer (a secure
	// MX RRset, or a secure denial of one for the domain itself), so the
	// mail domain too identifies the host for DANE (RFC 7672 §2.2.1,
	// §3.2.2).
	dnssec bool
}

// resolve returns the hosts to try for domain in order, or the *Error that
// ends the attempt for every recipient.
func (s *Service) resolve(ctx context.Context, domain string) ([]target, *Error) {
	// A [[domain]] smart host wins over the global one.
	sh, user, pwFile := s.conf().Delivery.SmartHost, s.conf().Delivery.SmartHostUser, s.conf().Delivery.SmartHostPasswordFile
	if d, ok := s.conf().Domain(domain); ok && d.SmartHost != "" {
		sh, user, pwFile = d.SmartHost, d.SmartHostUser, d.SmartHostPasswordFile
	}
	if sh != "" {
		host, p, err := net.SplitHostPort(sh)
		port, perr := strconv.Atoi(p)
		if err != nil || perr != nil {
			return nil, permErr("5.3.5", "", "smart host %q is not host:port", sh)
		}
		t := target{host: host, port: port, kind: "smart host", user: user, passwordFile: pwFile}
		if ip, err := netip.ParseAddr(host); err == nil {
			t.addrs = []netip.Addr{ip.Unmap()}
		}
		return []target{t}, nil
	}
	if strings.HasPrefix(domain, "[") {
		ip, ok := parseLiteral(domain)
		if !ok {
			return nil, permErr("5.1.2", "", "bad address literal %s", domain)
		}
		return []target{{host: ip.String(), port: s.conf().Delivery.Port, addrs: []netip.Addr{ip}, kind: "address literal"}}, nil
	}
	if domain == "" {
		return nil, permErr("5.1.2", "", "no destination domain")
	}

	mxAns, err := s.dns.LookupSecure(ctx, domain, dns.TypeMX)
	rrs := mxAns.RRs
	switch {
	case resolver.IsNegative(err):
		// No MX: the domain itself is the implicit MX (RFC 5321 §5.1).
		addrs, aerr := s.dns.Addrs(ctx, domain)
		switch {
		case aerr == nil:
			if what := s.self.name(domain); what != "" {
				return nil, permErr("5.4.6", "", "mail for %s loops back to myself: mail host %s is %s", domain, domain, what)
			}
			return []target{{host: domain, port: s.conf().Delivery.Port, addrs: addrs, kind: "mail host", dnssec: mxAns.Secure}}, nil
		case errors.Is(err, resolver.ErrNXDomain) && errors.Is(aerr, resolver.ErrNXDomain):
			return nil, permErr("5.1.2", "", "domain %s does not exist", domain)
		case resolver.IsNegative(aerr):
			return nil, permErr("5.1.2", "", "domain %s has no MX or address records", domain)
		default:
			return nil, tempErr("4.4.3", "", aerr, "dns: %v", aerr)
		}
	case err != nil:
		return nil, tempErr("4.4.3", "", err, "dns: %v", err)
	}

	mxs := make([]*dns.MX, 0, len(rrs))
	for _, rr := range rrs {
		mxs = append(mxs, rr.(*dns.MX))
	}
	// RFC 7505: a single "0 ." record says the domain takes no mail; a "."
	// among real MX records is ignored.
	if len(mxs) == 1 && mxs[0].Mx == "." {
		return nil, permErr("5.1.10", "", "domain %s does not accept mail (null MX)", domain)
	}
	mxs = slices.DeleteFunc(mxs, func(mx *dns.MX) bool { return mx.Mx == "." })
	rand.Shuffle(len(mxs), func(i, j int) { mxs[i], mxs[j] = mxs[j], mxs[i] })
	slices.SortStableFunc(mxs, func(a, b *dns.MX) int { return int(a.Preference) - int(b.Preference) })

	// RFC 5321 §5.1: if we are one of the MX hosts (by one of our host
	// names: the hostname, a site's, an announced ingress's), only more
	// preferred hosts may be tried; if none is left the mail would loop.
	// Hosts that are ourselves by address are found in deliver.
	var out []target
	for _, mx := range mxs {
		host := strings.TrimSuffix(strings.ToLower(mx.Mx), ".")
		if what := s.self.name(host); what != "" {
			if len(out) == 0 {
				return nil, permErr("5.4.6", "", "mail for %s loops back to myself: MX host %s is %s", domain, host, what)
			}
			break
		}
		out = append(out, target{host: host, port: s.conf().Delivery.Port, kind: "MX host", dnssec: mxAns.Secure})
	}
	return out, nil
}

// parseLiteral parses "[192.0.2.1]" or "[IPv6:2001:db8::1]".
func parseLiteral(d string) (netip.Addr, bool) {
	lit := strings.TrimSuffix(strings.TrimPrefix(d, "["), "]")
	if rest, ok := strings.CutPrefix(strings.ToLower(lit), "ipv6:"); ok {
		ip, err := netip.ParseAddr(rest)
		return ip, err == nil && ip.Is6()
	}
	ip, err := netip.ParseAddr(lit)
	return ip, err == nil && ip.Is4()
}

// remoteName renders "host[ip]" for reports, or "[ip]" for literals.
func remoteName(host string, ip netip.Addr) string {
	if host == ip.String() {
		return "[" + host + "]"
	}
	return host + "[" + ip.String() + "]"
}
