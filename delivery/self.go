package delivery

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
)

// selfTTL is how long the addresses of our host names are cached.
const selfTTL = 5 * time.Minute

// self recognises the addresses and host names this server receives mail
// on, so that delivery never connects to itself (a mail loop; RFC 5321
// §5.1 and Postfix's "mail for … loops back to myself"). "This server" is
// every site of the configuration and, in a split deployment, every
// ingress process that announces itself in the mta-listeners bucket
// (bus.BucketListeners).
//
// An address is ours on a port when a listener binds that address and
// port, or binds the port on all addresses (then every interface address of
// its machine counts), or when the address is one of our host names' and
// that name's site listens on the port (NAT: the public address is not on
// an interface). A host name is ours when it is the configured hostname, a
// site's hostname, or one announced by an ingress process.
type self struct {
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)
	// ifaces lists the machine's interface addresses.
	ifaces func() []netip.Addr
	// machine is os.Hostname(): an announced loopback address is ours only
	// when it comes from the same machine.
	machine string
	// now is the clock of the announcements' expiry.
	now func() time.Time

	// local are the listeners and names of the configuration.
	local view

	mu sync.Mutex
	// remote are the announced ones, by bucket key; list is the same in
	// key order, rebuilt when remote changes (views runs per delivery).
	remote map[string]announced
	list   []announced
	// addrs caches the addresses of host names for selfTTL.
	addrs map[string]cachedAddrs
	// local interface addresses, cached for ifaceTTL.
	ifaceAddrs []netip.Addr
	ifaceUntil time.Time
}

// ifaceTTL is how long this machine's interface addresses are cached:
// listing them is a netlink round trip, and a listener on all addresses
// would otherwise ask for every delivery to its port.
const ifaceTTL = 30 * time.Second

// view is a set of listeners and host names.
type view struct {
	listen []listener
	names  []hostName
}

// announced is one mta-listeners entry.
type announced struct {
	view
	expires time.Time
}

type cachedAddrs struct {
	addrs []netip.Addr
	until time.Time
}

// listener is one address and port that some ingress binds.
type listener struct {
	ip   netip.Addr // when neither name nor all
	name string     // a host name to resolve (a listen entry of the configuration)
	all  bool       // all addresses: those of ifaces
	// ifaces are the interface addresses of the announcing machine for
	// all; nil means this machine's.
	ifaces []netip.Addr
	port   int
	// why is the reason for the bounce, "where this server listens
	// (ingress.listen 127.0.0.1:25)".
	why string
}

// hostName is one of our host names and the ports listened on under it.
type hostName struct {
	name  string
	ports []int
	// what describes the name: "this server's own host name"; of names
	// it in an address's description: "this server's host name mx.test".
	what, of string
	// who listens on the ports: "this server", "ingress mx2-4711".
	who string
}

func newSelf(cfg config.Config, lookup func(ctx context.Context, host string) ([]netip.Addr, error)) *self {
	s := &self{lookup: lookup, ifaces: interfaceAddrs, now: time.Now,
		remote: map[string]announced{}, addrs: map[string]cachedAddrs{}}
	s.machine, _ = os.Hostname()
	me := hostName{name: normName(cfg.Hostname), what: "this server's own host name", who: "this server"}
	me.of = "this server's host name " + me.name
	names := []hostName{me}
	for _, site := range cfg.EffectiveSites() {
		src := func(l string) string { return "site " + site.Name + ", listen " + l }
		if len(cfg.Sites) == 0 {
			src = func(l string) string { return "ingress.listen " + l }
		}
		var ports []int
		for _, l := range site.Listen {
			host, p, err := net.SplitHostPort(l)
			port, perr := strconv.Atoi(p)
			if err != nil || perr != nil || port == 0 {
				continue
			}
			ports = append(ports, port)
			la := listener{port: port, why: fmt.Sprintf("where this server listens (%s)", src(l))}
			switch ip, err := netip.ParseAddr(host); {
			case host == "" || err == nil && ip.IsUnspecified():
				la.all = true
				la.why = fmt.Sprintf("an address of this machine, where this server listens on all addresses (%s)", src(l))
			case err == nil:
				la.ip = ip.Unmap().WithZone("")
			default:
				la.name = host
			}
			s.local.listen = append(s.local.listen, la)
		}
		names[0].ports = append(names[0].ports, ports...)
		names = addName(names, siteName(site.Name, site.Hostname, ports, "", "this server"))
	}
	s.local.names = names
	return s
}

