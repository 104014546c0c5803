package main

// `mailroot sessions` lists the SMTP sessions of every ingress process,
// read from the mta-sessions KV bucket: the IIS "Current Sessions" node,
// cluster-wide.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/ingress"
	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
)

func sessionsCommand(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "disconnect" {
		return disconnectCommand(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("mailroot sessions", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addCommonFlags(fs)
	asJSON := fs.Bool("json", false, "one JSON object per session")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, list, code := loadSessions(ctx, cf, stderr)
	if code != 0 {
		return code
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		for _, s := range list {
			_ = enc.Encode(s)
		}
		return 0
	}
	printSessions(stdout, list, time.Now())
	return 0
}

// loadSessions reads the configuration the flags name and the sessions
// of its server; a non-zero code (2: configuration, 1: server) is the
// exit status, the error said on stderr.
func loadSessions(ctx context.Context, cf commonFlags, stderr io.Writer) (config.Config, []bus.SessionInfo, int) {
	cfg, err := cf.load()
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return cfg, nil, 2
	}
	if err := useLocalServer(&cfg); err != nil {
		fmt.Fprintf(stderr, "mailroot: sessions needs a NATS server: -nats URL, nats.url or MAILROOT_NATS_URL, or `mailroot all` running on this machine: %v\n", err)
		return cfg, nil, 2
	}
	list, err := listSessions(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return cfg, nil, 1
	}
	return cfg, list, 0
}

// listSessions reads every live session from the bucket, oldest first.
func listSessions(ctx context.Context, cfg config.Config) ([]bus.SessionInfo, error) {
	nc, err := toolConnect(ctx, cfg, "mailroot sessions")
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return readSessions(ctx, js)
}

// readSessions reads every live session from the bucket, oldest first
// (the admin console's sessions page too).
func readSessions(ctx context.Context, js jetstream.JetStream) ([]bus.SessionInfo, error) {
	kv, err := js.KeyValue(ctx, bus.BucketSessions)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil // no ingress has run yet
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", bus.BucketSessions, err)
	}
	keys, err := kv.ListKeysFiltered(ctx, bus.SessionKeyPrefix+">")
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	var out []bus.SessionInfo
	for k := range keys.Keys() {
		e, err := kv.Get(ctx, k)
		if err != nil || len(e.Value()) == 0 {
			continue // closed meanwhile
		}
		var s bus.SessionInfo
		if json.Unmarshal(e.Value(), &s) == nil {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Since.Before(out[j].Since) })
	return out, nil
}

func printSessions(w io.Writer, list []bus.SessionInfo, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSITE\tCLIENT\tNAME\tUSER\tTLS\tCONNECTED\tFOR\tMSGS\tNODE")
	for _, s := range list {
		name := s.ClientName
		if name == "" {
			name = s.Helo
		} else if s.Helo != "" && !strings.EqualFold(s.Helo, name) {
			name += " (" + s.Helo + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", dash(s.ID), s.Site, s.ClientIP, dash(name), dash(s.User), dash(s.TLS),
			s.Since.Local().Format("2006-01-02 15:04:05"), now.Sub(s.Since).Round(time.Second), s.Messages, s.Node)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "%d sessions\n", len(list))
}

// disconnectCommand is `mailroot sessions disconnect ID [-node NODE]`:
// the ingress process holding the session closes it (IIS's "disconnect"
// of Current Sessions). The id is the ID column of `mailroot sessions`;
// -node is needed only when two nodes have a session with that id.
func disconnectCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mailroot sessions disconnect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addCommonFlags(fs)
	node := fs.String("node", "", "the NODE of the session, when several nodes have its id")
	var ids []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		ids, rest = append(ids, fs.Arg(0)), fs.Args()[1:]
	}
	if len(ids) != 1 {
		fmt.Fprintln(stderr, "usage: mailroot sessions disconnect ID [-node NODE]")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, list, code := loadSessions(ctx, cf, stderr)
	if code != 0 {
		return code
	}
	var found []bus.SessionInfo
	for _, s := range list {
		if s.ID == ids[0] && (*node == "" || s.Node == *node) {
			found = append(found, s)
		}
	}
	switch {
	case len(found) == 0:
		fmt.Fprintf(stderr, "mailroot: no such session: %s\n", ids[0])
		return 1
	case len(found) > 1:
		fmt.Fprintf(stderr, "mailroot: sessions %s on several nodes: name one with -node\n", ids[0])
		return 2
	}
	nc, err := toolConnect(ctx, cfg, "mailroot sessions")
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return 1
	}
	defer nc.Close()
	req := nats.NewMsg(bus.SubjCtlDisconnectPrefix + found[0].Node)
	req.Data = []byte(found[0].ID)
	req.Header.Set(ingress.HdrAdmin, adminName(cfg.NATS.User))
	reply, err := nc.RequestMsg(req, 10*time.Second)
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: disconnect %s on %s: %v\n", found[0].ID, found[0].Node, err)
		return 1
	}
	if string(reply.Data) != "closed" {
		fmt.Fprintf(stderr, "mailroot: %s\n", reply.Data)
		return 1
	}
	fmt.Fprintf(stdout, "%s (%s, %s) on %s: closed\n", found[0].ID, found[0].Site, found[0].ClientIP, found[0].Node)
	return 0
}
