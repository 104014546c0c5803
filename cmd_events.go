package main

// `mailroot events` reads the mail log, MAIL_EVENTS (README "Events"):
// what happened to which mail, when, from a time on, filtered on the
// server by type and domain, one line per event or JSON lines.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
)

func eventsCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mailroot events", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addCommonFlags(fs)
	since := fs.String("since", "1h", "first event: RFC 3339 time or a duration back from now (30m, 2d); with -id, the default is the whole log")
	until := fs.String("until", "", "last event: RFC 3339 time or a duration back from now (default: now, or for ever with -follow)")
	typ := fs.String("type", "", "only this type: "+strings.Join(bus.EventTypes, ", "))
	domain := fs.String("domain", "", "only events about this recipient domain")
	qid := fs.String("id", "", "only the events of this queue id")
	follow := fs.Bool("follow", false, "keep reading new events until interrupted")
	asJSON := fs.Bool("json", false, "one JSON event per line, as stored")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mailroot: events takes no arguments, got %q\n", fs.Arg(0))
		return 2
	}
	now := time.Now()
	f := bus.EventFilter{Type: *typ, QueueID: strings.TrimSpace(*qid)}
	sinceSet := false
	fs.Visit(func(fl *flag.Flag) { sinceSet = sinceSet || fl.Name == "since" })
	if f.QueueID != "" && !sinceSet {
		*since = "" // one mail's whole life, as long as events are kept
	}
	var err error
	if f.Since, err = parseWhen(*since, now); err != nil {
		fmt.Fprintf(stderr, "mailroot: -since: %v\n", err)
		return 2
	}
	if f.Until, err = parseWhen(*until, now); err != nil {
		fmt.Fprintf(stderr, "mailroot: -until: %v\n", err)
		return 2
	}
	if !f.Until.IsZero() && !f.Since.IsZero() && f.Until.Before(f.Since) {
		fmt.Fprintf(stderr, "mailroot: -until %s is before -since %s\n", f.Until.Format(time.RFC3339), f.Since.Format(time.RFC3339))
		return 2
	}
	if f.Type != "" && !slices.Contains(bus.EventTypes, f.Type) {
		fmt.Fprintf(stderr, "mailroot: -type: unknown event type %q (one of %s)\n", f.Type, strings.Join(bus.EventTypes, ", "))
		return 2
	}
	if *domain != "" {
		d := envelope.NormalizeDomain(*domain)
		if err := envelope.CheckDomain(d); err != nil && !strings.HasPrefix(d, "[") {
			fmt.Fprintf(stderr, "mailroot: -domain: %q is not a domain: %v\n", *domain, err)
			return 2
		}
		f.Domain = d
	}
	if f.QueueID != "" && !envelope.ValidQueueID(f.QueueID) {
		fmt.Fprintf(stderr, "mailroot: -id: %q is not a queue id\n", f.QueueID)
		return 2
	}
	cfg, err := cf.load()
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return 2
	}
	// With no NATS URL, a local `mailroot all` is used (as by `mailroot
	// queue`).
	if err := useLocalServer(&cfg); err != nil {
		fmt.Fprintf(stderr, "mailroot: events needs a NATS server: -nats URL, nats.url or MAILROOT_NATS_URL, or `mailroot all` running on this machine: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if !*follow {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
	}
	enc := json.NewEncoder(stdout)
	n := 0
	err = readEvents(ctx, cfg, f, *follow, func(e bus.Event) error {
		n++
		if *asJSON {
			return enc.Encode(e)
		}
		_, err := fmt.Fprintln(stdout, formatEvent(e))
		return err
	})
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return 1
	}
	if !*asJSON && !*follow && n == 0 {
		fmt.Fprintln(stderr, "no events")
	}
	return 0
}

// readEvents connects as the other tools do (toolConnect) and reads the log.
func readEvents(ctx context.Context, cfg config.Config, f bus.EventFilter, follow bool, fn func(bus.Event) error) error {
	nc, err := toolConnect(ctx, cfg, "mailroot events")
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	err = bus.ReadEvents(ctx, js, f, follow, fn)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil // no actor has run yet: no events
	}
	return err
}

// parseWhen reads a -since/-until value: an RFC 3339 time, or a duration
// (config.ParseDuration: "90m", "2d") back from now. "" is no bound.
func parseWhen(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	d, err := config.ParseDuration(s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time (2026-01-02T15:04:05Z) nor a duration back from now (1h, 2d)", s)
	}
	if d < 0 {
		return time.Time{}, fmt.Errorf("%q: a duration back from now cannot be negative", s)
	}
	return now.Add(-d), nil
}

// formatEvent is one event on one line: time, type, queue id, domain,
// then the type's fields (bus.Event.Details).
func formatEvent(e bus.Event) string {
	line := fmt.Sprintf("%s %-9s %s %s", e.Time.Local().Format("2006-01-02 15:04:05.000"), e.Type, dash(e.QueueID), dash(e.Domain))
	if d := e.Details(); d != "" {
		line += " " + d
	}
	return line
}