// siteName is the host name of a site; of is "" for ours, " of ingress
// mx2-4711" for an announced one.
func siteName(site, name string, ports []int, of, who string) hostName {
	h := hostName{name: normName(name), ports: ports, what: "the host name of site " + site + of, who: who}
	h.of = "the host name " + h.name + " of site " + site + of
	return h
}

// addName adds h to names unless the name is there already, in which case
// only its ports are added.
func addName(names []hostName, h hostName) []hostName {
	if h.name == "" {
		return names
	}
	for i := range names {
		if names[i].name == h.name {
			names[i].ports = append(names[i].ports, h.ports...)
			return names
		}
	}
	return append(names, h)
}

func normName(h string) string { return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(h)), ".") }

// interfaceAddrs returns the addresses of the machine's interfaces.
func interfaceAddrs() []netip.Addr {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range as {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr().Unmap().WithZone(""))
		}
	}
	return out
}

// views returns the configuration's view and the live announced ones.
func (s *self) views() []view {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]view, 1, 1+len(s.list))
	out[0] = s.local
	for _, a := range s.list {
		if now.Before(a.expires) {
			out = append(out, a.view)
		}
	}
	return out
}

// setRemote replaces the announced views (with s.mu held).
func (s *self) setRemote(m map[string]announced) {
	s.remote = m
	s.list = s.list[:0]
	for _, k := range slices.Sorted(maps.Keys(m)) {
		s.list = append(s.list, m[k])
	}
}

// localIfaces is s.ifaces, cached for ifaceTTL.
func (s *self) localIfaces() []netip.Addr {
	now := s.now()
	s.mu.Lock()
	if now.Before(s.ifaceUntil) {
		defer s.mu.Unlock()
		return s.ifaceAddrs
	}
	s.mu.Unlock()
	addrs := s.ifaces()
	s.mu.Lock()
	s.ifaceAddrs, s.ifaceUntil = addrs, now.Add(ifaceTTL)
	s.mu.Unlock()
	return addrs
}

// name reports whether host is one of our host names, and if so what it is
// in words for the bounce: "this server's own host name".
func (s *self) name(host string) string {
	host = normName(host)
	for _, v := range s.views() {
		for _, h := range v.names {
			if h.name == host {
				return h.what
			}
		}
	}
	return ""
}

// is reports whether ip:port is this server, and if so why, in words for
// the bounce: "where this server listens (ingress.listen 127.0.0.1:25)".
func (s *self) is(ctx context.Context, ip netip.Addr, port int) string {
	ip = ip.Unmap().WithZone("")
	views := s.views()
	for _, v := range views {
		for _, l := range v.listen {
			if l.port != port {
				continue
			}
			switch {
			case l.name != "":
				if s.resolves(ctx, l.name, ip) {
					return l.why
				}
			case l.all:
				ifaces := l.ifaces
				if ifaces == nil {
					ifaces = s.localIfaces()
				}
				if slices.Contains(ifaces, ip) {
					return l.why
				}
			case l.ip == ip:
				return l.why
			}
		}
	}
	for _, v := range views {
		for _, h := range v.names {
			if slices.Contains(h.ports, port) && s.resolves(ctx, h.name, ip) {
				return fmt.Sprintf("an address of %s, and %s listens on port %d", h.of, h.who, port)
			}
		}
	}
	return ""
}

// resolves reports whether host has the address ip; addresses are cached
// for selfTTL (a failed lookup caches no addresses).
func (s *self) resolves(ctx context.Context, host string, ip netip.Addr) bool {
	if strings.EqualFold(host, "localhost") {
		return ip.IsLoopback()
	}
	s.mu.Lock()
	c, ok := s.addrs[host]
	s.mu.Unlock()
	if !ok || !s.now().Before(c.until) {
		c.addrs, _ = s.lookup(ctx, host)
		c.until = s.now().Add(selfTTL)
		s.mu.Lock()
		s.addrs[host] = c
		s.mu.Unlock()
	}
	for _, a := range c.addrs {
		if a.Unmap() == ip {
			return true
		}
	}
	return false
}

