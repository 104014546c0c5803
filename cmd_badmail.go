package main

// `mailroot badmail list|show|requeue|delete` works on the Badmail
// directory (<data_dir>/Badmail): each entry is <name>.BAD, the message
// exactly as queued, and <name>.BDR, the report of why (badmail/,
// internal/badfile). requeue submits the message again, to the sender and
// recipients its report names, through the submit package, then removes
// the entry.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/badfile"
	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/submit"
)

const badmailUsage = `usage:
  mailroot badmail list [-json]
  mailroot badmail show NAME
  mailroot badmail requeue NAME...
  mailroot badmail delete NAME...
common flags: -config FILE, -data DIR, -nats URL (requeue: as mailroot queue, a local
mailroot all needs no flag). NAME is the entry's file name without .BAD/.BDR.
`

// badEntry is one Badmail entry as list shows it.
type badEntry struct {
	Name       string    `json:"name"`
	Size       int64     `json:"size"`
	Time       time.Time `json:"time"`
	Reason     string    `json:"reason,omitempty"`
	Sender     string    `json:"sender,omitempty"`
	Recipients []string  `json:"recipients,omitempty"`
}

func badmailCommand(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprint(stderr, badmailUsage)
		return 2
	}
	sub, args := args[0], args[1:]
	fset := flag.NewFlagSet("mailroot badmail "+sub, flag.ContinueOnError)
	fset.SetOutput(stderr)
	cf := addCommonFlags(fset)
	asJSON := fset.Bool("json", false, "one JSON object per entry (list)")
	var names []string
	for {
		if err := fset.Parse(args); err != nil {
			return 2
		}
		if fset.NArg() == 0 {
			break
		}
		names = append(names, fset.Arg(0))
		args = fset.Args()[1:]
	}
	cfg, err := cf.load()
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return 2
	}
	dir := cfg.BadmailDir()
	entries := func() ([]*badEntry, bool) {
		var out []*badEntry
		for _, n := range names {
			e, err := readBadEntry(dir, n)
			if err != nil {
				fmt.Fprintf(stderr, "mailroot: %v\n", err)
				return nil, false
			}
			out = append(out, e)
		}
		return out, true
	}
	switch sub {
	case "list":
		if len(names) > 0 {
			fmt.Fprint(stderr, badmailUsage)
			return 2
		}
		list, err := listBadmail(dir)
		if err != nil {
			fmt.Fprintf(stderr, "mailroot: %v\n", err)
			return 1
		}
		if *asJSON {
			enc := json.NewEncoder(stdout)
			for _, e := range list {
				_ = enc.Encode(e)
			}
			return 0
		}
		if len(list) == 0 {
			fmt.Fprintf(stdout, "Badmail is empty (%s)\n", dir)
			return 0
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSIZE\tTIME\tSENDER\tRCPTS\tREASON")
		for _, e := range list {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%s\n", e.Name, e.Size, e.Time.UTC().Format(time.RFC3339), e.Sender, len(e.Recipients), e.Reason)
		}
		_ = tw.Flush()
		return 0
	case "show":
		if len(names) != 1 {
			fmt.Fprint(stderr, badmailUsage)
			return 2
		}
		if _, ok := entries(); !ok {
			return 1
		}
		b, err := os.ReadFile(filepath.Join(dir, names[0]+badfile.ExtBDR))
		if err != nil {
			fmt.Fprintf(stderr, "mailroot: %v\n", err)
			return 1
		}
		_, _ = stdout.Write(b)
		return 0
	case "delete", "requeue":
		if len(names) == 0 {
			fmt.Fprint(stderr, badmailUsage)
			return 2
		}
		list, ok := entries()
		if !ok {
			return 1
		}
		var js jetstream.JetStream
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		// requeue needs the server; delete works on the files alone, and
		// records its events when the server is there.
		if nc, err := toolConnect(ctx, cfg, "mailroot badmail"); err != nil {
			if sub == "requeue" {
				fmt.Fprintf(stderr, "mailroot: %v\n", err)
				return 1
			}
			fmt.Fprintf(stderr, "mailroot: warning: the deletion is not recorded in the event log: %v\n", err)
		} else {
			defer nc.Close()
			if js, err = jetstream.New(nc); err != nil {
				fmt.Fprintf(stderr, "mailroot: jetstream: %v\n", err)
				return 1
			}
		}
		who := adminName(cfg.NATS.User)
		for _, e := range list {
			done, err := badAction(ctx, js, dir, e, sub, who, stderr)
			if err != nil {
				fmt.Fprintf(stderr, "mailroot: %s %s: %v\n", sub, e.Name, err)
				return 1
			}
			fmt.Fprintf(stdout, "%s: %s\n", e.Name, done)
		}
		return 0
	default:
		fmt.Fprintf(stderr, "mailroot badmail: unknown subcommand %q\n%s", sub, badmailUsage)
		return 2
	}
}

