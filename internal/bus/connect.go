package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// MinServerVersion is the oldest nats-server Mailroot runs against: message
// schedules arrived in 2.12.
const MinServerVersion = "2.12.0"

// Sentinel errors of the server checks.
var (
	ErrServerTooOld = errors.New("bus: nats-server too old")
	ErrNoJetStream  = errors.New("bus: JetStream not enabled")
)

// ConnectOptions describe how a separate process reaches NATS.
type ConnectOptions struct {
	// URL is a comma-separated list of server URLs.
	URL string
	// Name is the connection name shown by the server (e.g. "mailroot-router").
	Name string
	// User and Password, or Token, or CredsFile authenticate the connection.
	User, Password, Token, CredsFile string
	// CAFile, CertFile and KeyFile configure TLS.
	CAFile, CertFile, KeyFile string
}

// Connect dials NATS with reconnects forever and checks the server.
func Connect(ctx context.Context, o ConnectOptions, log *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted()) }),
		// Asynchronous errors (e.g. a pull batch dropped client-side after a
		// reconnect, which the server redelivers after AckWait) go to the
		// log, not to nats.go's plain-text default on stderr.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Warn("nats async error", "subject", subject, "err", err)
		}),
	}
	if o.User != "" {
		opts = append(opts, nats.UserInfo(o.User, o.Password))
	}
	if o.Token != "" {
		opts = append(opts, nats.Token(o.Token))
	}
	if o.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(o.CredsFile))
	}
	if o.CAFile != "" {
		opts = append(opts, nats.RootCAs(o.CAFile))
	}
	if o.CertFile != "" {
		opts = append(opts, nats.ClientCert(o.CertFile, o.KeyFile))
	}
	nc, err := nats.Connect(o.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("bus: connect %s: %w", o.URL, err)
	}
	// RetryOnFailedConnect returns at once; wait for the first connection.
	deadline := time.Now().Add(30 * time.Second)
	for !nc.IsConnected() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			nc.Close()
			return nil, fmt.Errorf("bus: connect %s: no server reachable", o.URL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nc, nil
}

// CheckServer refuses a server older than MinServerVersion or one without
// JetStream. JetStream may need a moment after start, so it is retried.
func CheckServer(ctx context.Context, nc *nats.Conn, js jetstream.JetStream) error {
	v := nc.ConnectedServerVersion()
	if !versionAtLeast(v, MinServerVersion) {
		return fmt.Errorf("%w: server %s is %s, Mailroot needs %s or newer (message schedules)", ErrServerTooOld, nc.ConnectedUrlRedacted(), v, MinServerVersion)
	}
	var err error
	for i := 0; i < 20; i++ {
		ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err = js.AccountInfo(ictx)
		cancel()
		if err == nil {
			return nil
		}
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			return fmt.Errorf("%w on %s: start nats-server with -js", ErrNoJetStream, nc.ConnectedUrlRedacted())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("%w on %s: %v", ErrNoJetStream, nc.ConnectedUrlRedacted(), err)
}

// versionAtLeast compares dotted versions numerically ("2.15.2-beta" ok).
func versionAtLeast(have, want string) bool {
	h, w := parseVersion(have), parseVersion(want)
	for i := range 3 {
		if h[i] != w[i] {
			return h[i] > w[i]
		}
	}
	return true
}

func parseVersion(v string) [3]int {
	var out [3]int
	v, _, _ = strings.Cut(strings.TrimPrefix(v, "v"), "-")
	for i, p := range strings.SplitN(v, ".", 3) {
		out[i], _ = strconv.Atoi(p)
	}
	return out
}
