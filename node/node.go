// Package node wires Mailroot's actors together: one or all of them against
// a NATS connection, or — for `mailroot all` — against a nats-server
// embedded in the process. It is what root main.go calls and what the
// end-to-end tests start.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/badmail"
	"github.com/mailroot/mailroot/delivery"
	"github.com/mailroot/mailroot/ingress"
	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/dirlock"
	"github.com/mailroot/mailroot/internal/liveconfig"
	"github.com/mailroot/mailroot/internal/metrics"
	"github.com/mailroot/mailroot/pickupwatcher"
	"github.com/mailroot/mailroot/router"
)

// Actor names, in stop order: the front doors close first, so no new work
// enters while the inner stages finish theirs.
const (
	Ingress       = "ingress"
	Pickupwatcher = "pickupwatcher"
	Router        = "router"
	Delivery      = "delivery"
	Badmail       = "badmail"
)

// ServerOnly, as the one actor given to StartEmbedded, starts the server
// and no actor: `mailroot nats`.
const ServerOnly = "nats"

// Actors lists every actor in stop order.
var Actors = []string{Ingress, Pickupwatcher, Router, Delivery, Badmail}

// runner is what every actor's Service is.
type runner interface {
	Run(ctx context.Context) error
}

// Node is a set of running actors, and the embedded server if it owns one.
type Node struct {
	// Server is the embedded nats-server (nil when connected to an external one).
	Server *server.Server
	// Conn is the NATS connection the actors share (in-process, ingress,
	// router and delivery have one each: own).
	Conn *nats.Conn
	// JS is the JetStream context on Conn.
	JS jetstream.JetStream
	// Ingress is the SMTP server, when started.
	Ingress *ingress.Service
	// Guard watches the embedded server's store (nil when connected to an
	// external one).
	Guard *bus.StoreGuard
	// Room is what every actor of the node checks and publishes through.
	Room *bus.Room
	// Metrics is the node's registry, which every actor counts into and
	// the metrics.listen listener serves.
	Metrics *metrics.Metrics

	metricsSrv *metrics.Server

	stopGuard func()
	// lock keeps other processes off the embedded server's store.
	lock    *dirlock.Lock
	log     *slog.Logger
	order   []string
	cancels map[string]context.CancelFunc
	dones   map[string]chan error
	errc    chan error
	once    sync.Once

	// own are the connections of actors that have their own.
	own []*nats.Conn

	closeSync func() error // releases the group commit's store handle
	// Syncer is the group commit of the embedded server (nil without one).
	Syncer *bus.Syncer

	// stopLive ends the live configuration's watch (followConfig).
	stopLive func()
	// inproc authenticates in-process connections to the embedded server.
	inproc []nats.Option
	// accessDir is the data_dir holding bus.LocalAccessFile, removed at
	// shutdown (empty without an embedded server).
	accessDir string
}