// announcedView turns an mta-listeners entry into the listeners and names
// it announces. Loopback addresses of another machine are not ours.
func (s *self) announcedView(info bus.ListenerInfo) view {
	sameMachine := info.Machine != "" && info.Machine == s.machine
	mine := func(ip netip.Addr) bool { return sameMachine || !ip.IsLoopback() }
	var ifaces []netip.Addr
	for _, a := range info.Interfaces {
		if ip, err := netip.ParseAddr(a); err == nil && mine(ip.Unmap()) {
			ifaces = append(ifaces, ip.Unmap().WithZone(""))
		}
	}
	who := "ingress " + info.Node
	me := hostName{name: normName(info.Hostname), what: "the host name of " + who, who: who}
	me.of = "the host name " + me.name + " of " + who
	names := []hostName{me}
	var v view
	for _, site := range info.Sites {
		var ports []int
		for _, a := range site.Addrs {
			ap, err := netip.ParseAddrPort(a)
			if err != nil || ap.Port() == 0 {
				continue
			}
			port := int(ap.Port())
			ports = append(ports, port)
			l := listener{port: port, ip: ap.Addr().Unmap().WithZone("")}
			src := "site " + site.Name + ", bound to " + a
			switch {
			case l.ip.IsUnspecified():
				l.all, l.ifaces = true, ifaces
				if l.ifaces == nil {
					l.ifaces = []netip.Addr{} // none announced: nothing matches
				}
				l.why = fmt.Sprintf("an address of the machine of %s, where it listens on all addresses (%s)", who, src)
			case !mine(l.ip):
				continue
			default:
				l.why = fmt.Sprintf("where %s listens (%s)", who, src)
			}
			v.listen = append(v.listen, l)
		}
		names[0].ports = append(names[0].ports, ports...)
		names = addName(names, siteName(site.Name, site.Hostname, ports, " of "+who, who))
	}
	if names[0].name == "" {
		names = names[1:]
	}
	v.names = names
	return v
}

// watch keeps the announced listeners up to date from the mta-listeners
// bucket until ctx is done. synced is called once the bucket's entries
// were read, or the first attempt failed: delivery starts then.
func (s *self) watch(ctx context.Context, js jetstream.JetStream, replicas int, log *slog.Logger, synced func()) {
	for {
		err := s.watchOnce(ctx, js, replicas, synced)
		if ctx.Err() != nil {
			return
		}
		log.Warn("cannot watch the ingress listeners, retrying", "bucket", bus.BucketListeners, "err", err)
		synced()
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}

func (s *self) watchOnce(ctx context.Context, js jetstream.JetStream, replicas int, synced func()) error {
	kv, err := bus.EnsureListeners(ctx, js, replicas)
	if err != nil {
		return err
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch %s: %w", bus.BucketListeners, err)
	}
	defer func() { _ = w.Stop() }()
	// The current entries are collected first and replace the old view at
	// once; later updates apply one by one.
	fresh := map[string]announced{}
	apply := func(m map[string]announced, e jetstream.KeyValueEntry) {
		var info bus.ListenerInfo
		if e.Operation() != jetstream.KeyValuePut || len(e.Value()) == 0 || json.Unmarshal(e.Value(), &info) != nil {
			delete(m, e.Key())
			return
		}
		m[e.Key()] = announced{view: s.announcedView(info), expires: e.Created().Add(bus.ListenersTTL)}
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return fmt.Errorf("watch %s ended", bus.BucketListeners)
			case e == nil:
				s.mu.Lock()
				s.setRemote(fresh)
				fresh = nil
				s.mu.Unlock()
				synced()
			case fresh != nil:
				apply(fresh, e)
			default:
				s.mu.Lock()
				apply(s.remote, e)
				s.setRemote(s.remote)
				s.mu.Unlock()
			}
		}
	}
}
