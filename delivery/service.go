package delivery

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/delivery/release"
	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/dkim"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/limits"
	"github.com/mailroot/mailroot/internal/metrics"
	"github.com/mailroot/mailroot/internal/mtasts"
	"github.com/mailroot/mailroot/internal/notify"
	"github.com/mailroot/mailroot/internal/resolver"
	"github.com/mailroot/mailroot/internal/smtpclient"
)

// DropSlots is how many Drop files are written at once.
const DropSlots = 4

// shutdownNakDelay is how long a message interrupted by shutdown waits
// before redelivery: just past bus.Worker's 5 s pull expiry, so that it goes
// to a live worker rather than to this process's abandoned pull requests.
const shutdownNakDelay = 6 * time.Second

// listenersSyncWait bounds how long Run waits for the mta-listeners bucket
// to be read before it starts delivering.
const listenersSyncWait = 15 * time.Second

// settleTimeout bounds the publishes and acks that settle a message after
// its SMTP transaction, which run even while shutting down.
const settleTimeout = 30 * time.Second

// Service delivers queued mail to remote servers and writes local mail to
// the Drop directory. The exported fields are test seams; New sets them to
// working defaults.
type Service struct {
	// Now returns the current time: retry times and expiry use it.
	Now func() time.Time
	// Dial opens a TCP connection to a remote SMTP server; ctx carries the
	// connect timeout.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// DropRetryDelay is how long a message waits before the Drop writer
	// tries again after a write error (default 30 s).
	DropRetryDelay time.Duration
	// HoldSweep is how often held mail is checked for expiry
	// (DefaultHoldSweep when zero).
	HoldSweep time.Duration
	// Grace is how long in-flight messages may finish after Run's context
	// is done (default: bus.Worker's 10 s).
	Grace time.Duration
	// Room publishes retries, reports and Badmail copies (Room.Forward);
	// New makes one that checks the store's limit, `mailroot all` shares
	// its own.
	Room *bus.Room
	// Metrics counts recipients by result, attempts and connections;
	// nil: metrics of its own that nothing serves.
	Metrics *metrics.Metrics

	m      *metrics.Metrics
	cfgs   *config.Live
	log    *slog.Logger
	js     jetstream.JetStream
	dns    *resolver.Resolver
	self   *self
	notify *notify.Notifier
	bodies *bus.Bodies
	stream jetstream.Stream
	// ImplicitTLSPort is the smart host port where TLS starts at connect
	// (RFC 8314 submissions, 465; a test seam).
	ImplicitTLSPort int
	// loginFailed is when a smart host's refused login was last logged.
	loginMu     sync.Mutex
	loginFailed map[string]time.Time
	// roots verify remote certificates (nil: the system's).
	roots *x509.CertPool
	// dkim signs what leaves over SMTP with the keys under data_dir/dkim.
	dkim *dkim.Signer
	// pool keeps connections open between messages to the same host.
	pool *smtpclient.Pool
	// runMu guards runCtx, Run's context (nil before Run), for the work
	// a live configuration change starts (Apply: resume).
	runMu  sync.Mutex
	runCtx context.Context
	// resumes are the resume goroutines Apply started; Run waits for them.
	resumes sync.WaitGroup
	// limits holds the per-destination limits (delivery/limits.go).
	limits *limits.Limiter
	// MTASTS finds the MTA-STS policies of destination domains
	// (delivery.mta_sts; nil when off). Run gives it the mta-sts KV
	// bucket; its Dial is the test seam of the policy fetch.
	MTASTS *mtasts.Client
	// rpt counts TLS outcomes and sends the TLS-RPT reports
	// (delivery.tls_rpt; nil when off; delivery/tlsrpt.go).
	rpt *tlsReporting
}

// New returns a delivery service for cfg. It does not touch the network;
// Run does.
func New(cfg config.Config, log *slog.Logger, js jetstream.JetStream) (*Service, error) {
	if js == nil {
		return nil, errors.New("delivery: no JetStream context")
	}
	if log == nil {
		log = slog.Default()
	}
	if strings.TrimSpace(cfg.Hostname) == "" {
		return nil, errors.New("delivery: hostname is empty")
	}
	if len(cfg.Delivery.Retry) == 0 {
		return nil, errors.New("delivery: retry ladder is empty")
	}
	res, err := resolver.ForConfig(cfg)
	if err != nil {
		if cfg.Delivery.SmartHost == "" {
			return nil, fmt.Errorf("delivery: %w", err)
		}
		log.Warn("no DNS server, smart host must be an IP address", "err", err)
		res = &resolver.Resolver{}
	}
	roots, err := loadRoots(cfg.Delivery.TLSCAFile)
	if err != nil {
		return nil, err
	}
	dkimKeys, err := dkim.BlockKeys(cfg.DKIM)
	if err != nil {
		return nil, err
	}
	dialer := &net.Dialer{Timeout: cfg.Delivery.ConnectTimeout.D()}
	var sts *mtasts.Client
	if cfg.Delivery.MTASTS {
		sts = &mtasts.Client{LookupTXT: res.LookupTXT, Addrs: res.Addrs, Roots: roots}
	}
	return &Service{
		MTASTS:          sts,
		Now:             time.Now,
		Dial:            dialer.DialContext,
		DropRetryDelay:  30 * time.Second,
		cfgs:            config.NewLive(cfg),
		log:             log.With("svc", "delivery"),
		js:              js,
		Room:            &bus.Room{JS: js, Reserve: cfg.NATS.Reserve},
		dns:             res,
		self:            newSelf(cfg, res.Addrs),
		pool:            newPool(cfg.Delivery),
		dkim:            dkim.NewSigner(dkim.Dir(cfg.DataDir), log, dkimKeys...),
		roots:           roots,
		ImplicitTLSPort: 465,
	}, nil
}

