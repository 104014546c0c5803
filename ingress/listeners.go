package ingress

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"github.com/mailroot/mailroot/internal/bus"
)

// announced counts the Services of this process that announce their
// listeners, so that each has a key of its own (tests run several).
var announced atomic.Int64

// announceListeners writes this process's bound listeners to the
// mta-listeners bucket (bus.BucketListeners), where every delivery process
// reads them to recognise mail to ourselves, and rewrites them every
// bus.ListenersRefresh (with the interface addresses of the moment) until
// stop is called; stop takes the entry back. The first write happens
// before it returns. A failure is logged and retried at the next refresh:
// the announcement helps delivery, it must not keep mail out.
func (s *Service) announceListeners(ctx context.Context) (stop func()) {
	key := nodeName(s.conf().Hostname)
	if n := announced.Add(1); n > 1 {
		key = fmt.Sprintf("%s-%d", key, n)
	}
	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	ensured := false
	put := func(val []byte, ttl time.Duration) {
		pctx, pcancel := context.WithTimeout(context.WithoutCancel(actx), 10*time.Second)
		defer pcancel()
		if !ensured {
			if _, err := bus.EnsureListeners(pctx, s.js, s.conf().NATS.Replicas); err != nil {
				s.log.Warn("cannot announce the listeners to delivery", "bucket", bus.BucketListeners, "err", err)
				return
			}
			ensured = true
		}
		if _, err := bus.PutTTL(pctx, s.js, bus.BucketListeners, key, val, ttl, 0); err != nil {
			s.log.Warn("cannot announce the listeners to delivery", "bucket", bus.BucketListeners, "key", key, "err", err)
		}
	}
	put(s.listenerInfo(key), bus.ListenersTTL)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(bus.ListenersRefresh)
		defer tick.Stop()
		for {
			select {
			case <-actx.Done():
				put(nil, time.Second) // gone: empty, and no delete marker stays
				return
			case <-tick.C:
				put(s.listenerInfo(key), bus.ListenersTTL)
			}
		}
	}()
	return func() { cancel(); <-done }
}

// listenerInfo is the value of this process's entry: every site with its
// bound addresses, and the interface addresses when a site listens on all
// addresses.
func (s *Service) listenerInfo(node string) []byte {
	info := bus.ListenerInfo{Node: node, Hostname: s.conf().Hostname}
	info.Machine, _ = os.Hostname()
	wildcard := false
	for _, sc := range s.conf().EffectiveSites() {
		addrs := s.SiteAddrs(sc.Name)
		for _, a := range addrs {
			if h, _, err := net.SplitHostPort(a); err == nil {
				if ip, err := netip.ParseAddr(h); err != nil || ip.IsUnspecified() {
					wildcard = true
				}
			}
		}
		info.Sites = append(info.Sites, bus.ListenerSite{Name: sc.Name, Hostname: sc.Hostname, Addrs: addrs})
	}
	if wildcard {
		if as, err := net.InterfaceAddrs(); err == nil {
			for _, a := range as {
				if p, err := netip.ParsePrefix(a.String()); err == nil {
					info.Interfaces = append(info.Interfaces, p.Addr().Unmap().WithZone("").String())
				}
			}
		}
	}
	b, _ := json.Marshal(info)
	return b
}