// badAction requeues or deletes one Badmail entry as who, removes its
// files and records the event (warnings on stderr), and says what it did:
// the one piece of code of `mailroot badmail requeue|delete` and of the
// admin console's Badmail page.
func badAction(ctx context.Context, js jetstream.JetStream, dir string, e *badEntry, action, who string, stderr io.Writer) (string, error) {
	done, ev := "deleted", bus.Event{Type: bus.EventDeleted}
	if action == "requeue" {
		qid, err := requeueBad(js, dir, e)
		if err != nil {
			return "", err
		}
		done, ev = "requeued as "+qid, bus.Event{Type: bus.EventRequeued, NewQID: qid}
	}
	for _, ext := range []string{badfile.ExtBAD, badfile.ExtBDR} {
		if err := os.Remove(filepath.Join(dir, e.Name+ext)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
	}
	badmailEvent(ctx, js, stderr, ev, e, who)
	return done, nil
}

// requeueBad submits the entry's message again to the sender and
// recipients of its report. The idempotency key is the entry's name: a
// requeue repeated (say after a crash before the files were removed) is
// stored once.
func requeueBad(js jetstream.JetStream, dir string, e *badEntry) (string, error) {
	if len(e.Recipients) == 0 {
		return "", errors.New("its report names no recipient")
	}
	data, err := os.ReadFile(filepath.Join(dir, e.Name+badfile.ExtBAD))
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return submit.Submit(ctx, js, &submit.Message{ID: "badmail-requeue." + e.Name, From: e.Sender, To: e.Recipients, Data: data})
}

// listBadmail reads every entry of dir, oldest first.
func listBadmail(dir string) ([]*badEntry, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*"+badfile.ExtBAD))
	if err != nil {
		return nil, err
	}
	var out []*badEntry
	for _, f := range files {
		e, err := readBadEntry(dir, strings.TrimSuffix(filepath.Base(f), badfile.ExtBAD))
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out, nil
}

// readBadEntry reads the entry name of dir: its message's size and time,
// and from its report the reason, sender and recipients.
func readBadEntry(dir, name string) (*badEntry, error) {
	if name == "" || strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
		return nil, fmt.Errorf("bad entry name %q", name)
	}
	fi, err := os.Stat(filepath.Join(dir, name+badfile.ExtBAD))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no such message: %s (not in %s)", name, dir)
	}
	if err != nil {
		return nil, err
	}
	e := &badEntry{Name: name, Size: fi.Size(), Time: fi.ModTime()}
	f, err := os.Open(filepath.Join(dir, name+badfile.ExtBDR))
	if errors.Is(err, fs.ErrNotExist) {
		return e, nil // a .BAD whose report is not written yet
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "Original headers:" {
			break
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.HasPrefix(line, " ") {
			continue
		}
		v = strings.TrimSpace(v)
		if strings.HasPrefix(v, `"`) {
			if u, err := strconv.Unquote(v); err == nil {
				v = u
			}
		}
		switch k {
		case "Reason":
			e.Reason = v
		case "Sender":
			e.Sender = angle(v)
		case "Recipient":
			if a := angle(v); a != "" {
				e.Recipients = append(e.Recipients, a)
			}
		}
	}
	return e, sc.Err()
}

// angle is the address inside the first <...> of v ("" for <>).
func angle(v string) string {
	if i := strings.IndexByte(v, '<'); i >= 0 {
		if j := strings.IndexByte(v[i:], '>'); j >= 0 {
			return v[i+1 : i+j]
		}
	}
	return strings.TrimSpace(v)
}

// badmailEvent records an administrator's action on Badmail entry e
// (stored before the command exits; a failure is a warning: the action
// is done).
func badmailEvent(ctx context.Context, js jetstream.JetStream, stderr io.Writer, ev bus.Event, e *badEntry, who string) {
	if js == nil {
		return
	}
	ev.QueueID, ev.Admin, ev.Subject, ev.Sender, ev.Rcpts = e.Name, who, "Badmail/"+e.Name, e.Sender, e.Recipients
	ev.Time, ev.Domain, ev.Reason = time.Now().UTC(), bus.DomainOf(e.Recipients), e.Reason
	if err := bus.EmitSync(ctx, js, ev); err != nil {
		fmt.Fprintf(stderr, "mailroot: warning: %s: event not recorded: %v\n", e.Name, err)
	}
}
