package main

// `mailroot admin [-listen ADDR]` serves the web admin console
// (internal/admin) for the cluster the tools connect to; `mailroot all`
// serves it too, on admin.listen (127.0.0.1:8025 by default). The pages
// read and act through the code of the tools: readSessions (sessions),
// queueReader (queue), liveconfig.Store (config).

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/admin"
	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/liveconfig"
	"github.com/mailroot/mailroot/internal/notify"
	"github.com/mailroot/mailroot/internal/queue"
	"github.com/mailroot/mailroot/internal/users"
)

func adminCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mailroot admin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addCommonFlags(fs)
	listen := fs.String("listen", "", "serve the console on host:port (overrides admin.listen; outside loopback it needs admin.tls_cert or the site certificate)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: mailroot admin [-listen HOST:PORT] [-config FILE] [-data DIR] [-nats URL]")
		return 2
	}
	cfg, err := cf.load()
	if err == nil && *listen != "" {
		cfg.Admin.Listen = *listen
		err = cfg.Validate()
	}
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return 2
	}
	if cfg.Admin.Listen == "" {
		fmt.Fprintln(stderr, "mailroot: admin: no address to serve on: -listen HOST:PORT or admin.listen")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := newLogger(cfg)
	nc, err := toolConnect(ctx, cfg, "mailroot admin")
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return 1
	}
	defer nc.Close()
	addr, done, err := startAdmin(ctx, cfg, nc, log)
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "admin console on %s\n", adminURL(cfg, addr))
	if err := <-done; err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return 1
	}
	return 0
}

// adminURL is the console's address as a URL.
func adminURL(cfg config.Config, addr string) string {
	if cert, _ := cfg.AdminTLS(); cert != "" {
		return "https://" + addr + "/"
	}
	return "http://" + addr + "/"
}

// startAdmin serves the admin console of cfg over nc on cfg.Admin.Listen
// until ctx ends. It returns the bound address and a channel that gets
// the end of serving.
func startAdmin(ctx context.Context, cfg config.Config, nc *nats.Conn, log *slog.Logger) (string, <-chan error, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return "", nil, fmt.Errorf("admin: jetstream: %w", err)
	}
	base := cfg.Source
	if base == "" {
		if base, err = cfg.Text(); err != nil {
			return "", nil, err
		}
	}
	st, err := liveconfig.Open(ctx, js, cfg.NATS.Replicas, base)
	if err != nil {
		return "", nil, err
	}
	if cfg.Source == "" {
		// No file here: the one the running processes apply the live
		// keys over, as `mailroot config set` does.
		if b, ok, err := st.StoredBase(ctx); err != nil {
			return "", nil, err
		} else if ok {
			st.Base = b
		}
	}
	us, err := users.NewStore(cfg.UsersPath())
	if err != nil {
		log.Warn("admin: users file unreadable: nobody can log in until it is fixed", "err", err)
	}
	cert, key := cfg.AdminTLS()
	srv, err := admin.New(admin.Options{
		JS: js, Config: st, Users: us, Limiter: users.NewLimiter(cfg.Auth), TLS: cert != "", Log: log,
		Sessions: func(ctx context.Context) ([]bus.SessionInfo, error) { return readSessions(ctx, js) },
		Queue:    func(ctx context.Context) ([]admin.QueueItem, error) { return adminQueue(ctx, nc, js) },
		Act: func(ctx context.Context, action, id, who string) (string, error) {
			return adminAct(ctx, cfg, nc, js, action, id, who)
		},
		Badmail: func(context.Context) ([]admin.BadItem, error) {
			list, err := listBadmail(cfg.BadmailDir())
			out := make([]admin.BadItem, 0, len(list))
			for _, e := range list {
				out = append(out, admin.BadItem{Name: e.Name, Reason: e.Reason, Sender: e.Sender, Recipients: e.Recipients, Size: e.Size, Time: e.Time})
			}
			return out, err
		},
		BadAct: func(ctx context.Context, action, name, who string) (string, error) {
			if name != filepath.Base(name) || strings.HasPrefix(name, ".") {
				return "", fmt.Errorf("%q is not a Badmail entry", name)
			}
			e, err := readBadEntry(cfg.BadmailDir(), name)
			if err != nil {
				return "", err
			}
			return badAction(ctx, js, cfg.BadmailDir(), e, action, who, io.Discard)
		},
	})
	if err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", cfg.Admin.Listen)
	if err != nil {
		return "", nil, fmt.Errorf("admin: listen %s: %w", cfg.Admin.Listen, err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, cert, key) }()
	log.Info("admin console listening", "svc", "admin", "url", adminURL(cfg, ln.Addr().String()))
	return ln.Addr().String(), done, nil
}

// adminQueue lists the MAIL stream as `mailroot queue list` does.
func adminQueue(ctx context.Context, nc *nats.Conn, js jetstream.JetStream) ([]admin.QueueItem, error) {
	q := &queueReader{nc: nc, js: js}
	var err error
	q.stream, err = js.Stream(ctx, bus.StreamMail)
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("stream %s: %w", bus.StreamMail, err)
	}
	list, err := q.entries(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]admin.QueueItem, 0, len(list))
	for _, e := range list {
		out = append(out, admin.QueueItemOf(e))
	}
	return out, nil
}

// adminAct is a queue action of the console: the same code as `mailroot
// queue flush|delete|hold|release|bounce ID` (internal/queue, and
// bus.FireDeferred for a flush), done as the console's admin.
func adminAct(ctx context.Context, cfg config.Config, nc *nats.Conn, js jetstream.JetStream, action, id, who string) (string, error) {
	a := &queue.Admin{JS: js, Room: &bus.Room{JS: js, Sync: bus.RemoteSync(ctx, nc)}, Who: who, Wait: 20 * time.Second}
	sel := queue.Selection{IDs: []string{id}}
	var res []queue.Result
	var err error
	switch action {
	case "flush":
		entries, err := queue.Scan(ctx, js)
		if err != nil {
			return "", err
		}
		for _, e := range entries {
			if e.QueueID != id || !strings.HasPrefix(e.Subject, bus.SubjDeferPrefix) {
				continue
			}
			_, fired, err := bus.FireDeferred(ctx, a.Room, e.Tok, e.Subject, func(qid string, seq uint64) string {
				return envelope.FlushID(qid, e.Tok, seq)
			})
			if err != nil {
				return "", err
			}
			if fired {
				ev := bus.Event{Type: bus.EventAdmin, Admin: who, QueueID: id, Reason: "flushed: to " + bus.Out(e.Tok) + " now"}
				if e.Env != nil {
					ev.Domain = envelope.NormalizeDomain(e.Env.Domain)
				}
				if err := bus.EmitSync(ctx, js, ev); err != nil {
					return "to " + bus.Out(e.Tok) + " now (its event was not recorded: " + err.Error() + ")", nil
				}
				return "to " + bus.Out(e.Tok) + " now", nil
			}
			return "already on its way (its retry fired meanwhile)", nil
		}
		return "", fmt.Errorf("no deferred message %s", id)
	default:
		n := notify.NewNotifier(cfg, js, nil)
		n.Room = a.Room
		a.Notify = n
		res, err = a.Do(ctx, action, sel, "returned by the administrator")
	}
	if err != nil {
		return "", err
	}
	var done []string
	for _, r := range res {
		if r.Err != nil {
			return "", r.Err
		}
		done = append(done, r.Done)
	}
	if len(done) == 0 {
		return "", fmt.Errorf("no such message: %s", id)
	}
	return strings.Join(done, "; "), nil
}
