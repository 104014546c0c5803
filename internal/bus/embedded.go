package bus

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"golang.org/x/crypto/bcrypt"
)

// EmbeddedOptions configure the in-process nats-server of `mailroot all`.
type EmbeddedOptions struct {
	// StoreDir is where JetStream keeps its files.
	StoreDir string
	// Listen, when not empty, is a host:port for NATS clients (other
	// Mailroot processes, tools). Empty means no network listener at all.
	Listen string
	// SyncAlways fsyncs every write before the PubAck (nats.sync =
	// "per-write"). By default Mailroot leaves it off and syncs in groups
	// after the PubAck instead (Syncer).
	SyncAlways bool
	// SyncInterval is how often the server syncs by itself (0: its
	// default, 2 minutes).
	SyncInterval time.Duration
	// MaxStore caps JetStream file storage in bytes (0 = server default);
	// publishes past it fail and ingress answers 452 4.3.1.
	MaxStore int64
	// User and Password, when set, are required of every client, the
	// in-process ones too (ConnectInProcess with nats.UserInfo): the
	// loopback listener of `mailroot all` is open to every local user,
	// its credentials only to data_dir's owner (LocalAccessFile).
	User, Password string
}

// StartEmbedded starts a JetStream-enabled nats-server in this process and
// waits until it accepts connections. A start the server cannot finish (a
// store it cannot open, a listen address in use) fails at once with the
// server's own error.
func StartEmbedded(o EmbeddedOptions, log *slog.Logger) (*server.Server, error) {
	opts := &server.Options{
		ServerName:         "mailroot",
		JetStream:          true,
		StoreDir:           o.StoreDir,
		SyncAlways:         o.SyncAlways,
		SyncInterval:       o.SyncInterval,
		JetStreamMaxStore:  o.MaxStore,
		NoSigs:             true,
		DontListen:         o.Listen == "",
		MaxPayload:         2 << 20,
		JetStreamMaxMemory: embeddedMaxMemory,
		Username:           o.User,
		Password:           o.Password,
	}
	if o.Password != "" {
		// The server keeps a bcrypt hash (and does not warn about a plain
		// password at every start). The password is 192 random bits: a
		// costly hash would add nothing but time to every connect.
		h, err := bcrypt.GenerateFromPassword([]byte(o.Password), bcrypt.MinCost)
		if err != nil {
			return nil, fmt.Errorf("bus: embedded server password: %w", err)
		}
		opts.Password = string(h)
	}
	if o.Listen != "" {
		host, port, err := net.SplitHostPort(o.Listen)
		if err != nil {
			return nil, fmt.Errorf("bus: embedded listen %q: %w", o.Listen, err)
		}
		opts.Host = host
		if opts.Port, err = strconv.Atoi(port); err != nil {
			return nil, fmt.Errorf("bus: embedded listen %q: %w", o.Listen, err)
		}
		if opts.Port == 0 {
			// nats-server reads port 0 as its default, 4222; a free
			// port is RANDOM_PORT.
			opts.Port = server.RANDOM_PORT
		}
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("bus: embedded server: %w", err)
	}
	fatal := make(chan error, 1)
	ns.SetLoggerV2(slogAdapter{l: log.With("svc", "nats"), fatal: fatal}, false, false, false)
	ns.Start()
	if err := waitReady(ns, fatal, 30*time.Second); err != nil {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, err
	}
	return ns, nil
}

// embeddedMaxMemory caps JetStream memory storage of the embedded server.
const embeddedMaxMemory = 256 << 20

// waitReady waits until ns accepts connections or reports, through its
// logger's Fatalf, the failure after which it never will ("Can't start
// JetStream: …", "Error listening on port: …").
func waitReady(ns *server.Server, fatal <-chan error, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case err := <-fatal:
			return fmt.Errorf("bus: embedded server: %w", err)
		default:
		}
		if ns.ReadyForConnections(50 * time.Millisecond) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bus: embedded server not ready after %v", timeout)
		}
	}
}

// ConnectInProcess connects to an embedded server without a socket; opts
// add to the defaults (nats.UserInfo for a server with a password).
func ConnectInProcess(ns *server.Server, name string, opts ...nats.Option) (*nats.Conn, error) {
	nc, err := nats.Connect("", append([]nats.Option{nats.InProcessServer(ns), nats.Name(name), nats.MaxReconnects(-1)}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("bus: in-process connect: %w", err)
	}
	return nc, nil
}

// slogAdapter lets nats-server log through slog. It hands the first
// Fatalf to fatal (the server calls it instead of exiting), and onError,
// when set, sees every error line (StoreGuard looks for failed writes in
// them).
type slogAdapter struct {
	l       *slog.Logger
	fatal   chan<- error
	onError func(msg string)
}

// Noticef is the server's chatty start-up banner: debug level here.
func (a slogAdapter) Noticef(f string, v ...any) { a.l.Debug(fmt.Sprintf(f, v...)) }
func (a slogAdapter) Warnf(f string, v ...any)   { a.l.Warn(fmt.Sprintf(f, v...)) }
func (a slogAdapter) Fatalf(f string, v ...any) {
	msg := fmt.Sprintf(f, v...)
	a.l.Error(msg)
	select {
	case a.fatal <- errors.New(msg):
	default: // a failure is already waiting
	}
}
func (a slogAdapter) Errorf(f string, v ...any) {
	msg := fmt.Sprintf(f, v...)
	a.l.Error(msg)
	if a.onError != nil {
		a.onError(msg)
	}
}
func (a slogAdapter) Debugf(f string, v ...any) { a.l.Debug(fmt.Sprintf(f, v...)) }
func (a slogAdapter) Tracef(f string, v ...any) {
	a.l.Log(nil, slog.LevelDebug-4, fmt.Sprintf(f, v...))
}