// StartEmbedded starts an embedded nats-server in cfg.NATSDir() and the
// given actors (all when none are named) connected in-process. It first
// locks the store directory (nats/LOCK) for as long as the node runs: two
// servers on one store lose mail that got its 250, so a second process on
// the same data_dir fails at once, naming the first one's pid.
func StartEmbedded(ctx context.Context, cfg config.Config, log *slog.Logger, actors ...string) (_ *Node, err error) {
	lock, err := dirlock.Acquire(cfg.NATSDir())
	if err != nil {
		var busy *dirlock.BusyError
		if errors.As(err, &busy) {
			who := "another process"
			if busy.PID > 0 {
				who = fmt.Sprintf("process %d", busy.PID)
			}
			return nil, fmt.Errorf("data_dir %s is in use by %s", cfg.DataDir, who)
		}
		return nil, fmt.Errorf("app: embedded server store: %w", err)
	}
	defer func() {
		if err != nil {
			lock.Release()
		}
	}()
	// nats.sync = "always": the group commit (bus.Syncer) where syncfs(2)
	// exists, else nats-server's fsync per record.
	group := cfg.NATS.Sync == config.SyncAlways && bus.HaveSyncFS
	eo := bus.EmbeddedOptions{StoreDir: cfg.NATSDir(), Listen: cfg.NATS.Listen, MaxStore: cfg.NATS.MaxStore,
		SyncAlways:   cfg.NATS.Sync == config.SyncPerWrite || (cfg.NATS.Sync == config.SyncAlways && !group),
		SyncInterval: cfg.NATS.SyncInterval()}
	// Without nats.listen the server still listens, on the loopback at a
	// port of its choosing and with a password of its own, for the tools
	// on this machine (`mailroot queue`, mailq) that read both from
	// data_dir; nothing else can reach it.
	access := bus.LocalAccess{User: cfg.NATS.User, Password: cfg.NATS.Password, Token: cfg.NATS.Token, PID: os.Getpid()}
	var inproc []nats.Option
	if eo.Listen == "" {
		if eo.Password, err = bus.NewLocalPassword(); err != nil {
			return nil, err
		}
		eo.Listen, eo.User = "127.0.0.1:0", bus.LocalUser
		access.User, access.Password, access.Token = eo.User, eo.Password, ""
		inproc = append(inproc, nats.UserInfo(eo.User, eo.Password))
	}
	ns, err := bus.StartEmbedded(eo, log)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			ns.Shutdown()
			ns.WaitForShutdown()
		}
	}()
	if access.URL, err = bus.LocalURL(ns.Addr()); err != nil {
		return nil, err
	}
	if err = bus.WriteLocalAccess(cfg.DataDir, access); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = bus.RemoveLocalAccess(cfg.DataDir)
		}
	}()
	if cfg.NATS.SyncInterval() > 0 {
		log.Warn("nats.sync is not \"always\": an OS crash or power cut can lose mail that got its 250", "sync", cfg.NATS.Sync)
	}
	guard := bus.GuardStore(ns, eo, cfg.NATS.Reserve, log)
	gctx, gcancel := context.WithCancel(context.WithoutCancel(ctx))
	gdone := make(chan struct{})
	go func() { guard.Run(gctx); close(gdone) }()
	stopGuard := func() { gcancel(); <-gdone }
	defer func() {
		if err != nil {
			stopGuard()
		}
	}()
	nc, err := bus.ConnectInProcess(ns, "mailroot-all", inproc...)
	if err != nil {
		return nil, err
	}
	var syncer *bus.Syncer
	closeSync := func() error { return nil }
	m := metrics.New()
	if group {
		if syncer, closeSync, err = bus.StoreSyncer(cfg.NATSDir(), cfg.NATS.SyncMethod); err != nil {
			nc.Close()
			return nil, err
		}
		syncer.Delay = cfg.NATS.SyncDelay.D()
		// Where the intake runs in this process, its publishes are
		// announced (Room.Writing) and a round waits for company only
		// when some is on its way; `mailroot nats` only sees requests
		// arrive and keeps the plain delay. The pipeline's syncs ride on
		// intake's (SyncLazy).
		syncer.OnlyForWriters = len(actors) == 0 || slices.Contains(actors, Ingress) || slices.Contains(actors, Pickupwatcher)
		syncer.LazyDelay = bus.PipelineSyncWait
		syncer.Observe = func(d time.Duration) { m.SyncDuration.Observe(d.Seconds()) }
		m.WatchSyncs(syncer.Syncs)
		// Processes that reach this server over the network (tools, the
		// submit package) ask for the same syncs.
		if _, err := bus.ServeSync(nc, syncer); err != nil {
			nc.Close()
			_ = closeSync()
			return nil, err
		}
	}
	// New mail needs room in the store's limit and on its file system,
	// and a store that can be written; with the group commit, every
	// publish is synced before its reply.
	room := func(js jetstream.JetStream) *bus.Room {
		r := &bus.Room{JS: js, Reserve: cfg.NATS.Reserve, Dir: cfg.NATSDir(), Fault: guard.Err, Limit: guard.Limit}
		if syncer != nil {
			r.Sync, r.SyncLazy, r.Writing = syncer.Sync, syncer.SyncLazy, syncer.Writing
		}
		return r
	}
	// In one process the busy actors still get a connection each, as they
	// have in a split deployment: a connection is one reader and one
	// writer on each side, so on a shared one the PubAcks that hold back
	// a 250 would queue behind the router's and delivery's messages.
	own := func(name string) (*nats.Conn, error) { return bus.ConnectInProcess(ns, name, inproc...) }
	n, err := start(ctx, cfg, log, nc, actors, room, own, m)
	if err != nil {
		nc.Close()
		_ = closeSync()
		return nil, err
	}
	n.Server, n.lock, n.Guard, n.stopGuard, n.closeSync, n.Syncer = ns, lock, guard, stopGuard, closeSync, syncer
	n.inproc, n.accessDir = inproc, cfg.DataDir
	return n, nil
}

