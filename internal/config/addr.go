package config

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// addrRule is what a host:port key accepts beyond a host name or IP
// address and a numeric port from 1 to 65535.
type addrRule struct {
	// wildcard allows an empty host: every interface.
	wildcard bool
	// freePort allows port 0: a free port chosen at each start.
	freePort bool
	// ipOnly requires an IP address as the host.
	ipOnly bool
}

var (
	// smtpListenAddr is an SMTP listen address (ingress.listen, [[site]]
	// listen): ":25" listens everywhere, port 0 on a free port.
	smtpListenAddr = addrRule{wildcard: true, freePort: true}
	// listenAddr is nats.listen: nats-server reads port 0 as its default
	// 4222, not as a free port, so 0 is refused.
	listenAddr = addrRule{wildcard: true}
	// remoteAddr is a server to connect to (smart_host): it needs a host.
	remoteAddr = addrRule{}
	// ipAddr is delivery.dns_server: a resolver is named by its address,
	// as in /etc/resolv.conf.
	ipAddr = addrRule{ipOnly: true}
)

// checkHostPort checks the host:port value v of key against r, so that a
// listen address or server that cannot work is refused with the
// configuration instead of failing at bind or dial time.
func checkHostPort(key, v string, r addrRule) error {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return &KeyError{key, fmt.Sprintf("%q is not host:port (an IPv6 address goes in brackets: [::1]:25)", v)}
	}
	if msg := checkPort(port, r.freePort); msg != "" {
		return &KeyError{key, fmt.Sprintf("%q: %s", v, msg)}
	}
	if msg := checkHost(host, r); msg != "" {
		return &KeyError{key, fmt.Sprintf("%q: %s", v, msg)}
	}
	return nil
}

func checkPort(port string, freePort bool) string {
	n, err := strconv.ParseUint(port, 10, 16)
	switch {
	case freePort && err != nil:
		return fmt.Sprintf("port %q is not a number from 1 to 65535 (or 0: a free port)", port)
	case err != nil || n == 0 && !freePort:
		return fmt.Sprintf("port %q is not a number from 1 to 65535", port)
	}
	return ""
}

func checkHost(host string, r addrRule) string {
	switch {
	case host == "" && r.wildcard:
		return ""
	case host == "":
		return "needs a host"
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return ""
	}
	if r.ipOnly {
		return fmt.Sprintf("host %q is not an IP address", host)
	}
	if !isHostName(host) {
		return fmt.Sprintf("host %q is neither an IP address nor a host name", host)
	}
	return ""
}

// isHostName reports whether h is a DNS host name: dot-separated labels
// of letters, digits, '-' and '_' (no label starting or ending with '-'),
// at most 253 characters, an optional trailing dot.
func isHostName(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// checkNATSURLs checks the comma-separated server list of nats.url the way
// nats.go reads it: a URL or a bare host[:port], the port defaulting to
// the scheme's. Errors do not repeat the URL, which may hold a password.
func checkNATSURLs(list string) error {
	for i, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !strings.Contains(s, "://") {
			s = "nats://" + s
		}
		u, err := url.Parse(s)
		if err != nil {
			return &KeyError{"nats.url", fmt.Sprintf("server %d of the list is not a URL like nats://host:4222", i+1)}
		}
		msg := checkHost(u.Hostname(), remoteAddr)
		if msg == "" && u.Port() != "" {
			msg = checkPort(u.Port(), false)
		}
		if msg != "" {
			return &KeyError{"nats.url", fmt.Sprintf("server %d of the list: %s", i+1, msg)}
		}
	}
	return nil
}

// metricsListenAddr is metrics.listen: ":9425" listens everywhere, port 0
// on a free port (tests).
var metricsListenAddr = addrRule{wildcard: true, freePort: true}

// checkMetricsListen checks metrics.listen, and that it does not take the
// port of nats.listen or of an SMTP site on the same host: one of the two
// would fail to bind, and the metrics listener only warns.
func (c *Config) checkMetricsListen() error {
	l := c.Metrics.Listen
	if l == "" {
		return nil
	}
	if err := checkHostPort("metrics.listen", l, metricsListenAddr); err != nil {
		return err
	}
	others := map[string]string{}
	if c.NATS.Listen != "" {
		others[c.NATS.Listen] = "nats.listen"
	}
	for _, s := range c.EffectiveSites() {
		for _, a := range s.Listen {
			others[a] = "the listen address of site " + strconv.Quote(s.Name)
		}
	}
	for a, key := range others {
		if sameSocket(l, a) {
			return &KeyError{"metrics.listen", fmt.Sprintf("%q takes the port of %s (%q)", l, key, a)}
		}
	}
	return nil
}

// sameSocket reports whether listen addresses a and b would bind the same
// port: the same non-zero port on the same host, or on any host when
// either listens everywhere.
func sameSocket(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb || pa == "0" {
		return false
	}
	return ha == hb || ha == "" || hb == "" || ha == "0.0.0.0" || hb == "0.0.0.0" || ha == "::" || hb == "::"
}
