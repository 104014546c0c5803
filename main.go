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
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/node"
)

// command is one subcommand.
type command struct {
	name, help string
	// run gets the arguments after the command name and returns the exit
	// status.
	run func(args []string) int
}

// commands is every subcommand, in the order `mailroot help` lists them:
// the actors first, then the tools (their code is in cmd_*.go).
var commands = []command{
	{"all", "embedded nats-server and every actor in one process (the default)", actorCommand("all")},
	{node.Ingress, "SMTP server: accepts mail and queues it on mail.in", actorCommand(node.Ingress)},
	{node.Router, "routes mail.in to mail.out.<domain>, mail.drop", actorCommand(node.Router)},
	{node.Delivery, "delivers mail.out.* over SMTP and writes mail.drop into Drop/", actorCommand(node.Delivery)},
	{node.Badmail, "writes mail.bad into Badmail/", actorCommand(node.Badmail)},
	{node.Pickupwatcher, "turns files dropped into Pickup/ into mail", actorCommand(node.Pickupwatcher)},
	{node.ServerOnly, "the embedded nats-server alone, with the group commit, for actors in other processes (nats.listen)", actorCommand(node.ServerOnly)},
	{"sendmail", "sendmail-compatible submission for scripts and cron (reads the message on stdin)", func(args []string) int {
		return sendmail(args, os.Stdin, os.Stderr)
	}},
	{"user", "SMTP AUTH users: user add|passwd|del|list NAME (the users file)", func(args []string) int {
		return userCommand(args, os.Stdin, os.Stdout, os.Stderr)
	}},
	{"sessions", "list the live SMTP sessions of all ingress processes", func(args []string) int {
		return sessionsCommand(args, os.Stdout, os.Stderr)
	}},
	{"events", "the mail log: events [-since 1h] [-until T] [-type T] [-domain D] [-id QID] [-follow] [-json]", func(args []string) int {
		return eventsCommand(args, os.Stdout, os.Stderr)
	}},
	{"queue", "the mail queue: queue list [-domain D] [-sender S] [-older 1h] [-state S] [-json] | show ID | cat ID | flush ID…|-domain D|-all | delete|hold|release|requeue ID…|-domain D | bounce ID…", func(args []string) int {
		return queueCommand(args, os.Stdout, os.Stderr)
	}},
	{"redrive", "send again the mail that bounced (or expired, or went to Badmail) in a time range: redrive -since T -until T [-domain D] [-type bounced|expired|badmail]", func(args []string) int {
		return redriveCommand(args, os.Stdout, os.Stderr)
	}},
	{"mailq", "list the mail queue as Postfix's mailq does (also as a `mailq` symlink and `sendmail -bp`)", func(args []string) int {
		return mailqCommand(args, os.Stdout, os.Stderr)
	}},
	{"badmail", "the Badmail directory: badmail list [-json] | show NAME | requeue NAME… | delete NAME…", func(args []string) int {
		return badmailCommand(args, os.Stdout, os.Stderr)
	}},
	{"dkim", "DKIM signing keys: dkim keygen -domain D [-selector S] [-algorithm rsa|ed25519], dkim list", func(args []string) int {
		return dkimCommand(args, os.Stdout, os.Stderr)
	}},
	{"healthcheck", "container health probe: exit 0 when the actors in this container are up and connected to NATS", runHealthcheck},
	{"version", "the mailroot build: module version, VCS commit, Go and nats-server versions (also -version)", func(args []string) int {
		return versionCommand(args, os.Stdout, os.Stderr)
	}},
	{"admin", "the web admin console: admin [-listen HOST:PORT] (mailroot all serves it on admin.listen, 127.0.0.1:8025)", func(args []string) int {
		return adminCommand(args, os.Stdout, os.Stderr)
	}},
	{"config", "config show [-n]: the effective configuration as TOML (-n: what differs from the defaults); config check: validate a file; config get|set|unset|history|rollback|export: the live configuration (mta-config)", func(args []string) int {
		return configCommand(args, os.Stdout, os.Stderr)
	}},
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: mailroot <command> [-config FILE] [-data DIR] [-nats URL] [options]\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-14s %s\n", c.name, c.help)
	}
}

func main() {
	os.Exit(run(os.Args))
}

// run dispatches on the command name. Invoked as "sendmail" (a symlink),
// argv[0] names the command.
func run(argv []string) int {
	cmd, args := "all", argv[1:]
	if base := filepath.Base(argv[0]); base != "mailroot" && findCommand(base) != nil {
		cmd = base
	} else if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	if len(args) > 0 && (args[0] == "-version" || args[0] == "--version") && cmd == "all" {
		cmd, args = "version", args[1:]
	}
	if cmd == "help" {
		usage(os.Stdout)
		return 0
	}
	c := findCommand(cmd)
	if c == nil {
		fmt.Fprintf(os.Stderr, "mailroot: unknown command %q\n", cmd)
		usage(os.Stderr)
		return 2
	}
	return c.run(args)
}