// ConnectInProcess opens another in-process connection to the node's
// embedded server, with the credentials the server requires.
func (n *Node) ConnectInProcess(name string) (*nats.Conn, error) {
	if n.Server == nil {
		return nil, errors.New("node: no embedded server")
	}
	return bus.ConnectInProcess(n.Server, name, n.inproc...)
}

// Connect connects to the NATS servers in cfg.NATS and starts the given actors.
func Connect(ctx context.Context, cfg config.Config, log *slog.Logger, actors ...string) (*Node, error) {
	name := "mailroot"
	if len(actors) == 1 {
		name += "-" + actors[0]
	}
	nc, err := bus.Connect(ctx, bus.ConnectOptions{
		URL: cfg.NATS.URL, Name: name,
		User: cfg.NATS.User, Password: cfg.NATS.Password, Token: cfg.NATS.Token, CredsFile: cfg.NATS.CredsFile,
		CAFile: cfg.NATS.CAFile, CertFile: cfg.NATS.CertFile, KeyFile: cfg.NATS.KeyFile,
	}, log)
	if err != nil {
		return nil, err
	}
	// Where the server is Mailroot's (`mailroot nats`), its group commit
	// is asked for after every PubAck; another server syncs by its own
	// configuration.
	var room func(jetstream.JetStream) *bus.Room
	if cfg.NATS.Sync == config.SyncAlways {
		if sync := bus.RemoteSync(ctx, nc); sync != nil {
			room = func(js jetstream.JetStream) *bus.Room {
				return &bus.Room{JS: js, Reserve: cfg.NATS.Reserve, Sync: sync, SyncLazy: bus.RemoteSyncLazy(nc)}
			}
		}
	}
	n, err := start(ctx, cfg, log, nc, actors, room, nil, metrics.New())
	if err != nil {
		nc.Close()
		return nil, err
	}
	return n, nil
}

