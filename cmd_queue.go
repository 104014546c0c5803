package main

// `mailroot queue` (and `mailq`, `sendmail -bp`) shows what the MAIL stream
// holds, as Postfix's mailq and postcat do for its queue. It reads the
// stream message by message with direct gets by sequence, never through
// a consumer: on a WorkQueue stream a consumer of its own would take the
// actors' mail away from them.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/queue"
)

// Queue states (internal/queue.State).
const (
	stateActive   = queue.StateActive
	stateDeferred = queue.StateDeferred
	stateHeld     = queue.StateHeld
	stateBad      = queue.StateBad
)

// queueEntry is one message part as `queue list -json` prints it.
type queueEntry = queue.Item

func queueUsage(w io.Writer) {
	fmt.Fprint(w, `usage: mailroot queue list [-domain D] [-sender S] [-older 1h] [-state active|deferred|held|bad] [-json]
       mailroot queue show ID
       mailroot queue cat ID
       mailroot queue flush ID... | -domain D | -all
       mailroot queue delete ID... | -domain D        (postsuper -d)
       mailroot queue hold ID... | -domain D          (postsuper -h)
       mailroot queue release ID... | -domain D       (postsuper -H)
       mailroot queue requeue ID... | -domain D | -all (postsuper -r)
       mailroot queue bounce ID... [-reason TEXT]
(delete, hold, release, requeue and bounce wait -wait 2m for a delivery in progress)
(each also takes -config FILE, -data DIR, -nats URL)
`)
}

func queueCommand(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		queueUsage(stderr)
		return 2
	}
	switch args[0] {
	case "list":
		return queueList("mailroot queue list", args[1:], stdout, stderr)
	case "show", "cat":
		return queueOne(args[0], args[1:], stdout, stderr)
	case "flush":
		return queueFlush(args[1:], stdout, stderr)
	case "delete", "hold", "release", "requeue", "bounce":
		return queueAdmin(args[0], args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		queueUsage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "mailroot: queue: unknown subcommand %q\n", args[0])
	queueUsage(stderr)
	return 2
}

// mailqCommand is `mailroot mailq`, a `mailq` symlink and `sendmail -bp`.
func mailqCommand(args []string, stdout, stderr io.Writer) int {
	return queueList("mailq", args, stdout, stderr)
}

// queueFilter selects entries of `queue list`.
type queueFilter struct {
	domain, sender, state string
	older                 time.Duration
}

func (f queueFilter) match(e *queueEntry, now time.Time) bool {
	if f.state != "" && e.State != f.state {
		return false
	}
	if f.older > 0 && !e.Arrival.Before(now.Add(-f.older)) {
		return false
	}
	if f.sender != "" {
		s := strings.ToLower(f.sender)
		from := strings.ToLower(e.Sender)
		if s == "<>" {
			s = ""
		}
		if from != s && !(strings.HasPrefix(s, "@") && strings.HasSuffix(from, s)) {
			return false
		}
	}
	if f.domain != "" && !slices.Contains(e.Domains(), envelope.NormalizeDomain(f.domain)) {
		return false
	}
	return true
}