func findCommand(name string) *command {
	for i := range commands {
		if commands[i].name == name {
			return &commands[i]
		}
	}
	return nil
}

// commonFlags are the flags every command takes.
type commonFlags struct {
	config, data, nats *string
}

func addCommonFlags(fs *flag.FlagSet) commonFlags {
	return commonFlags{
		config: fs.String("config", os.Getenv("MAILROOT_CONFIG"), "configuration file (TOML)"),
		data:   fs.String("data", "", "data directory (overrides data_dir)"),
		nats:   fs.String("nats", "", "NATS server URL(s), comma-separated (overrides nats.url)"),
	}
}

// load reads the configuration: file, then environment, then flags.
func (f commonFlags) load() (config.Config, error) {
	cfg, err := config.Load(*f.config)
	if err != nil {
		return cfg, err
	}
	applyEnv(&cfg)
	if *f.data != "" {
		cfg.DataDir = *f.data
	}
	if *f.nats != "" {
		cfg.NATS.URL = *f.nats
	}
	return cfg, cfg.Validate()
}

// actorCommand runs one actor, or all of them.
func actorCommand(cmd string) func(args []string) int {
	return func(args []string) int {
		fs := flag.NewFlagSet("mailroot "+cmd, flag.ContinueOnError)
		cf := addCommonFlags(fs)
		metricsAddr := fs.String("metrics", "", "serve Prometheus metrics on host:port (overrides metrics.listen): give each actor process of a host its own")
		if err := fs.Parse(args); err != nil {
			return 2
		}
		cfg, err := cf.load()
		if err == nil && *metricsAddr != "" {
			cfg.Metrics.Listen = *metricsAddr
			err = cfg.Validate()
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "mailroot: %v\n", err)
			return 2
		}
		log := newLogger(cfg)
		if cmd == node.ServerOnly && (cfg.NATS.URL != "" || cfg.NATS.Listen == "") {
			fmt.Fprintf(os.Stderr, "mailroot: nats runs the embedded server for other processes: it needs nats.listen (or MAILROOT_NATS_LISTEN) and no nats.url\n")
			return 2
		}
		if cmd != "all" && cmd != node.ServerOnly && cfg.NATS.URL == "" {
			fmt.Fprintf(os.Stderr, "mailroot: %s needs a NATS server: -nats URL, nats.url or MAILROOT_NATS_URL (only `all` embeds one)\n", cmd)
			return 2
		}
		return runActors(cmd, cfg, log)
	}
}

func runActors(cmd string, cfg config.Config, log *slog.Logger) int {
	slog.SetDefault(log) // for the few lines said outside any actor (bus.WaitForRoom)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Info("starting", "command", cmd, "hostname", cfg.Hostname, "data_dir", cfg.DataDir, "nats", redact(cfg.NATS.URL))

	var n *node.Node
	var err error
	switch {
	case cmd == "all" && cfg.NATS.URL == "":
		n, err = node.StartEmbedded(ctx, cfg, log)
	case cmd == node.ServerOnly:
		n, err = node.StartEmbedded(ctx, cfg, log, node.ServerOnly)
	case cmd == "all":
		n, err = node.Connect(ctx, cfg, log)
	default:
		n, err = node.Connect(ctx, cfg, log, cmd)
	}
	if err != nil {
		log.Error("start failed", "err", err)
		return 1
	}
	stopHeartbeat := startHeartbeat(cmd, n.Conn, log) // for `mailroot healthcheck`
	defer stopHeartbeat()
	if cmd == "all" && cfg.Admin.Listen != "" {
		// The console is not mail: if it cannot start, mail still flows.
		if _, _, err := startAdmin(ctx, cfg, n.Conn, log); err != nil {
			log.Error("admin console not started", "svc", "admin", "err", err)
		}
	}
	status := 0
	select {
	case <-ctx.Done():
	case err := <-n.Err():
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
	n.Stop()
	return status
}

// applyEnv lets containers override a few keys without a file.
func applyEnv(c *config.Config) {
	if v := os.Getenv("MAILROOT_NATS_URL"); v != "" {
		c.NATS.URL = v
	}
	if v := os.Getenv("MAILROOT_NATS_LISTEN"); v != "" {
		c.NATS.Listen = v
	}
	if v := os.Getenv("MAILROOT_DATA_DIR"); v != "" {
		c.DataDir = v
	}
	if v := os.Getenv("MAILROOT_HOSTNAME"); v != "" {
		// [[site]] blocks that did not name a host of their own took the
		// file's when it was read: they follow the override too.
		for i := range c.Sites {
			if c.Sites[i].Hostname == c.Hostname {
				c.Sites[i].Hostname = v
			}
		}
		c.Hostname = v
	}
	if v := os.Getenv("MAILROOT_NATS_REPLICAS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			n = -1 // Validate names the key
		}
		c.NATS.Replicas = n
	}
}

func newLogger(c config.Config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.SlogLevel()}
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
	return maskURLs(list)
}