// start starts the actors on nc, counting into m, and the metrics
// listener. room, when not nil, makes the Room that the front doors
// (ingress, pickupwatcher) check before taking new mail; by default they
// check the store's limit alone. own, when not nil, connects ingress,
// router and delivery each on a connection of its own.
func start(ctx context.Context, cfg config.Config, log *slog.Logger, nc *nats.Conn, actors []string, room func(jetstream.JetStream) *bus.Room, own func(name string) (*nats.Conn, error), m *metrics.Metrics) (_ *Node, err error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("app: jetstream: %w", err)
	}
	if err := bus.CheckServer(ctx, nc, js); err != nil {
		return nil, err
	}
	if _, err := bus.Setup(ctx, js, cfg); err != nil {
		return nil, err
	}
	if len(actors) == 0 {
		actors = Actors
	}
	// Every process tells the queue's depth: it is one reading of the
	// stream, whichever process is scraped.
	m.WatchQueue(js)
	m.WatchStreams(js)
	m.WatchNATS(nc)
	n := &Node{Conn: nc, JS: js, Metrics: m, log: log, cancels: map[string]context.CancelFunc{}, dones: map[string]chan error{}, errc: make(chan error, len(Actors))}
	// One Room for every actor: what intake admits and what the pipeline
	// forwards are counted against the same reserve. The busy actors
	// publish through their own connection (Via), the others through nc.
	shared := &bus.Room{JS: js, Reserve: cfg.NATS.Reserve}
	if room != nil {
		shared = room(js)
	}
	n.Room = shared
	defer func() {
		if err != nil {
			for _, c := range n.own {
				c.Close()
			}
		}
	}()
	services := map[string]runner{}
	for _, a := range Actors {
		if !contains(actors, a) {
			continue
		}
		var r runner
		js := js
		if own != nil && (a == Ingress || a == Router || a == Delivery) {
			c, err := own("mailroot-" + a)
			if err != nil {
				return nil, err
			}
			n.own = append(n.own, c)
			if js, err = jetstream.New(c); err != nil {
				return nil, fmt.Errorf("app: jetstream: %w", err)
			}
		}
		switch a {
		case Ingress:
			var s *ingress.Service
			s, err = ingress.New(cfg, log, js)
			if err == nil {
				s.Room, s.Metrics = shared.Via(js), m
			}
			n.Ingress, r = s, s
		case Router:
			var s *router.Service
			if s, err = router.New(cfg, log, js); err == nil {
				s.Room, s.Metrics = shared.Via(js), m
			}
			r = s
		case Delivery:
			var s *delivery.Service
			if s, err = delivery.New(cfg, log, js); err == nil {
				s.Room, s.Metrics = shared.Via(js), m
			}
			r = s
		case Badmail:
			var s *badmail.Service
			if s, err = badmail.New(cfg, log, js); err == nil {
				s.Room, s.Metrics = shared, m
			}
			r = s
		case Pickupwatcher:
			var s *pickupwatcher.Service
			if s, err = pickupwatcher.New(cfg, log, js); err == nil {
				s.Room, s.Metrics = shared, m
			}
			r = s
		}
		if err != nil {
			return nil, err
		}
		services[a] = r
		n.order = append(n.order, a)
	}
	for _, a := range actors {
		if _, ok := services[a]; !ok && a != ServerOnly {
			return nil, fmt.Errorf("app: unknown actor %q", a)
		}
	}
	if err := n.followConfig(ctx, js, cfg, services); err != nil {
		return nil, err
	}
	for _, a := range n.order {
		actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan error, 1)
		n.cancels[a], n.dones[a] = cancel, done
		go func() {
			err := services[a].Run(actx)
			if err != nil && actx.Err() == nil {
				n.errc <- fmt.Errorf("%s: %w", a, err)
			}
			done <- err
		}()
	}
	if l := cfg.Metrics.Listen; l != "" {
		// Metrics never stop mail: a port in use (actors of one host left
		// on the default) is said, and the process runs without them.
		if srv, err := metrics.Listen(l, m, log, cfg.Metrics.Pprof); err != nil {
			log.Warn("metrics listener failed, this process serves no metrics: give each process its own metrics.listen", "metrics_listen", l, "err", err)
		} else {
			n.metricsSrv = srv
			log.Info("serving metrics", "addr", "http://"+srv.Addr()+"/metrics")
		}
	}
	log.Info("started", "actors", n.order)
	return n, nil
}

// applier is an actor that takes a changed configuration while it runs.
type applier interface {
	Apply(config.Config)
}

