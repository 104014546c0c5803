package ingress

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/metrics"
	"github.com/mailroot/mailroot/internal/resolver"
)

// Connection control (IIS's "Connection" dialog, Postfix's
// smtpd_client_restrictions at connect): a site's connect_allow and
// connect_deny lists and its DNSBL zones decide, before the greeting,
// whether a client may talk to it at all.
//
// A refused client gets "554 5.7.1" instead of 220 and, as RFC 5321 §3.1
// asks, "503 5.7.1" to every command but QUIT (each counts toward
// max_bad_commands, so a client that never quits is cut off). The refusal
// is logged with the rule or zone that matched and counted in
// mailroot_ingress_refusals_total{site,reason} (connect_deny,
// connect_allow, dnsbl, dns_tempfail).
//
// Order: a connect_deny entry that matches refuses (deny wins); then a
// non-empty connect_allow must match; then the DNSBL zones are asked
// (not for relay_networks clients). Name entries need the client's
// forward-confirmed reverse DNS name, looked up only when a list has one
// (and shared with reverse_dns). When that lookup fails for a while, a
// deny name cannot match and the client is let in, but a client that only
// an allow name could admit gets "421 4.7.0": it may be allowed, and will
// retry. A DNSBL that does not answer in time lets the client in (logged).
//
// Every lookup before the greeting shares one deadline, lookupBound from
// the first lookup, so a dead DNS server cannot hold the greeting past it.

// lookupBound bounds the DNS lookups before the greeting, all together:
// 10 s, or the site's timeout when that is shorter.
func (ss *session) lookupBound() time.Duration { return min(10*time.Second, ss.sp.cfg.Timeout.D()) }

// lookupDeadline is when the lookups before the greeting must be done.
func (ss *session) lookupDeadline() time.Time {
	if ss.lookupBy.IsZero() {
		ss.lookupBy = time.Now().Add(ss.lookupBound())
	}
	return ss.lookupBy
}

// connCtl is a site's connection control.
type connCtl struct {
	allow, deny config.ConnectRules
	// zones are the DNSBL zones, without a final dot.
	zones []string
}

// newConnCtl parses the site's lists; nil when it has none.
func newConnCtl(sc config.Site) (*connCtl, error) {
	c := &connCtl{}
	var err error
	if c.allow, err = config.ParseConnectRules(sc.ConnectAllow); err != nil {
		return nil, errors.New("connect_allow: " + err.Error())
	}
	if c.deny, err = config.ParseConnectRules(sc.ConnectDeny); err != nil {
		return nil, errors.New("connect_deny: " + err.Error())
	}
	for _, z := range sc.DNSBL {
		c.zones = append(c.zones, strings.TrimSuffix(strings.ToLower(z), "."))
	}
	if c.allow.Empty() && c.deny.Empty() && len(c.zones) == 0 {
		return nil, nil
	}
	return c, nil
}

// refusal is why a connection is refused: the metric's reason, the rule
// or zone for the log, and the greeting.
type refusal struct {
	reason string
	rule   string
	reply  *reply
}

// screen applies the site's connection control; nil lets the client in,
// else the reply is its greeting (554 5.7.1, or 421 4.7.0 when DNS failed
// and that alone kept the client out).
func (ss *session) screen() *reply {
	ctl := ss.sp.ctl
	if ctl == nil {
		return nil
	}
	ctx, cancel := context.WithDeadline(context.Background(), ss.lookupDeadline())
	defer cancel()
	t0 := time.Now()
	r := ctl.check(ctx, ss)
	if r == nil {
		return nil
	}
	defer func() {
		ss.site.logConnect(ss.raw, ss.ip, r.reply.Code, r.reason, len(r.reply.Error())+2, time.Since(t0))
	}()
	if r.reply.Code >= 500 {
		ss.refused = true
	}
	ss.log.Warn("connection refused", "reason", r.reason, "rule", r.rule, "reply", r.reply.Code)
	ss.site.m.Refused(r.reason)
	return r.reply
}

