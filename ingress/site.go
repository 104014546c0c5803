package ingress

import (
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
)

// site is one [[site]]: a go-smtp server with its own listeners and policy.
type site struct {
	svc       *Service
	cfg       config.Site
	relay     []netip.Prefix
	etrnNets  []netip.Prefix
	normNets  []netip.Prefix
	local     map[string]bool // nil: every local and alias domain
	srv       *smtp.Server
	tlsConfig *tls.Config // nil: no TLS on this site
	listeners []net.Listener

	mu    sync.Mutex
	conns int
	perIP map[netip.Addr]int
	// refusing bounds the refusals in progress (an implicit-TLS refusal
	// needs a handshake before its 421); over it a connection is closed.
	refusing chan struct{}
}

// maxRefusing is how many refused connections get their 421 at once.
const maxRefusing = 32

var _ smtp.Backend = (*site)(nil)

func newSite(svc *Service, sc config.Site) (*site, error) {
	st := &site{svc: svc, cfg: sc, perIP: map[netip.Addr]int{}, refusing: make(chan struct{}, maxRefusing)}
	var err error
	if st.relay, err = config.Networks(sc.RelayNetworks); err != nil {
		return nil, fmt.Errorf("ingress: site %s: relay_networks: %w", sc.Name, err)
	}
	if st.etrnNets, err = config.Networks(sc.ETRNNetworks); err != nil {
		return nil, fmt.Errorf("ingress: site %s: etrn_networks: %w", sc.Name, err)
	}
	if st.normNets, err = config.Networks(sc.BareNewlineNormalize); err != nil {
		return nil, fmt.Errorf("ingress: site %s: bare_newline_normalize: %w", sc.Name, err)
	}
	if len(sc.LocalDomains) > 0 {
		st.local = map[string]bool{}
		for _, d := range sc.LocalDomains {
			st.local[envelope.NormalizeDomain(d)] = true
		}
	}
	if sc.StartTLS || sc.ImplicitTLS {
		certFile, keyFile := sc.TLSCert, sc.TLSKey
		if certFile == "" {
			if certFile, keyFile, err = selfSigned(svc.cfg.TLSDir(), svc.cfg.Hostname); err != nil {
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
	srv := smtp.NewServer(st)
	srv.Domain = sc.Hostname
	srv.MaxMessageBytes = sc.MaxMessageSize
	srv.MaxRecipients = sc.MaxRecipients
	srv.MaxLineLength = sc.MaxLineLength
	srv.ReadTimeout = sc.Timeout.D()
	srv.WriteTimeout = sc.Timeout.D()
	// wire and the session decide where AUTH is offered.
	srv.AllowInsecureAuth = true
	srv.EnableSMTPUTF8 = true
	srv.EnableREQUIRETLS = true
	srv.EnableBINARYMIME = true
	srv.EnableDSN = true
	srv.ErrorLog = slog.NewLogLogger(svc.log.Handler(), slog.LevelError)
	st.srv = srv
	for _, addr := range sc.Listen {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range st.listeners {
				_ = l.Close()
			}
			return nil, fmt.Errorf("ingress: site %s: listen %s: %w", sc.Name, addr, err)
		}
		st.listeners = append(st.listeners, &siteListener{Listener: l, st: st})
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
func (st *site) mayRelay(ip netip.Addr) bool { return containsIP(st.relay, ip) }

// admit counts a new connection from ip, or says why it is refused.
func (st *site) admit(ip netip.Addr) string {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.conns >= st.cfg.MaxConnections {
		return "Too many connections, try again later"
	}
	if st.perIP[ip] >= st.cfg.MaxConnectionsPerIP {
		return "Too many connections from your address, try again later"
	}
	st.conns++
	st.perIP[ip]++
	return ""
}

func (st *site) release(ip netip.Addr) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.conns--
	if st.perIP[ip]--; st.perIP[ip] <= 0 {
		delete(st.perIP, ip)
	}
}

// siteListener enforces the connection limits (421 4.7.0) and hands
// go-smtp a wire for each connection.
type siteListener struct {
	net.Listener
	st *site
}

// Accept implements net.Listener.
func (l *siteListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := netip.Addr{}
		if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			ip, _ = netip.AddrFromSlice(ta.IP)
			ip = ip.Unmap()
		}
		st := l.st
		if why := st.admit(ip); why != "" {
			st.svc.log.Warn("connection refused", "site", st.cfg.Name, "client", ip.String(), "reason", why)
			select {
			case st.refusing <- struct{}{}:
				go func() {
					defer func() { <-st.refusing }()
					st.refuse(c, why)
				}()
			default:
				_ = c.Close()
			}
			continue
		}
		id := strconv.FormatUint(st.svc.nextID.Add(1), 36)
		w := newWire(st, c, ip, id)
		st.svc.sessions.add(id, sessionInfo{Site: st.cfg.Name, ClientIP: ip.String(), Since: w.since})
		w.onClose = func() {
			st.release(ip)
			st.svc.sessions.remove(id)
		}
		return w, nil
	}
}

// refuseTimeout bounds a refusal: TLS handshake and 421.
const refuseTimeout = 5 * time.Second

// refuse answers a connection over the limits with 421 4.7.0 and closes
// it; on an implicit-TLS site the 421 goes inside TLS, as every reply does.
func (st *site) refuse(c net.Conn, why string) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(refuseTimeout))
	if st.cfg.ImplicitTLS {
		tc := tls.Server(c, st.tlsConfig)
		if err := tc.Handshake(); err != nil {
			return
		}
		defer tc.Close() // close_notify after the 421
		c = tc
	}
	_, _ = io.WriteString(c, "421 4.7.0 "+st.cfg.Hostname+" "+why+"\r\n")
}

// NewSession implements smtp.Backend: called at the first EHLO/HELO.
func (st *site) NewSession(c *smtp.Conn) (smtp.Session, error) {
	w, ok := c.Conn().(*wire)
	if !ok {
		return nil, &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Internal error"}
	}
	ss := &session{s: st.svc, site: st, w: w, conn: c, relay: st.mayRelay(w.ip)}
	w.sess = ss
	return ss, nil
}
