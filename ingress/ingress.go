// Package ingress is Mailroot's SMTP server: the front door of the
// pipeline (docs/DESIGN.md §4, "Ingress").
//
// It serves one or more sites — the IIS "SMTP sites": [[site]] blocks of
// kind mta (port 25), submission (587, RFC 6409), smtps (465, implicit TLS,
// RFC 8314) and odmr (366, RFC 2645) — each with its own listen addresses,
// host name and banner, TLS certificate, local domains, relay rules, AUTH
// policy and limits. The SMTP server is Mailroot's own: one loop per
// connection (conn.go) parses the commands of RFC 5321 and the extensions
// EHLO offers (PIPELINING, 8BITMIME, SIZE, ENHANCEDSTATUSCODES, DSN,
// CHUNKING/BDAT, BINARYMIME, SMTPUTF8, REQUIRETLS, LIMITS, STARTTLS, AUTH
// PLAIN/LOGIN, ETRN, ATRN), with parameters in params.go and message
// content in data.go; go-sasl runs the SASL exchanges.
//
// A session checks relay permission per RCPT (local and alias domains, and
// held domains, from anyone; other domains only from relay_networks or
// authenticated users, otherwise "550 5.7.1 Unable to relay"), reads DATA
// within the size limit, prepends a Received: header (with the TLS version
// and cipher) and publishes the message to mail.in — inline when it is at
// most 64 KiB, through the mail-bodies Object Store otherwise — with the
// queue id as Nats-Msg-Id. It answers "250 2.0.0 OK queued as <qid>" only
// after JetStream acknowledged the envelope; a NATS failure is 451 4.3.0 and
// a full store 452 4.3.1 (RFC 5321 §6.1: a 250 is a promise).
//
// Live sessions are kept in the mta-sessions KV bucket for `mailroot
// sessions`.
package ingress

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/metrics"
	"github.com/mailroot/mailroot/internal/resolver"
	"github.com/mailroot/mailroot/internal/users"
)

// Service is the SMTP server: every site of the configuration.
type Service struct {
	cfgs   *config.Live
	log    *slog.Logger
	js     jetstream.JetStream
	bodies *bus.Bodies

	sites    []*site
	users    *users.Store
	limiter  *users.Limiter
	authOK   *authCache
	sessions *registry
	ready    chan struct{}
	nextID   atomic.Uint64

	// stopping is set when Run ends: idle sessions get 421 4.3.2, the
	// others their answer first.
	stopping atomic.Bool
	liveMu   sync.Mutex
	live     map[*session]struct{}
	liveWG   sync.WaitGroup

	// Now is the clock (a test seam).
	Now func() time.Time
	// StoreTimeout bounds storing one message, retries through NATS leader
	// elections included; past it the client gets 451 4.3.0.
	StoreTimeout time.Duration
	// Resolver looks up client host names (reverse_dns): the [dns]
	// servers, or those of /etc/resolv.conf.
	Resolver *resolver.Resolver
	// Room says whether there is room for new mail (nats.reserve): MAIL
	// FROM and the end of DATA get 452 4.3.1 at once when there is not.
	// New checks the store's limit; `mailroot all` adds the file system
	// of its store and the store's write faults.
	Room *bus.Room
	// Metrics counts connections, sessions and messages per site; nil:
	// metrics of its own that nothing serves.
	Metrics *metrics.Metrics
	// RecipientsPoll is how often, at most, a recipients file is checked
	// for changes (default 2 s; rcptcheck.go).
	RecipientsPoll time.Duration
	rcpts          atomic.Pointer[rcptCheck] // nil: any local part is accepted
}

// conf is the configuration in force (Apply).
func (s *Service) conf() *config.Config { return s.cfgs.Get() }

// Apply puts a changed configuration in force (the live configuration,
// internal/liveconfig): domains, relay and connection control lists,
// limits, recipient lists and pause apply to the connections that follow;
// sessions in progress finish under the one they began with. What needs
// a restart (listen addresses, TLS files, a site added) stays as it
// started. A site or recipients file that does not load keeps the
// previous policy, logged.
func (s *Service) Apply(cfg config.Config) {
	pols := make([]*sitePolicy, len(s.sites))
	sites := cfg.EffectiveSites()
	for i, st := range s.sites {
		j := slices.IndexFunc(sites, func(sc config.Site) bool { return sc.Name == st.cfg.Name })
		if j < 0 {
			pols[i] = st.policy()
			continue
		}
		p, err := newSitePolicy(sites[j])
		if err != nil {
			s.log.Error("live configuration not applied to the site", "site", st.cfg.Name, "err", err)
			return
		}
		pols[i] = p
	}
	rc, err := newRcptCheck(cfg, s.users, s.log)
	if err != nil {
		s.log.Error("live configuration not applied: recipient lists", "err", err)
		return
	}
	s.cfgs.Set(cfg)
	s.rcpts.Store(rc)
	for i, st := range s.sites {
		st.pol.Store(pols[i])
	}
}

