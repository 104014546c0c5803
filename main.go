// Command mailroot is a mail transfer agent on NATS JetStream. Each actor of
// the pipeline is a subcommand; `mailroot all` runs them all in one process
// around an embedded nats-server. See README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/mailroot/mailroot/internal/app"
	"github.com/mailroot/mailroot/internal/config"
)

var commands = []struct {
	name, help string
}{
	{"all", "embedded nats-server and every actor in one process (the default)"},
	{app.Ingress, "SMTP server: accepts mail and queues it on mail.in"},
	{app.Router, "routes mail.in to mail.out.<domain>, mail.drop"},
	{app.Delivery, "delivers mail.out.* over SMTP and writes mail.drop into Drop/"},
	{app.Badmail, "writes mail.bad into Badmail/"},
	{app.Pickupwatcher, "turns files dropped into Pickup/ into mail"},
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: mailroot <command> [-config FILE] [-data DIR] [-nats URL]\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-14s %s\n", c.name, c.help)
	}
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cmd := "all"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	known := false
	for _, c := range commands {
		known = known || c.name == cmd
	}
	if cmd == "help" {
		usage(os.Stdout)
		return 0
	}
	if !known {
		fmt.Fprintf(os.Stderr, "mailroot: unknown command %q\n", cmd)
		usage(os.Stderr)
		return 2
	}
	fs := flag.NewFlagSet("mailroot "+cmd, flag.ContinueOnError)
	cfgPath := fs.String("config", os.Getenv("MAILROOT_CONFIG"), "configuration file (TOML)")
	dataDir := fs.String("data", "", "data directory (overrides data_dir)")
	natsURL := fs.String("nats", "", "NATS server URL(s), comma-separated (overrides nats.url)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := config.Load(*cfgPath)
	if err == nil {
		applyEnv(&cfg)
		if *dataDir != "" {
			cfg.DataDir = *dataDir
		}
		if *natsURL != "" {
			cfg.NATS.URL = *natsURL
		}
		err = cfg.Validate()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "mailroot: %v\n", err)
		return 2
	}
	log := newLogger(cfg)
	if cmd != "all" && cfg.NATS.URL == "" {
		fmt.Fprintf(os.Stderr, "mailroot: %s needs a NATS server: -nats URL, nats.url or MAILROOT_NATS_URL (only `all` embeds one)\n", cmd)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Info("starting", "command", cmd, "hostname", cfg.Hostname, "data_dir", cfg.DataDir, "nats", redact(cfg.NATS.URL))

	var node *app.Node
	switch {
	case cmd == "all" && cfg.NATS.URL == "":
		node, err = app.StartEmbedded(ctx, cfg, log)
	case cmd == "all":
		node, err = app.Connect(ctx, cfg, log)
	default:
		node, err = app.Connect(ctx, cfg, log, cmd)
	}
	if err != nil {
		log.Error("start failed", "err", err)
		return 1
	}
	status := 0
	select {
	case <-ctx.Done():
	case err := <-node.Err():
		log.Error("actor failed", "err", err)
		status = 1
	}
	stop()
	// A second signal exits at once.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		log.Warn("second signal: exiting now")
		os.Exit(1)
	}()
	log.Info("shutting down")
	node.Stop()
	return status
}

// applyEnv lets containers override a few keys without a file.
func applyEnv(c *config.Config) {
	if v := os.Getenv("MAILROOT_NATS_URL"); v != "" {
		c.NATS.URL = v
	}
	if v := os.Getenv("MAILROOT_DATA_DIR"); v != "" {
		c.DataDir = v
	}
	if v := os.Getenv("MAILROOT_HOSTNAME"); v != "" {
		c.Hostname = v
	}
}

func newLogger(c config.Config) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// redact hides credentials in a NATS URL list.
func redact(list string) string {
	if list == "" {
		return "embedded"
	}
	parts := strings.Split(list, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			u.User = url.User("***")
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
}
