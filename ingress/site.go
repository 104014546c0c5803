package ingress

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/metrics"
	"github.com/mailroot/mailroot/internal/w3c"
)

// site is one [[site]]: its listeners and policy.
type site struct {
	svc *Service
	// cfg is the site as it started: its name, kind, listeners and TLS
	// stay so until a restart. What may change while it runs is in pol.
	cfg       config.Site
	pol       atomic.Pointer[sitePolicy]
	tlsConfig *tls.Config // nil: no TLS on this site
	listeners []net.Listener
	// m is the site's metrics, set by Run before it serves.
	m *metrics.Site
	// txlog is the site's W3C transaction log (log_dir), nil when off.
	txlog *w3c.Writer

	mu    sync.Mutex
	conns int
	perIP map[netip.Addr]int
	// refusing bounds the refusals in progress (an implicit-TLS refusal
	// needs a handshake before its 421); over it a connection is closed.
	refusing chan struct{}
}

// maxRefusing is how many refused connections get their 421 at once.
const maxRefusing = 32

// sitePolicy is what a site applies to a connection, taken once when it
// connects (site.policy): a live configuration change (Service.Apply)
// replaces it for the connections that follow, sessions in progress
// finish under the one they began with.
type sitePolicy struct {
	cfg      config.Site
	relay    []netip.Prefix
	etrnNets []netip.Prefix
	normNets []netip.Prefix
	local    map[string]bool // nil: every local and alias domain
	ctl      *connCtl        // nil: every client may connect
}

// newSitePolicy compiles the lists of sc.
func newSitePolicy(sc config.Site) (*sitePolicy, error) {
	p := &sitePolicy{cfg: sc}
	var err error
	if p.relay, err = config.Networks(sc.RelayNetworks); err != nil {
		return nil, fmt.Errorf("ingress: site %s: relay_networks: %w", sc.Name, err)
	}
	if p.etrnNets, err = config.Networks(sc.ETRNNetworks); err != nil {
		return nil, fmt.Errorf("ingress: site %s: etrn_networks: %w", sc.Name, err)
	}
	if p.normNets, err = config.Networks(sc.BareNewlineNormalize); err != nil {
		return nil, fmt.Errorf("ingress: site %s: bare_newline_normalize: %w", sc.Name, err)
	}
	if p.ctl, err = newConnCtl(sc); err != nil {
		return nil, fmt.Errorf("ingress: site %s: %w", sc.Name, err)
	}
	if len(sc.LocalDomains) > 0 {
		p.local = map[string]bool{}
		for _, d := range sc.LocalDomains {
			p.local[envelope.NormalizeDomain(d)] = true
		}
	}
	return p, nil
}

// policy is the site's policy in force.
func (st *site) policy() *sitePolicy { return st.pol.Load() }

func newSite(svc *Service, sc config.Site) (*site, error) {
	st := &site{svc: svc, cfg: sc, perIP: map[netip.Addr]int{}, refusing: make(chan struct{}, maxRefusing)}
	pol, err := newSitePolicy(sc)
	if err != nil {
		return nil, err
	}
	st.pol.Store(pol)
	if sc.StartTLS || sc.ImplicitTLS {
		certFile, keyFile := sc.TLSCert, sc.TLSKey
		if certFile == "" {
			if certFile, keyFile, err = selfSigned(svc.conf().TLSDir(), svc.conf().Hostname); err != nil {
				return nil, err
			}
		}
		log := svc.log.With("site", sc.Name)
		cs, err := newCertSource(certFile, keyFile, func(err error) {
			if err != nil {
				log.Error("TLS certificate reload failed, keeping the old one", "cert", certFile, "err", err)
				return
			}
			log.Info("TLS certificate reloaded", "cert", certFile)
		})
		if err != nil {
			return nil, err
		}
		st.tlsConfig = serverTLSConfig(cs)
	}
	for _, addr := range sc.Listen {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range st.listeners {
				_ = l.Close()
			}
			return nil, fmt.Errorf("ingress: site %s: listen %s: %w", sc.Name, addr, err)
		}
		st.listeners = append(st.listeners, l)
	}
	return st, nil
}

