// Package metrics is Mailroot's Prometheus instrumentation: every metric
// is declared here, in one registry per node, and served on /metrics by
// the listener of metrics.listen (README, "Metrics").
//
// The counters are incremented where the fact happens (ingress, router,
// delivery, badmail) through handles resolved once: a label lookup per
// message would cost a lock and a map access on the hot path, an atomic
// add does not. What is a state rather than an event (the queue, the
// group commit's count, idle connections) is read at scrape time.
//
// It uses prometheus/client_golang: the exposition format (text and
// OpenMetrics, content negotiation), a registry that checks names and
// label consistency, and the Go runtime and process collectors are done
// right there, and done again wrong anywhere else.
package metrics

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	httppprof "net/http/pprof"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every metric of Mailroot.
const Namespace = "mailroot"

// Metrics is the registry of one node and its metrics. Fields that are
// counters without labels are used as they are; labelled ones through
// the methods below, once per site or at start.
type Metrics struct {
	// Registry holds every metric below, and the Go and process
	// collectors.
	Registry *prometheus.Registry

	ingressConns    *prometheus.CounterVec
	ingressSessions *prometheus.GaugeVec
	ingressRecv     *prometheus.CounterVec
	ingressRefused  *prometheus.CounterVec
	ingressBytes    *prometheus.CounterVec
	ingressRefusals *prometheus.CounterVec
	ingressAccept   *prometheus.HistogramVec
	ingressAuth     *prometheus.CounterVec // authcheck.go

	// Routed counts the parts the router published, by destination.
	RoutedRemote, RoutedHold, RoutedDrop prometheus.Counter
	// RoutedBad counts the messages the router sent to Badmail, and
	// RoutedBounce those it returned to their sender (a routing loop).
	RoutedBad, RoutedBounce prometheus.Counter

	// Delivered, Deferred and Bounced count recipients by the result of
	// a delivery attempt, once the result is stored (the message acked).
	Delivered, Deferred, Bounced prometheus.Counter
	// AttemptDuration observes each remote delivery attempt, from the
	// start of the MX lookup to the last reply.
	AttemptDuration prometheus.Observer
	// DeliveryLatency observes each recipient delivered (remote or into
	// Drop/), from the message's reception to the stored result.
	DeliveryLatency prometheus.Observer
	// ConnOpened and ConnReused count the SMTP connections a delivery
	// transaction used: dialled for it, or taken from the pool.
	ConnOpened, ConnReused prometheus.Counter

	// Badmail counts the messages written into Badmail/.
	Badmail prometheus.Counter

	// SyncDuration observes each sync of the group commit.
	SyncDuration prometheus.Observer

	mu   sync.Mutex
	once map[string]bool // collectors registered at most once
}

// New returns the metrics of a node, registered.
func New() *Metrics {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &Metrics{Registry: r, once: map[string]bool{}}
	f := factory{r}

	m.ingressConns = f.counterVec("ingress", "connections_total", "SMTP connections accepted, by site (those over the connection limits included).", "site")
	m.ingressSessions = f.gaugeVec("ingress", "sessions", "SMTP sessions open now, by site.", "site")
	m.ingressRecv = f.counterVec("ingress", "messages_received_total", "Messages accepted (250 after DATA or BDAT LAST), by site.", "site")
	m.ingressRefused = f.counterVec("ingress", "messages_refused_total", "Messages refused at the end of their data, by site and reply class (4xx, 5xx).", "site", "class")
	m.ingressBytes = f.counterVec("ingress", "received_bytes_total", "Message data bytes (dot-unstuffed) of the accepted messages, by site.", "site")
	m.ingressRefusals = f.counterVec("ingress", "refusals_total", "Connections and commands refused by policy, by site and reason: "+strings.Join(RefusalReasons, ", ")+".", "site", "reason")
	m.ingressAccept = f.histogramVec("ingress", "accept_duration_seconds", "Time from the end of a message's data to its 250 (stored durably), by site.",
		[]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}, "site")
	m.ingressAuth = f.counterVec("ingress", "auth_results_total", "Verdicts of the inbound checks, by site, check (spf, dkim, dmarc) and result (pass, fail, softfail, neutral, none, temperror, permerror).", "site", "check", "result")

	routed := f.counterVec("router", "messages_total", "Messages routed, by outcome: parts published for remote delivery, hold or the Drop directory; messages sent to Badmail or bounced.", "outcome")
	m.RoutedRemote = routed.WithLabelValues("remote")
	m.RoutedHold = routed.WithLabelValues("hold")
	m.RoutedDrop = routed.WithLabelValues("drop")
	m.RoutedBad = routed.WithLabelValues("bad")
	m.RoutedBounce = routed.WithLabelValues("bounce")

	rcpts := f.counterVec("delivery", "recipients_total", "Recipients by the result of a delivery attempt: delivered, deferred (to be retried) or bounced (failed for good, expired included).", "result")
	m.Delivered = rcpts.WithLabelValues("delivered")
	m.Deferred = rcpts.WithLabelValues("deferred")
	m.Bounced = rcpts.WithLabelValues("bounced")
	m.AttemptDuration = f.histogram("delivery", "attempt_duration_seconds", "Duration of remote delivery attempts: MX lookup, connection and SMTP transaction.",
		[]float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300})
	m.DeliveryLatency = f.histogram("delivery", "latency_seconds", "Time from a message's reception to the delivery of a recipient (remote, or into Drop/), per recipient delivered.",
		[]float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400})
	conns := f.counterVec("delivery", "connections_total", "SMTP connections used by delivery transactions: opened for one, or reused from the connection cache.", "how")
	m.ConnOpened = conns.WithLabelValues("opened")
	m.ConnReused = conns.WithLabelValues("reused")

	m.Badmail = f.counter("badmail", "messages_total", "Messages written into Badmail/.")
	m.SyncDuration = f.histogram("store", "sync_duration_seconds", "Duration of the group commit's syncs of the embedded server's store.",
		[]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1})
	return m
}

