package config

import (
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"

	"github.com/mailroot/mailroot/internal/envelope"
)

// ConnectRules is a parsed connect_allow or connect_deny list.
//
// Entries are an address ("192.0.2.7", "2001:db8::7"), a network in CIDR
// notation ("198.51.100.0/24", "2001:db8::/32"), a domain and all its
// subdomains (".example.net": mx.example.net, a.b.example.net and
// example.net itself) or one host name ("example.net" exactly). Names
// match the client's forward-confirmed reverse DNS name (its PTR name,
// which must resolve back to its address), never a name the client gives.
type ConnectRules struct {
	// Nets are the address and network entries, with the entry as written.
	Nets []ConnectNet
	// Names are the name entries, lower case without a final dot; a
	// leading "." means the domain and its subdomains.
	Names []string
}

// ConnectNet is one address or network entry.
type ConnectNet struct {
	Prefix netip.Prefix
	Entry  string
}

// ParseConnectRules parses a connect_allow or connect_deny list; an error
// names the entry.
func ParseConnectRules(list []string) (ConnectRules, error) {
	var r ConnectRules
	for _, e := range list {
		e = strings.TrimSpace(e)
		if p, err := parseNetworks([]string{e}); err == nil {
			r.Nets = append(r.Nets, ConnectNet{Prefix: p[0], Entry: e})
			continue
		}
		if !utf8.ValidString(e) {
			return ConnectRules{}, fmt.Errorf("%q is not UTF-8", e)
		}
		if strings.ContainsAny(e, "/:") || isDottedNumbers(e) {
			return ConnectRules{}, fmt.Errorf("%q is not an address or network", e)
		}
		name, sub := strings.CutPrefix(e, ".")
		if strings.HasPrefix(name, "*.") {
			return ConnectRules{}, fmt.Errorf("%q: write a domain and its subdomains as %q", e, "."+name[2:])
		}
		if err := envelope.CheckDomain(name); err != nil || strings.HasPrefix(name, ".") {
			return ConnectRules{}, fmt.Errorf("%q is not an address, network or domain name", e)
		}
		name = envelope.NormalizeDomain(name)
		if sub {
			name = "." + name
		}
		r.Names = append(r.Names, name)
	}
	return r, nil
}

// isDottedNumbers reports whether s looks like an IPv4 address (digits
// and dots only), so that a mistyped one is an error, not a host name.
func isDottedNumbers(s string) bool {
	return s != "" && strings.Trim(s, "0123456789.") == ""
}

// Empty reports whether the list has no entries.
func (r ConnectRules) Empty() bool { return len(r.Nets) == 0 && len(r.Names) == 0 }

// MatchAddr returns the first address or network entry containing ip.
func (r ConnectRules) MatchAddr(ip netip.Addr) (string, bool) {
	if !ip.IsValid() {
		return "", false
	}
	ip = ip.Unmap()
	for _, n := range r.Nets {
		if n.Prefix.Contains(ip) {
			return n.Entry, true
		}
	}
	return "", false
}

// MatchName returns the first name entry matching name, a host name
// (any case, final dot or not); "" matches nothing.
func (r ConnectRules) MatchName(name string) (string, bool) {
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	if name == "" {
		return "", false
	}
	for _, e := range r.Names {
		if dom, sub := strings.CutPrefix(e, "."); sub {
			if name == dom || strings.HasSuffix(name, e) {
				return e, true
			}
		} else if name == e {
			return e, true
		}
	}
	return "", false
}
