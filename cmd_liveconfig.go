package main

// `mailroot config get|set|unset|history|rollback|export`: the live
// configuration in the mta-config bucket (internal/liveconfig), on the
// server the tools connect to (toolConnect). Every change is validated
// against the whole configuration before it is stored, and stored with
// who made it (the OS user, and the NATS user when one was given), when
// and why (-why).

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/dkim"
	"github.com/mailroot/mailroot/internal/liveconfig"
)

const liveConfigUsage = `usage: mailroot config get [KEY] [-json]
       mailroot config set KEY VALUE [-why TEXT]
       mailroot config unset KEY [-why TEXT]
       mailroot config history [KEY] [-json]
       mailroot config rollback KEY REVISION [-why TEXT]
       mailroot config export`

// liveConfigCommand runs the live-configuration subcommands of `config`.
func liveConfigCommand(sub string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mailroot config "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addCommonFlags(fs)
	why := fs.String("why", "", "why the change is made (kept in its history)")
	asJSON := fs.Bool("json", false, "one JSON object per line")
	// Flags may follow the arguments: `config set k v -why x`.
	var pos []string
	rest := args
	for {
		if err := fs.Parse(rest); err != nil {
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	want := map[string][2]int{"get": {0, 1}, "set": {2, 2}, "unset": {1, 1}, "history": {0, 1}, "rollback": {2, 2}, "export": {0, 0}}[sub]
	if len(pos) < want[0] || len(pos) > want[1] {
		fmt.Fprintln(stderr, liveConfigUsage)
		return 2
	}
	cfg, err := cf.load()
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return 2
	}
	base := ""
	if *cf.config != "" {
		b, err := os.ReadFile(*cf.config)
		if err != nil {
			fmt.Fprintf(stderr, "mailroot: %v\n", err)
			return 2
		}
		base = string(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := toolConnect(ctx, cfg, "mailroot config")
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return 1
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: jetstream: %v\n", err)
		return 1
	}
	st, err := liveconfig.Open(ctx, js, cfg.NATS.Replicas, base)
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return 1
	}
	// New [[dkim]] blocks are refused here, at once, when a key file is
	// not a usable key, rather than ignored by every delivery process.
	st.Check = func(key string, c config.Config) error {
		if key != "dkim" {
			return nil
		}
		_, err := dkim.BlockKeys(c.DKIM)
		return err
	}
	if *cf.config == "" {
		// The file the running processes apply the live keys over.
		if b, ok, err := st.StoredBase(ctx); err != nil {
			fmt.Fprintf(stderr, "mailroot: %v\n", err)
			return 1
		} else if ok {
			st.Base = b
		}
	}
	who := adminName(cfg.NATS.User)
	fail := func(err error) int {
		fmt.Fprintf(stderr, "mailroot: config %s: %v\n", sub, err)
		var ke *config.KeyError
		if errors.As(err, &ke) {
			return 2
		}
		return 1
	}
	switch sub {
	case "get":
		_, entries, err := st.Overrides(ctx)
		if err != nil {
			return fail(err)
		}
		keys := make([]string, 0, len(entries))
		for k := range entries {
			if len(pos) == 0 || k == pos[0] {
				keys = append(keys, k)
			}
		}
		if len(pos) == 1 && len(keys) == 0 {
			fmt.Fprintf(stderr, "mailroot: config get: %s is not set live (its value is the file's or the default: mailroot config show)\n", pos[0])
			return 1
		}
		slices.Sort(keys)
		for _, k := range keys {
			printEntry(stdout, entries[k], *asJSON)
		}
	case "set", "unset":
		value := ""
		if sub == "set" {
			value = pos[1]
		}
		rev, err := st.Set(ctx, pos[0], value, sub == "unset", who, *why)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "%s %s: revision %d\n", pos[0], map[string]string{"set": "set", "unset": "unset"}[sub], rev)
	case "history":
		key := ""
		if len(pos) == 1 {
			key = pos[0]
		}
		h, err := st.History(ctx, key)
		if err != nil {
			return fail(err)
		}
		for _, e := range h {
			printEntry(stdout, e, *asJSON)
		}
	case "rollback":
		rev, err := strconv.ParseUint(pos[1], 10, 64)
		if err != nil {
			fmt.Fprintf(stderr, "mailroot: config rollback: revision %q is not a number (see mailroot config history %s)\n", pos[1], pos[0])
			return 2
		}
		nrev, err := st.Rollback(ctx, pos[0], rev, who, *why)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "%s rolled back to revision %d: revision %d\n", pos[0], rev, nrev)
	case "export":
		eff, _, err := st.Effective(ctx)
		if err != nil {
			return fail(err)
		}
		out, err := showConfig(eff, false)
		if err != nil {
			return fail(err)
		}
		_, _ = stdout.Write(out)
	}
	return 0
}

// printEntry prints one revision: "REV TIME WHO KEY = VALUE (why)".
func printEntry(w io.Writer, e liveconfig.Entry, asJSON bool) {
	if asJSON {
		b, _ := json.Marshal(e)
		fmt.Fprintf(w, "%s\n", b)
		return
	}
	v := "= " + e.Value
	if e.Unset {
		v = "unset"
	}
	line := fmt.Sprintf("%d %s %s %s %s", e.Revision, e.Time.UTC().Format(time.RFC3339), e.Who, e.Key, v)
	if e.Why != "" {
		line += " (" + e.Why + ")"
	}
	fmt.Fprintln(w, line)
}

// adminName is who a command acts as: the OS user, and the NATS user
// when one is configured ("alice", "alice (nats ops)").
func adminName(natsUser string) string {
	name := "unknown"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	if natsUser != "" {
		name += " (nats " + natsUser + ")"
	}
	return name
}