func (st *site) addrs() []string {
	out := make([]string, len(st.listeners))
	for i, l := range st.listeners {
		out[i] = l.Addr().String()
	}
	return out
}

// mayRelay reports whether ip is in the site's relay_networks.
func (p *sitePolicy) mayRelay(ip netip.Addr) bool { return containsIP(p.relay, ip) }

// admit counts a new connection from ip, or says why it is refused:
// the enhanced code of the 421, the text and the metrics reason.
func (st *site) admit(ip netip.Addr, pol *sitePolicy) (enhanced, why, reason string) {
	if pol.cfg.Paused {
		// IIS's "pause": no new sessions, those in progress finish.
		return "4.3.2", "Service not available, the site is paused", metrics.RefusedPaused
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.conns >= pol.cfg.MaxConnections {
		return "4.7.0", "Too many connections, try again later", metrics.RefusedConnectionLimit
	}
	if st.perIP[ip] >= pol.cfg.MaxConnectionsPerIP {
		return "4.7.0", "Too many connections from your address, try again later", metrics.RefusedConnectionLimit
	}
	st.conns++
	st.perIP[ip]++
	return "", "", ""
}

func (st *site) release(ip netip.Addr) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.conns--
	if st.perIP[ip]--; st.perIP[ip] <= 0 {
		delete(st.perIP, ip)
	}
}

// serve accepts connections on l until it is closed: each within the
// connection limits gets a session, the others 421 4.7.0.
func (st *site) serve(l net.Listener) error {
	backoff := time.Duration(0)
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || st.svc.stopping.Load() {
				return nil
			}
			// Out of file descriptors and the like: wait a little, as
			// net/http does, rather than spin or stop serving.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			st.svc.log.Warn("accept failed, retrying", "site", st.cfg.Name, "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		st.m.Connections.Inc()
		ip := netip.Addr{}
		if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			ip, _ = netip.AddrFromSlice(ta.IP)
			ip = ip.Unmap()
		}
		pol := st.policy()
		if enh, why, reason := st.admit(ip, pol); why != "" {
			st.m.Refused(reason)
			st.svc.log.Warn("connection refused", "site", st.cfg.Name, "client", ip.String(), "reason", why)
			select {
			case st.refusing <- struct{}{}:
				go func() {
					defer func() { <-st.refusing }()
					t0 := time.Now()
					n := st.refuse(c, pol, enh, why)
					st.logConnect(c, ip, 421, reason, n, time.Since(t0))
				}()
			default:
				_ = c.Close()
				st.logConnect(c, ip, 0, reason, 0, 0)
			}
			continue
		}
		id := strconv.FormatUint(st.svc.nextID.Add(1), 36)
		ss := newSession(st, pol, c, ip, id)
		st.svc.sessions.add(id, sessionInfo{Site: st.cfg.Name, ClientIP: ip.String(), Since: ss.since})
		st.m.Sessions.Inc()
		ss.onClose = func() {
			st.m.Sessions.Dec()
			st.release(ip)
			st.svc.sessions.remove(id)
			st.svc.forget(ss)
		}
		if !st.svc.track(ss) {
			ss.close()
			continue
		}
		go ss.serve()
	}
}

// refuseTimeout bounds a refusal: TLS handshake and 421.
const refuseTimeout = 5 * time.Second

// refuse answers a connection over the limits (or to a paused site) with
// 421 and closes it; on an implicit-TLS site the 421 goes inside TLS, as
// every reply does.
func (st *site) refuse(c net.Conn, pol *sitePolicy, enhanced, why string) int {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(refuseTimeout))
	if st.cfg.ImplicitTLS {
		tc := tls.Server(c, st.tlsConfig)
		if err := tc.Handshake(); err != nil {
			return 0
		}
		defer tc.Close() // close_notify after the 421
		c = tc
	}
	n, _ := io.WriteString(c, "421 "+enhanced+" "+pol.cfg.Hostname+" "+why+"\r\n")
	return n
}