func queueList(name string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addCommonFlags(fs)
	var f queueFilter
	fs.StringVar(&f.domain, "domain", "", "only mail for this destination domain")
	fs.StringVar(&f.sender, "sender", "", "only mail from this sender (an address, @domain, or <> for the null sender)")
	fs.DurationVar(&f.older, "older", 0, "only mail that arrived longer ago than this (e.g. 1h)")
	fs.StringVar(&f.state, "state", "", "only mail in this state: active, deferred, held or bad")
	asJSON := fs.Bool("json", false, "one JSON object per message")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mailroot: %s takes no arguments, got %q\n", name, fs.Args())
		return 2
	}
	switch f.state {
	case "", stateActive, stateDeferred, stateHeld, stateBad:
	default:
		fmt.Fprintf(stderr, "mailroot: -state %q is not active, deferred, held or bad\n", f.state)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	q, code := openQueue(ctx, cf, name, stderr)
	if q == nil {
		return code
	}
	defer q.nc.Close()
	all, err := q.entries(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return 1
	}
	now := time.Now()
	var list []*queueEntry
	for _, e := range all {
		if f.match(e, now) {
			list = append(list, e)
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		for _, e := range list {
			_ = enc.Encode(e)
		}
		return 0
	}
	printMailq(stdout, list, time.Local)
	return 0
}

// printMailq prints list as Postfix's mailq does: a '*' after the id marks
// mail being delivered, '!' held mail, '#' mail on its way to Badmail;
// deferred mail has its last error in parentheses, and here its attempt
// count and next attempt too.
func printMailq(w io.Writer, list []*queueEntry, loc *time.Location) {
	if len(list) == 0 {
		fmt.Fprintln(w, "Mail queue is empty")
		return
	}
	const indent = 26 + 1 + 1 + 8 + 1 + 19 + 2
	fmt.Fprintf(w, "%-27s %8s %-19s  %s\n", "-Queue ID-", "--Size--", "----Arrival Time---", "-Sender/Recipient-------")
	var total int64
	for _, e := range list {
		mark := " "
		switch e.State {
		case stateActive:
			mark = "*"
		case stateHeld:
			mark = "!"
		case stateBad:
			mark = "#"
		}
		sender := e.Sender
		if sender == "" {
			sender = "MAILER-DAEMON"
		}
		fmt.Fprintf(w, "%-26s%s %8d %-19s  %s\n", e.ID, mark, e.Size, e.Arrival.In(loc).Format("Mon Jan _2 15:04:05"), sender)
		if e.Malformed != "" {
			fmt.Fprintf(w, "(malformed envelope: %s)\n", e.Malformed)
		}
		if e.LastError != "" {
			fmt.Fprintf(w, "(%s)\n", e.LastError)
		}
		if e.NextAttempt != nil {
			fmt.Fprintf(w, "(attempt %d, next attempt %s)\n", e.Attempt, e.NextAttempt.In(loc).Format("Mon Jan _2 15:04:05"))
		}
		for _, r := range e.Recipients {
			fmt.Fprintf(w, "%s%s\n", strings.Repeat(" ", indent), r)
		}
		fmt.Fprintln(w)
		total += e.Size
	}
	req := "Requests"
	if len(list) == 1 {
		req = "Request"
	}
	fmt.Fprintf(w, "-- %d Kbytes in %d %s.\n", (total+1023)/1024, len(list), req)
}

// queueOne is `queue show ID` and `queue cat ID`.
func queueOne(sub string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mailroot queue "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addCommonFlags(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// The id may come before the flags, as in `queue show ID -data DIR`.
	var id string
	if fs.NArg() > 0 {
		id = fs.Arg(0)
		if err := fs.Parse(fs.Args()[1:]); err != nil {
			return 2
		}
	}
	if id == "" || fs.NArg() != 0 {
		fmt.Fprintf(stderr, "mailroot: queue %s needs one queue id\n", sub)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	q, code := openQueue(ctx, cf, "mailroot queue "+sub, stderr)
	if q == nil {
		return code
	}
	defer q.nc.Close()
	all, err := q.entries(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return 1
	}
	var parts []*queueEntry
	for _, e := range all {
		if e.ID == id {
			parts = append(parts, e)
		}
	}
	if len(parts) == 0 {
		fmt.Fprintf(stderr, "mailroot: no such message: %s\n", id)
		return 1
	}
	if sub == "cat" {
		// The parts of a split message share one body: the first will do.
		if err := parts[0].Body(ctx, q.js, stdout); err != nil {
			fmt.Fprintf(stderr, "mailroot: %v\n", err)
			return 1
		}
		return 0
	}
	for i, e := range parts {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		if err := q.show(ctx, stdout, e, i+1, len(parts)); err != nil {
			fmt.Fprintf(stderr, "mailroot: %v\n", err)
			return 1
		}
	}
	return 0
}

// queueReader reads the MAIL stream of one server.
type queueReader struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream // nil when there is no MAIL stream yet
}

// openQueue connects as the tools do: -nats, nats.url or
// MAILROOT_NATS_URL when given, else the local embedded server announced
// in data_dir. On failure it returns nil and the exit status, having said
// why on stderr.
func openQueue(ctx context.Context, cf commonFlags, name string, stderr io.Writer) (*queueReader, int) {
	cfg, err := cf.load()
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return nil, 2
	}
	nc, err := toolConnect(ctx, cfg, name)
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return nil, 1
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		fmt.Fprintf(stderr, "mailroot: jetstream: %v\n", err)
		return nil, 1
	}
	q := &queueReader{nc: nc, js: js}
	q.stream, err = js.Stream(ctx, bus.StreamMail)
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		nc.Close()
		fmt.Fprintf(stderr, "mailroot: stream %s on %s: %v\n", bus.StreamMail, nc.ConnectedUrlRedacted(), err)
		return nil, 1
	}
	return q, 0
}

