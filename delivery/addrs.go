package delivery

import (
	"net/netip"

	"github.com/mailroot/mailroot/internal/config"
)

// orderAddrs puts a host's addresses in the order they are tried, by
// delivery.address_preference: "ipv4" or "ipv6" puts that family first;
// "any" alternates the families, IPv4 first, so that a host whose IPv6
// (or IPv4) path is broken costs at most one failed connection before the
// other family is tried (as Postfix's smtp_balance_inet_protocols). The
// order within a family is the DNS answer's. Every address is kept: when
// the connections of one family fail, the other's are tried (deliver).
func orderAddrs(addrs []netip.Addr, pref string) []netip.Addr {
	var v4, v6 []netip.Addr
	for _, a := range addrs {
		if a.Unmap().Is4() {
			v4 = append(v4, a)
		} else {
			v6 = append(v6, a)
		}
	}
	if len(v4) == 0 || len(v6) == 0 {
		return addrs
	}
	out := make([]netip.Addr, 0, len(addrs))
	switch pref {
	case config.AddressIPv4:
		return append(append(out, v4...), v6...)
	case config.AddressIPv6:
		return append(append(out, v6...), v4...)
	}
	for i := range max(len(v4), len(v6)) {
		if i < len(v4) {
			out = append(out, v4[i])
		}
		if i < len(v6) {
			out = append(out, v6[i])
		}
	}
	return out
}