func (c *connCtl) check(ctx context.Context, ss *session) *refusal {
	ip := ss.ip
	host := ss.sp.cfg.Hostname
	denied := func(reason, rule string) *refusal {
		return &refusal{reason, rule, rep(554, "5.7.1", host+" Client host ["+ip.String()+"] rejected: Access denied")}
	}
	if e, ok := c.deny.MatchAddr(ip); ok {
		return denied(metrics.RefusedConnectDeny, e)
	}
	allowed := c.allow.Empty()
	if !allowed {
		_, allowed = c.allow.MatchAddr(ip)
	}
	if len(c.deny.Names) > 0 || (!allowed && len(c.allow.Names) > 0) {
		name, err := ss.confirmedName(ctx)
		if e, ok := c.deny.MatchName(name); ok {
			return denied(metrics.RefusedConnectDeny, e)
		}
		if !allowed {
			_, allowed = c.allow.MatchName(name)
		}
		if err != nil {
			if !allowed && len(c.allow.Names) > 0 {
				return &refusal{metrics.RefusedDNSTempfail, "reverse DNS: " + err.Error(),
					rep(421, "4.7.0", host+" Cannot look up your host name now, try again later")}
			}
			ss.log.Info("reverse DNS lookup failed, connect_deny names not checked", "err", err)
		}
	}
	if !allowed {
		return denied(metrics.RefusedConnectAllow, "not in connect_allow")
	}
	if len(c.zones) == 0 || ss.relay {
		return nil
	}
	if zone, txt := ss.dnsbl(ctx, c.zones); zone != "" {
		text := host + " Service unavailable; client [" + ip.String() + "] blocked using " + zone
		if txt != "" {
			text += "; " + txt
		}
		return &refusal{metrics.RefusedDNSBL, zone, rep(554, "5.7.1", text)}
	}
	return nil
}

// confirmedName is the client's forward-confirmed reverse DNS name, ""
// when it has none: the one reverse_dns found, else looked up now.
func (ss *session) confirmedName(ctx context.Context) (string, error) {
	if ss.sp.cfg.ReverseDNS {
		if ss.clientName == "unknown" {
			return "", ss.nameErr
		}
		return ss.clientName, ss.nameErr
	}
	if !ss.ip.IsValid() {
		return "", nil
	}
	return ss.s.Resolver.ConfirmedName(ctx, ss.ip)
}

// dnsbl asks every zone at once whether the client is listed, and returns
// the first listing zone in configuration order with its TXT reason ("" if
// none). A zone that fails or does not answer in time does not list.
func (ss *session) dnsbl(ctx context.Context, zones []string) (zone, txt string) {
	type result struct {
		listed bool
		txt    string
	}
	res := make([]result, len(zones))
	var wg sync.WaitGroup
	for i, z := range zones {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name, ok := dnsblName(ss.ip, z)
			if !ok {
				return
			}
			listed, err := dnsblListed(ctx, ss.s.Resolver, name)
			if err != nil {
				ss.log.Info("DNSBL lookup failed, client let in", "zone", z, "err", err)
				return
			}
			if !listed {
				return
			}
			res[i].listed = true
			if t, err := ss.s.Resolver.LookupTXT(ctx, name); err == nil && len(t) > 0 {
				res[i].txt = sanitize(t[0])
				if len(res[i].txt) > 200 {
					res[i].txt = res[i].txt[:200]
				}
			}
		}()
	}
	wg.Wait()
	for i, r := range res {
		if r.listed {
			return zones[i], r.txt
		}
	}
	return "", ""
}

// dnsblName is the name to ask zone about ip (RFC 5782 §2.1, §2.4): the
// IPv4 octets reversed, or the 32 nibbles of an IPv6 address reversed.
func dnsblName(ip netip.Addr, zone string) (string, bool) {
	if !ip.IsValid() {
		return "", false
	}
	rev, err := dns.ReverseAddr(ip.Unmap().String())
	if err != nil {
		return "", false
	}
	rev = strings.TrimSuffix(strings.TrimSuffix(rev, "in-addr.arpa."), "ip6.arpa.")
	return rev + zone + ".", true
}

// dnsblListed reports whether name has an A record in 127.0.0.0/8 (RFC
// 5782 §2.1). The 127.255.255.0/24 answers some lists give for a refused
// query (a public resolver, over quota) are errors, not listings.
func dnsblListed(ctx context.Context, r *resolver.Resolver, name string) (bool, error) {
	rrs, err := r.Lookup(ctx, name, dns.TypeA)
	if resolver.IsNegative(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, rr := range rrs {
		a, ok := netip.AddrFromSlice(rr.(*dns.A).A)
		if !ok {
			continue
		}
		a = a.Unmap()
		switch {
		case netip.MustParsePrefix("127.255.255.0/24").Contains(a):
			return false, &net.DNSError{Name: name, Err: "the list refused the query (" + a.String() + ")"}
		case netip.MustParsePrefix("127.0.0.0/8").Contains(a):
			return true, nil
		}
	}
	return false, nil
}