// Or returns m, or when m is nil metrics of their own that nothing serves,
// for a service started without a node (tests).
func Or(m *Metrics) *Metrics {
	if m == nil {
		return New()
	}
	return m
}

// Site is the ingress metrics of one SMTP site, resolved once.
type Site struct {
	Connections prometheus.Counter
	Sessions    prometheus.Gauge
	Received    prometheus.Counter
	// Refused4xx and Refused5xx count messages refused at the end of
	// their data with a temporary or a permanent reply.
	Refused4xx, Refused5xx prometheus.Counter
	// Bytes counts the data bytes of accepted messages.
	Bytes prometheus.Counter
	// AcceptDuration observes, per accepted message, the time from the
	// end of its data to its 250.
	AcceptDuration prometheus.Observer

	refusals map[string]prometheus.Counter
	auth     map[authKey]prometheus.Counter // authcheck.go
}

// Reasons a connection or command is refused by policy: the values of
// mailroot_ingress_refusals_total's reason label.
const (
	// RefusedConnectionLimit: max_connections or max_connections_per_ip
	// (421 at connect).
	RefusedConnectionLimit = "connection_limit"
	// RefusedRelay: a recipient the client may not relay to (550 5.7.1).
	RefusedRelay = "relay_denied"
	// RefusedAuthFailed: AUTH with wrong credentials (535 5.7.8), or
	// after too many of them (421).
	RefusedAuthFailed = "auth_failed"
	// RefusedAuthRequired: MAIL without the AUTH the site requires (530).
	RefusedAuthRequired = "auth_required"
	// RefusedBadCommands: max_bad_commands reached (421).
	RefusedBadCommands = "too_many_errors"
	// RefusedNoRoom: no room in the store for new mail (452 4.3.1).
	RefusedNoRoom = "no_room"
	// RefusedTimeout: the client was too slow (421 4.4.2).
	RefusedTimeout = "timeout"
	// RefusedConnectDeny: a connect_deny entry matched the client (554
	// 5.7.1 greeting).
	RefusedConnectDeny = "connect_deny"
	// RefusedConnectAllow: a client no connect_allow entry matched (554
	// 5.7.1 greeting).
	RefusedConnectAllow = "connect_allow"
	// RefusedDNSBL: a DNSBL zone lists the client (554 5.7.1 greeting).
	RefusedDNSBL = "dnsbl"
	// RefusedDNSTempfail: reverse DNS failed where only an allow name
	// could admit the client (421 4.7.0 greeting).
	RefusedDNSTempfail = "dns_tempfail"
	// RefusedUnknownRcpt: a recipient no recipients list names (550
	// 5.1.1).
	RefusedUnknownRcpt = "unknown_recipient"
	// RefusedPaused: a connection to a paused site (421 4.3.2).
	RefusedPaused = "paused"
	// RefusedSPF: SPF fail of the MAIL FROM with spf_fail = "reject"
	// (550 5.7.23 at the end of DATA).
	RefusedSPF = "spf_fail"
	// RefusedDMARC: DMARC fail where the site's action for the domain's
	// policy is reject (550 5.7.1 at the end of DATA).
	RefusedDMARC = "dmarc_reject"
	// RefusedOther: any reason without a value of its own.
	RefusedOther = "other"
)

// RefusalReasons are every reason label, each series present from start.
var RefusalReasons = []string{RefusedConnectionLimit, RefusedRelay, RefusedAuthFailed, RefusedAuthRequired, RefusedBadCommands, RefusedNoRoom, RefusedTimeout,
	RefusedConnectDeny, RefusedConnectAllow, RefusedDNSBL, RefusedDNSTempfail, RefusedUnknownRcpt, RefusedPaused, RefusedSPF, RefusedDMARC, RefusedOther}

