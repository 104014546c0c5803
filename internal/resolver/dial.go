package resolver

import (
	"context"
	"errors"
	"net"
	"net/netip"
)

// DialVia returns a dial function (for an http.Transport) that resolves
// the host of "host:port" with addrs (a Resolver's Addrs: the configured
// DNS servers, not the system's) and connects to each address in turn.
// A nil addrs dials addr as it is. Used by the HTTPS clients of MTA-STS
// and TLS-RPT.
func DialVia(addrs func(ctx context.Context, host string) ([]netip.Addr, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		if addrs == nil {
			return d.DialContext(ctx, network, addr)
		}
		if ip, err := netip.ParseAddr(host); err == nil {
			return d.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
		}
		ips, err := addrs(ctx, host)
		if err != nil {
			return nil, err
		}
		var errs []error
		for _, ip := range ips {
			conn, err := d.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
			if err == nil {
				return conn, nil
			}
			errs = append(errs, err)
		}
		return nil, errors.Join(errs...)
	}
}