// New binds the listen addresses of every site, so that errors such as a
// port in use show at start and Addrs is known before Run. It loads the
// users file and the TLS certificates (generating a self-signed one in
// <data_dir>/tls/ where a site offers TLS and has none configured).
func New(cfg config.Config, log *slog.Logger, js jetstream.JetStream) (*Service, error) {
	log = log.With("svc", "ingress")
	store, err := users.NewStore(cfg.UsersPath())
	if err != nil {
		return nil, fmt.Errorf("ingress: %w", err)
	}
	s := &Service{
		cfgs: config.NewLive(cfg), log: log, js: js, users: store,
		limiter:  users.NewLimiter(cfg.Auth),
		authOK:   newAuthCache(),
		sessions: newRegistry(js, cfg, log),
		ready:    make(chan struct{}),
		live:     map[*session]struct{}{},
		Now:      time.Now, StoreTimeout: 2 * bus.PublishTimeout,
		Room: &bus.Room{JS: js, Reserve: cfg.NATS.Reserve},
	}
	if s.Resolver, err = resolver.ForConfig(cfg); err != nil {
		// As the C library does without a resolv.conf: the local server.
		log.Warn("no DNS servers configured, asking 127.0.0.1:53", "err", err)
		s.Resolver = &resolver.Resolver{Servers: []string{"127.0.0.1:53"}, Timeout: cfg.DNS.Timeout.D(), Attempts: cfg.DNS.Attempts}
	}
	rc, err := newRcptCheck(cfg, store, log)
	if err != nil {
		return nil, fmt.Errorf("ingress: %w", err)
	}
	s.rcpts.Store(rc)
	for _, sc := range cfg.EffectiveSites() {
		st, err := newSite(s, sc)
		if err != nil {
			s.closeListeners()
			return nil, err
		}
		s.sites = append(s.sites, st)
	}
	return s, nil
}

// Addrs are the bound listen addresses of all sites, in configuration order.
func (s *Service) Addrs() []string {
	var out []string
	for _, st := range s.sites {
		out = append(out, st.addrs()...)
	}
	return out
}

// SiteAddrs are the bound listen addresses of the named site.
func (s *Service) SiteAddrs(name string) []string {
	for _, st := range s.sites {
		if st.cfg.Name == name {
			return st.addrs()
		}
	}
	return nil
}

// Ready is closed once the stream exists and sessions are being served.
func (s *Service) Ready() <-chan struct{} { return s.ready }

func (s *Service) closeListeners() {
	for _, st := range s.sites {
		for _, l := range st.listeners {
			_ = l.Close()
		}
	}
}

// Run serves SMTP until ctx is done, then stops accepting and waits up to
// 30 s for sessions in DATA to get their answer.
func (s *Service) Run(ctx context.Context) error {
	if _, err := bus.Setup(ctx, s.js, *s.conf()); err != nil {
		s.closeListeners()
		return err
	}
	b, err := bus.OpenBodies(ctx, s.js)
	if err != nil {
		s.closeListeners()
		return err
	}
	s.bodies = b
	m := metrics.Or(s.Metrics)
	for _, st := range s.sites {
		st.m = m.Site(st.cfg.Name)
	}
	s.openTxLogs()
	defer s.closeTxLogs()
	if err := s.sessions.open(ctx); err != nil {
		s.closeListeners()
		return err
	}
	// Delivery processes read the bound listeners to recognise ourselves.
	defer s.announceListeners(ctx)()
	rctx, rcancel := context.WithCancel(context.WithoutCancel(ctx))
	rdone := make(chan struct{})
	go func() { s.sessions.run(rctx); close(rdone) }()
	defer func() { rcancel(); <-rdone }()
	unsub, err := s.serveDisconnect()
	if err != nil {
		s.closeListeners()
		return err
	}
	defer unsub()
	close(s.ready)
	if s.users.Len() == 0 {
		for _, st := range s.sites {
			if st.cfg.Auth == config.AuthRequired {
				s.log.Warn("site requires AUTH but the users file has no users: add some with `mailroot user add`", "site", st.cfg.Name, "users_file", s.conf().UsersPath())
			}
		}
	}
	errc := make(chan error, len(s.Addrs()))
	for _, st := range s.sites {
		for _, l := range st.listeners {
			s.log.Info("listening", "site", st.cfg.Name, "kind", st.cfg.Kind, "addr", l.Addr().String(), "implicit_tls", st.cfg.ImplicitTLS, "auth", st.cfg.Auth)
			go func() {
				if err := st.serve(l); err != nil {
					errc <- err
				}
			}()
		}
	}
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	s.stop(30 * time.Second)
	if serveErr != nil {
		return fmt.Errorf("ingress: serve: %w", serveErr)
	}
	return nil
}

// stop stops accepting, answers idle sessions 421 4.3.2 and lets the
// others finish what they are doing (a message in DATA gets its answer)
// for up to grace; then it closes what is left.
func (s *Service) stop(grace time.Duration) {
	s.stopping.Store(true)
	s.closeListeners()
	s.liveMu.Lock()
	for ss := range s.live {
		ss.interrupt()
	}
	s.liveMu.Unlock()
	done := make(chan struct{})
	go func() { s.liveWG.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(grace):
	}
	s.liveMu.Lock()
	for ss := range s.live {
		_ = ss.conn().Close()
	}
	s.liveMu.Unlock()
	<-done
}

// track counts a new session; false once the service is stopping.
func (s *Service) track(ss *session) bool {
	s.liveMu.Lock()
	defer s.liveMu.Unlock()
	if s.stopping.Load() {
		return false
	}
	s.live[ss] = struct{}{}
	s.liveWG.Add(1)
	return true
}

func (s *Service) forget(ss *session) {
	s.liveMu.Lock()
	defer s.liveMu.Unlock()
	if _, ok := s.live[ss]; ok {
		delete(s.live, ss)
		s.liveWG.Done()
	}
}

// nodeName names this ingress process in session keys: the host name as a
// subject token plus the process id.
func nodeName(hostname string) string {
	h := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-':
			return r
		}
		return '_'
	}, hostname)
	return fmt.Sprintf("%s-%d", h, os.Getpid())
}