// loadRoots reads delivery.tls_ca_file; "" is the system's roots (nil).
func loadRoots(path string) (*x509.CertPool, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("delivery.tls_ca_file: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("delivery.tls_ca_file: no PEM certificate in %s", path)
	}
	return roots, nil
}

// newPool is the connection cache of delivery.connection_cache_time and
// the connection_reuse limits. It keeps as many idle connections to one
// destination as the delivery slots could use at once, and twice that in
// all (each is a file descriptor here and a connection slot at the
// remote).
func newPool(d config.Delivery) *smtpclient.Pool {
	return smtpclient.NewPool(smtpclient.PoolLimits{
		Idle:           d.ConnectionCacheTime.D(),
		MaxAge:         d.ConnectionReuseTime.D(),
		MaxUses:        d.ConnectionReuseCount,
		MaxIdlePerDest: d.Concurrency,
		MaxIdle:        2 * d.Concurrency,
	})
}

// Run creates the stream and consumers if needed and works the delivery
// and drop consumers until ctx is done. It then stops pulling, lets
// in-flight messages finish and returns.
func (s *Service) Run(ctx context.Context) error {
	s.runMu.Lock()
	s.runCtx = ctx
	s.runMu.Unlock()
	cons, err := bus.Setup(ctx, s.js, *s.conf(), bus.ConsumerDelivery, bus.ConsumerDrop, bus.ConsumerQuarantine)
	if err == nil {
		s.bodies, err = bus.OpenBodies(ctx, s.js)
	}
	if err == nil {
		s.stream, err = s.js.Stream(ctx, bus.StreamMail)
	}
	if err == nil {
		_, err = bus.EnsureSessions(ctx, s.js, s.conf().NATS.Replicas) // message leases
	}
	if err == nil && s.MTASTS != nil {
		s.MTASTS.KV, err = mtasts.EnsureBucket(ctx, s.js, s.conf().NATS.Replicas)
		s.MTASTS.Now = func() time.Time { return s.Now() }
	}
	if err == nil {
		err = s.setupTLSRPT(ctx)
	}
	if err == nil {
		err = s.openLimits(ctx)
	}
	if err == nil {
		s.notify = notify.NewNotifier(*s.conf(), s.js, s.bodies)
		s.notify.Room = s.Room
		s.notify.Now = func() time.Time { return s.Now() }
		s.m = metrics.Or(s.Metrics)
		s.m.WatchIdleConnections(func() int { return s.pool.Stats().Idle })
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil // shut down before we started
		}
		return fmt.Errorf("delivery: start: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// InProgress well within delivery.ack_wait keeps a long transaction
	// from being handed to another process.
	keepAlive := s.conf().Delivery.AckWait.D() / 4
	workers := []struct {
		w *bus.Worker
		h bus.Handler
	}{
		{&bus.Worker{Room: s.Room, Consumer: cons[bus.ConsumerDelivery], Slots: s.conf().Delivery.Concurrency, Log: s.log, Grace: s.Grace, KeepAlive: keepAlive}, s.handleOut},
		{&bus.Worker{Room: s.Room, Consumer: cons[bus.ConsumerDrop], Slots: DropSlots, Log: s.log.With("part", "drop"), Grace: s.Grace, KeepAlive: keepAlive}, s.handleDrop},
		{&bus.Worker{Room: s.Room, Consumer: cons[bus.ConsumerQuarantine], Slots: QuarantineSlots, Log: s.log.With("part", "quarantine"), Grace: s.Grace}, s.handleQuarantine},
	}
	errs := make([]error, len(workers))
	var wg sync.WaitGroup
	// The listeners of every ingress process are ourselves too: read them
	// before the first delivery, then follow them.
	synced := make(chan struct{})
	wg.Go(func() {
		s.self.watch(ctx, s.js, s.conf().NATS.Replicas, s.log, sync.OnceFunc(func() { close(synced) }))
	})
	select {
	case <-synced:
	case <-ctx.Done():
	case <-time.After(listenersSyncWait):
		s.log.Warn("ingress listeners not read yet, delivering without them", "bucket", bus.BucketListeners)
	}
	// ETRN release worker (issue 6): answers mta.ctl.release requests.
	wg.Go(func() { _ = release.New(*s.conf(), s.log, s.Room).Run(ctx) })
	wg.Go(func() { s.sweepHeldLoop(ctx) })
	wg.Go(func() { s.runTLSRPT(ctx) })
	// On shutdown the idle connections are ended with QUIT at once, while
	// in-flight messages finish; a connection those give back later is
	// ended then.
	wg.Go(func() {
		<-ctx.Done()
		grace := s.Grace
		if grace <= 0 {
			grace = 10 * time.Second // bus.Worker's default
		}
		s.pool.Close(grace)
	})
	for i, w := range workers {
		wg.Go(func() {
			if errs[i] = w.w.Run(ctx, w.h); errs[i] != nil {
				cancel() // one loop failed to start: stop the other
			}
		})
	}
	s.log.Info("delivery running", "slots", s.conf().Delivery.Concurrency, "smart_host", s.conf().Delivery.SmartHost, "dns", s.dns.Servers)
	wg.Wait()
	s.resumes.Wait()
	s.stopTLSRPT()
	return errors.Join(errs...)
}

// handleOut makes one delivery attempt for a message of mail.out.<tok>
// and settles it: ack, retry schedule, or Badmail.
func (s *Service) handleOut(ctx context.Context, m jetstream.Msg) {
	env, err := envelope.Decode(m.Headers())
	if err != nil {
		s.toBad(ctx, m, "delivery: undecodable envelope")
		return
	}
	tok := strings.TrimPrefix(m.Subject(), bus.SubjOutPrefix)
	domain := envelope.NormalizeDomain(env.Domain)
	if domain == "" {
		domain = envelope.Domain(env.Rcpts[0].Addr)
	}
	log := s.log.With("qid", env.QueueID, "domain", domain)
	if md, err := m.Metadata(); err == nil && md.NumDelivered > 1 && s.alreadyRescheduled(ctx, tok, env) {
		// A previous worker published the retry schedule but died
		// before acking this message (docs/DESIGN.md §4).
		log.Info("retry already scheduled, dropping redelivered copy", "attempt", env.Attempt)
		_ = m.DoubleAck(ctx)
		return
	}
	if s.paused(domain) {
		s.park(ctx, m, env, tok, log)
		return
	}
	lease, ok := s.takeLease(ctx, m, env.QueueID, tok, log)
	if !ok {
		return
	}
	defer lease.ReleaseAsync()
	if env.Body != envelope.BodyObject && env.BodySize == 0 {
		env.BodySize = int64(len(m.Data()))
	}
	open := func(ctx context.Context) (io.ReadCloser, error) { return s.bodies.Open(ctx, env, m.Data()) }

	t0 := time.Now()
	start := s.Now()
	res := s.deliver(ctx, env, domain, open)
	s.m.AttemptDuration.Observe(time.Since(t0).Seconds())
	if ctx.Err() != nil && slices.ContainsFunc(res.errs, func(e *Error) bool { return e != nil && !e.Permanent }) {
		// Shut down mid-transaction: give the message back so another
		// worker takes it soon. Not a plain Nak: bus.Worker has stopped
		// its iterator, but its pull requests stay on the server until
		// they expire, and the server would hand the message straight
		// back to one of them, where it would sit until AckWait.
		log.Info("delivery interrupted, message returned to the queue")
		if err := m.NakWithDelay(shutdownNakDelay); err != nil {
			log.Warn("nak failed", "err", err)
		}
		return
	}
	s.settle(ctx, m, log, outcome{
		env: env, tok: tok, target: bus.Out(tok), data: m.Data(),
		errs: res.errs, remote: res.remote, reply: res.reply, relayed: !res.dsn,
		tls: res.tls, took: s.Now().Sub(start), policy: res.policy, tlsFailure: res.tlsFailure,
	})
}

// alreadyRescheduled reports whether a retry schedule newer than env's
// attempt is pending for it.
func (s *Service) alreadyRescheduled(ctx context.Context, tok string, env *envelope.Envelope) bool {
	raw, err := s.stream.GetLastMsgForSubject(ctx, bus.Defer(tok, env.QueueID))
	if err != nil {
		if !errors.Is(err, jetstream.ErrMsgNotFound) {
			s.log.Warn("crash-window check failed", "qid", env.QueueID, "err", err)
		}
		return false
	}
	next, err := envelope.Decode(raw.Header)
	return err == nil && next.Attempt > env.Attempt
}

// toBad moves an unusable message to mail.bad, or leaves it for a later
// try if even that fails.
func (s *Service) toBad(ctx context.Context, m jetstream.Msg, reason string) {
	if err := bus.MoveToBad(ctx, s.Room, m, reason); err != nil {
		s.log.Error("move to badmail failed", "subject", m.Subject(), "err", err)
		_ = m.NakWithDelay(time.Minute)
		return
	}
	s.log.Warn("message moved to badmail", "subject", m.Subject(), "reason", reason)
}