// Refused counts one refusal for reason (one of RefusalReasons; anything
// else counts as RefusedOther, so the label stays bounded).
func (s *Site) Refused(reason string) {
	c, ok := s.refusals[reason]
	if !ok {
		c = s.refusals[RefusedOther]
	}
	c.Inc()
}

// Site returns the metrics of the SMTP site called name.
func (m *Metrics) Site(name string) *Site {
	s := &Site{
		Connections:    m.ingressConns.WithLabelValues(name),
		Sessions:       m.ingressSessions.WithLabelValues(name),
		Received:       m.ingressRecv.WithLabelValues(name),
		Refused4xx:     m.ingressRefused.WithLabelValues(name, "4xx"),
		Refused5xx:     m.ingressRefused.WithLabelValues(name, "5xx"),
		Bytes:          m.ingressBytes.WithLabelValues(name),
		AcceptDuration: m.ingressAccept.WithLabelValues(name),
		refusals:       make(map[string]prometheus.Counter, len(RefusalReasons)),
	}
	for _, r := range RefusalReasons {
		s.refusals[r] = m.ingressRefusals.WithLabelValues(name, r)
	}
	s.auth = m.authCounters(name)
	return s
}

// registerOnce registers the collector made by c under key, unless one
// was: a service's Run may be called again on the same node.
func (m *Metrics) registerOnce(key string, c func() prometheus.Collector) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.once[key] {
		return
	}
	m.once[key] = true
	m.Registry.MustRegister(c())
}

// WatchSyncs exports the count of the group commit's syncs, read from
// syncs at scrape time (bus.Syncer.Syncs).
func (m *Metrics) WatchSyncs(syncs func() uint64) {
	m.registerOnce("syncs", func() prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "store", Name: "syncs_total",
			Help: "Syncs of the embedded server's store run by the group commit."}, func() float64 { return float64(syncs()) })
	})
}

// WatchIdleConnections exports the number of idle SMTP connections in
// delivery's connection cache, read from idle at scrape time.
func (m *Metrics) WatchIdleConnections(idle func() int) {
	m.registerOnce("idle", func() prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: "delivery", Name: "idle_connections",
			Help: "SMTP connections waiting in delivery's connection cache now."}, func() float64 { return float64(idle()) })
	})
}

// factory registers metrics named mailroot_<subsystem>_<name>.
type factory struct{ r *prometheus.Registry }

func (f factory) counter(sub, name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Subsystem: sub, Name: name, Help: help})
	f.r.MustRegister(c)
	return c
}

func (f factory) counterVec(sub, name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Subsystem: sub, Name: name, Help: help}, labels)
	f.r.MustRegister(c)
	return c
}

func (f factory) gaugeVec(sub, name, help string, labels ...string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: sub, Name: name, Help: help}, labels)
	f.r.MustRegister(g)
	return g
}

func (f factory) histogramVec(sub, name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Subsystem: sub, Name: name, Help: help, Buckets: buckets}, labels)
	f.r.MustRegister(h)
	return h
}

func (f factory) histogram(sub, name, help string, buckets []float64) prometheus.Histogram {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Subsystem: sub, Name: name, Help: help, Buckets: buckets})
	f.r.MustRegister(h)
	return h
}

// Server is the metrics listener.
type Server struct {
	l   net.Listener
	srv *http.Server
	// done is closed when Serve returned.
	done chan struct{}
}

// Listen binds addr and serves m on /metrics, and with pprof Go's
// profiler on /debug/pprof/. Scrapes have deadlines: a stuck client must
// not hold a goroutine for ever.
func Listen(addr string, m *Metrics, log *slog.Logger, pprof bool) (*Server, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{
		// One collector failing (the queue, when NATS is away) leaves
		// the others served; the failure is logged.
		ErrorHandling:     promhttp.ContinueOnError,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		Timeout:           20 * time.Second,
		EnableOpenMetrics: true,
	}))
	if pprof {
		mux.HandleFunc("/debug/pprof/", httppprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", httppprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", httppprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", httppprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", httppprof.Trace)
	}
	s := &Server{l: l, done: make(chan struct{}), srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		WriteTimeout:      70 * time.Second, // a 60 s profile
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener failed", "addr", l.Addr().String(), "err", err)
		}
	}()
	return s, nil
}

// Addr is the bound address (the free port chosen for port 0).
func (s *Server) Addr() string { return s.l.Addr().String() }

// Close stops the listener, giving a scrape in progress a moment.
func (s *Server) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		_ = s.srv.Close()
	}
	<-s.done
}