// followConfig applies the live configuration (internal/liveconfig, the
// mta-config bucket) to the actors: the bucket's values now, before they
// start, and every change from then on, within the time the KV watch
// takes to deliver it.
func (n *Node) followConfig(ctx context.Context, js jetstream.JetStream, cfg config.Config, services map[string]runner) error {
	var appliers []applier
	for _, a := range n.order {
		if ap, ok := services[a].(applier); ok {
			appliers = append(appliers, ap)
		}
	}
	n.stopLive = func() {}
	if len(appliers) == 0 {
		return nil
	}
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	_, err := liveconfig.Follow(lctx, js, cfg, n.log.With("svc", "liveconfig"), func(c config.Config, _ map[string]liveconfig.Entry) {
		for _, ap := range appliers {
			ap.Apply(c)
		}
	})
	if err != nil {
		cancel()
		return fmt.Errorf("app: live configuration: %w", err)
	}
	n.stopLive = cancel
	return nil
}

// MetricsAddr is the bound address of the metrics listener ("" when
// there is none): the free port chosen for metrics.listen port 0.
func (n *Node) MetricsAddr() string {
	if n.metricsSrv == nil {
		return ""
	}
	return n.metricsSrv.Addr()
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Err reports the first actor that failed on its own.
func (n *Node) Err() <-chan error { return n.errc }

// ShutdownGrace bounds how long Stop waits for the actors to finish or
// hand back their work (ingress: sessions in DATA; workers: messages in
// hand), all together. Whatever is still in hand then was not acked and is
// delivered again, by this node after a restart or by another one. The
// compose file gives a container 60 s to stop.
const ShutdownGrace = 40 * time.Second

// Stop stops the actors in order (each finishes or hands back its
// in-flight work), drains the connection and shuts the embedded server down.
func (n *Node) Stop() {
	n.once.Do(func() {
		deadline := time.NewTimer(ShutdownGrace)
		defer deadline.Stop()
		late := false
		n.stopLive()
		for _, a := range n.order {
			n.cancels[a]()
			if late {
				continue
			}
			t0 := time.Now()
			select {
			case <-n.dones[a]:
				n.log.Debug("actor stopped", "actor", a, "took", time.Since(t0).Round(time.Millisecond))
			case <-deadline.C:
				// What it holds is not acked: the server hands it out again.
				n.log.Error("actors did not stop within the grace period, leaving them", "actor", a, "grace", ShutdownGrace)
				late = true
			}
		}
		for _, c := range append(n.own, n.Conn) {
			if err := c.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
				n.log.Warn("drain", "err", err)
			}
		}
		for _, c := range append(n.own, n.Conn) {
			for i := 0; i < 100 && !c.IsClosed(); i++ {
				time.Sleep(20 * time.Millisecond)
			}
			c.Close()
		}
		n.shutdownServer()
		n.log.Info("stopped")
	})
}

// Kill stops everything at once without finishing in-flight work, as
// close as a test can get to a crash inside one process.
func (n *Node) Kill() {
	n.once.Do(func() {
		for _, c := range n.own {
			c.Close()
		}
		n.Conn.Close()
		n.stopLive()
		for _, a := range n.order {
			n.cancels[a]()
		}
		for _, a := range n.order {
			<-n.dones[a]
		}
		n.shutdownServer()
	})
}

// shutdownServer shuts the embedded server down, if the node has one, and
// only then gives up the store's lock: a process waiting to start must not
// open the store while this one still writes it.
func (n *Node) shutdownServer() {
	if n.metricsSrv != nil {
		n.metricsSrv.Close()
	}
	if n.stopGuard != nil {
		n.stopGuard()
	}
	if n.Server != nil {
		n.Server.Shutdown()
		n.Server.WaitForShutdown()
	}
	if n.closeSync != nil {
		_ = n.closeSync()
	}
	if n.accessDir != "" {
		if err := bus.RemoveLocalAccess(n.accessDir); err != nil {
			n.log.Warn("local access file", "err", err)
		}
	}
	n.lock.Release()
}