// toolConnect connects a command (name, e.g. "mailroot queue") as the
// tools do: -nats, nats.url or MAILROOT_NATS_URL when given, else the
// local embedded server announced in data_dir (useLocalServer).
func toolConnect(ctx context.Context, cfg config.Config, name string) (*nats.Conn, error) {
	if err := useLocalServer(&cfg); err != nil {
		return nil, fmt.Errorf("%s needs a NATS server: -nats URL, nats.url or MAILROOT_NATS_URL, or `mailroot all` running on this machine: %w", name, err)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return bus.Connect(cctx, bus.ConnectOptions{
		URL: cfg.NATS.URL, Name: strings.ReplaceAll(name, " ", "-"),
		User: cfg.NATS.User, Password: cfg.NATS.Password, Token: cfg.NATS.Token, CredsFile: cfg.NATS.CredsFile,
		CAFile: cfg.NATS.CAFile, CertFile: cfg.NATS.CertFile, KeyFile: cfg.NATS.KeyFile,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// useLocalServer points cfg at the embedded server of a `mailroot all` on
// cfg.DataDir when no NATS URL was given: the URL and credentials in its
// bus.LocalAccessFile.
func useLocalServer(cfg *config.Config) error {
	if cfg.NATS.URL != "" {
		return nil
	}
	a, err := bus.ReadLocalAccess(cfg.DataDir)
	if err != nil {
		return err
	}
	cfg.NATS.URL, cfg.NATS.User, cfg.NATS.Password, cfg.NATS.Token = a.URL, a.User, a.Password, a.Token
	cfg.NATS.CredsFile = ""
	return nil
}

// entries reads every message in the stream, in stream order (queue.Scan,
// shared with the admin actions). It stops at
// the last sequence the stream had when it started: mail arriving
// meanwhile is for the next listing, and the loop is bounded.
func (q *queueReader) entries(ctx context.Context) ([]*queueEntry, error) {
	if q.stream == nil {
		return nil, nil
	}
	return queue.List(ctx, q.js)
}

// show prints e's state, envelope, NATS headers and message headers.
func (q *queueReader) show(ctx context.Context, w io.Writer, e *queueEntry, part, parts int) error {
	line := func(k string, v any) { fmt.Fprintf(w, "%-14s %v\n", k+":", v) }
	opt := func(k, v string) {
		if v != "" {
			line(k, v)
		}
	}
	when := func(k string, t *time.Time) {
		if t != nil {
			line(k, t.Local().Format(time.RFC1123Z))
		}
	}
	line("queue id", e.ID)
	if parts > 1 {
		line("part", fmt.Sprintf("%d of %d", part, parts))
	}
	line("state", e.State)
	line("subject", e.Subject)
	line("sequence", e.Seq)
	opt("malformed", e.Malformed)
	if env := e.Env; env != nil {
		sender := env.From
		if sender == "" {
			sender = "<> (null sender)"
		}
		line("sender", sender)
		for _, r := range env.Rcpts {
			v := r.Addr
			if len(r.Notify) > 0 {
				v += " NOTIFY=" + strings.Join(r.Notify, ",")
			}
			if r.ORcpt != "" {
				v += " ORCPT=" + r.ORcpt
			}
			line("recipient", v)
		}
		opt("domain", env.Domain)
		line("size", e.Size)
		line("body", env.Body)
		when("arrival", &e.Arrival)
		when("expires", e.Expires)
		line("attempt", env.Attempt)
		opt("last error", env.LastError)
		when("last attempt", e.LastAttempt)
		opt("remote", env.Remote)
		switch {
		case e.NextAttempt != nil:
			when("next attempt", e.NextAttempt)
		case queue.AdminHeld(e.Subject):
			line("next attempt", "on hold by an administrator: mailroot queue release "+e.ID)
		case e.State == stateHeld:
			line("next attempt", "on ETRN/ATRN for the domain")
		case e.State == stateActive:
			line("next attempt", "now (queued for its next step)")
		}
		opt("reason", env.Reason)
		opt("source", env.Source)
		opt("site", env.Site)
		opt("client ip", env.ClientIP)
		opt("helo", env.Helo)
		opt("auth user", env.AuthUser)
		opt("tls", env.TLS)
	}
	fmt.Fprintln(w, "\nNATS headers:")
	keys := make([]string, 0, len(e.Header))
	for k := range e.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range e.Header[k] {
			fmt.Fprintf(w, "  %s: %s\n", k, v)
		}
	}
	fmt.Fprintln(w, "\nMessage headers:")
	return e.Headers(ctx, q.js, w, "  ")
}

// queueFlush is `queue flush ID... | -domain D | -all` (postqueue -i / -s /
// -f): the retry schedules of the deferred mail selected fire now, the
// way ETRN fires them (bus.FireDeferred), each with an id of its own
// (envelope.FlushID) so that a flush retried is not a second attempt.
func queueFlush(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mailroot queue flush", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addCommonFlags(fs)
	domain := fs.String("domain", "", "the deferred mail of this destination domain")
	all := fs.Bool("all", false, "all deferred mail")
	var ids []string
	// Ids and flags in any order: `queue flush ID -data DIR`.
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		ids, rest = append(ids, fs.Arg(0)), fs.Args()[1:]
	}
	chosen := 0
	for _, b := range []bool{len(ids) > 0, *domain != "", *all} {
		if b {
			chosen++
		}
	}
	if chosen != 1 {
		fmt.Fprintln(stderr, "mailroot: queue flush needs queue ids, -domain D or -all (one of them)")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	q, code := openQueue(ctx, cf, "mailroot queue flush", stderr)
	if q == nil {
		return code
	}
	defer q.nc.Close()
	entries, err := q.entries(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return 1
	}
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	status := 0
	var picked []*queueEntry
	seen := map[string]bool{}
	for _, e := range entries {
		seen[e.ID] = true
		switch {
		case e.State != stateDeferred:
			if want[e.ID] {
				fmt.Fprintf(stderr, "mailroot: %s is %s, not deferred: nothing to flush (%s)\n", e.ID, e.State, e.Subject)
			}
			continue
		case *all, want[e.ID]:
		case *domain != "" && envelope.NormalizeDomain(e.Domain) == envelope.NormalizeDomain(*domain):
		default:
			continue
		}
		picked = append(picked, e)
	}
	for _, id := range ids {
		if !seen[id] {
			fmt.Fprintf(stderr, "mailroot: no such message: %s\n", id)
			status = 1
		}
	}
	// Where the server is Mailroot's, its group commit makes the new
	// schedules durable before this says they are.
	room := &bus.Room{JS: q.js, Sync: bus.RemoteSync(ctx, q.nc)}
	flushed := 0
	for _, e := range picked {
		rest, _ := strings.CutPrefix(e.Subject, bus.SubjDeferPrefix)
		tok, _, ok := strings.Cut(rest, ".")
		if !ok {
			fmt.Fprintf(stderr, "mailroot: %s: subject %s is not %s<domain>.<id>\n", e.ID, e.Subject, bus.SubjDeferPrefix)
			status = 1
			continue
		}
		_, fired, err := bus.FireDeferred(ctx, room, tok, e.Subject, func(qid string, seq uint64) string {
			return envelope.FlushID(qid, tok, seq)
		})
		if err != nil {
			fmt.Fprintf(stderr, "mailroot: flush %s: %v\n", e.ID, err)
			status = 1
			continue
		}
		if fired {
			flushed++
			fmt.Fprintf(stdout, "%s: to %s now\n", e.ID, bus.Out(tok))
		} else {
			fmt.Fprintf(stdout, "%s: already on its way (its retry fired meanwhile)\n", e.ID)
		}
	}
	fmt.Fprintf(stdout, "%d deferred messages flushed\n", flushed)
	return status
}
