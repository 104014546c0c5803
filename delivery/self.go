package delivery

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// selfTTL is how long the addresses of this server's host name are cached.
const selfTTL = 5 * time.Minute

// self recognises the addresses this server receives mail on, so that
// delivery never connects to itself (a mail loop; RFC 5321 §5.1 and
// Postfix's "mail for … loops back to myself"). An address is ours on a
// port when an ingress.listen entry binds that address and port, or binds
// the port on all addresses (then every interface address counts), or when
// the address is one of the host name's and some listen entry uses the
// port (NAT: the host name's public address is not on an interface).
type self struct {
	hostname string
	listen   []listenAddr
	lookup   func(ctx context.Context, host string) ([]netip.Addr, error)
	// ifaces lists the machine's interface addresses.
	ifaces func() []netip.Addr

	mu        sync.Mutex
	hostIPs   []netip.Addr
	hostUntil time.Time
}

// listenAddr is one parsed ingress.listen entry.
type listenAddr struct {
	raw  string
	ip   netip.Addr // invalid: all addresses
	name string     // a host name to resolve instead of ip
	port int
}

func newSelf(hostname string, listen []string, lookup func(ctx context.Context, host string) ([]netip.Addr, error)) *self {
	s := &self{hostname: strings.TrimSuffix(strings.ToLower(hostname), "."), lookup: lookup, ifaces: interfaceAddrs}
	for _, l := range listen {
		host, p, err := net.SplitHostPort(l)
		port, perr := strconv.Atoi(p)
		if err != nil || perr != nil {
			continue
		}
		la := listenAddr{raw: l, port: port}
		switch ip, err := netip.ParseAddr(host); {
		case host == "":
		case err == nil && ip.IsUnspecified():
		case err == nil:
			la.ip = ip.Unmap()
		default:
			la.name = host
		}
		s.listen = append(s.listen, la)
	}
	return s
}

// interfaceAddrs returns the addresses of the machine's interfaces.
func interfaceAddrs() []netip.Addr {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range as {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out
}

// is reports whether ip:port is this server, and if so why, in words for
// the bounce: "where this server listens (127.0.0.1:25)".
func (s *self) is(ctx context.Context, ip netip.Addr, port int) string {
	ip = ip.Unmap()
	usesPort := false
	for _, l := range s.listen {
		if l.port != port {
			continue
		}
		usesPort = true
		switch {
		case l.name != "":
			if s.resolves(ctx, l.name, ip) {
				return fmt.Sprintf("where this server listens (ingress.listen %s)", l.raw)
			}
		case l.ip.IsValid():
			if l.ip == ip {
				return fmt.Sprintf("where this server listens (ingress.listen %s)", l.raw)
			}
		default:
			for _, a := range s.ifaces() {
				if a == ip {
					return fmt.Sprintf("an address of this machine, where this server listens on all addresses (ingress.listen %s)", l.raw)
				}
			}
		}
	}
	if usesPort {
		for _, a := range s.hostAddrs(ctx) {
			if a == ip {
				return fmt.Sprintf("an address of this server's host name %s, and this server listens on port %d", s.hostname, port)
			}
		}
	}
	return ""
}

// resolves reports whether host has the address ip.
func (s *self) resolves(ctx context.Context, host string, ip netip.Addr) bool {
	if strings.EqualFold(host, "localhost") {
		return ip.IsLoopback()
	}
	addrs, _ := s.lookup(ctx, host)
	for _, a := range addrs {
		if a.Unmap() == ip {
			return true
		}
	}
	return false
}

// hostAddrs returns the addresses of the host name, cached for selfTTL
// (a failed lookup caches no addresses).
func (s *self) hostAddrs(ctx context.Context) []netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Now().Before(s.hostUntil) {
		return s.hostIPs
	}
	s.hostIPs, _ = s.lookup(ctx, s.hostname)
	s.hostUntil = time.Now().Add(selfTTL)
	return s.hostIPs
}
