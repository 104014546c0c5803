package main

// The queue's admin actions (postsuper -d/-h/-H/-r, a bounce, and the
// time-ranged redrive): flags and printing only; the work is in
// internal/queue, which an admin console calls too.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/mailroot/mailroot/internal/badfile"
	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/notify"
	"github.com/mailroot/mailroot/internal/queue"
)

// queueAdmin is `queue delete|hold|release|requeue|bounce`.
func queueAdmin(sub string, args []string, stdout, stderr io.Writer) int {
	name := "mailroot queue " + sub
	fset := flag.NewFlagSet(name, flag.ContinueOnError)
	fset.SetOutput(stderr)
	cf := addCommonFlags(fset)
	domain := fset.String("domain", "", "every message part for this destination domain")
	all := false
	if sub == "requeue" {
		fset.BoolVar(&all, "all", false, "every message in the queue")
	}
	reason := ""
	if sub == "bounce" {
		fset.StringVar(&reason, "reason", "", "what the report tells the sender (default: returned to the sender by the postmaster)")
	}
	wait := fset.Duration("wait", queue.DefaultWait, "how long to wait for a delivery attempt in progress")
	var ids []string
	for rest := args; ; {
		if err := fset.Parse(rest); err != nil {
			return 2
		}
		if fset.NArg() == 0 {
			break
		}
		ids, rest = append(ids, fset.Arg(0)), fset.Args()[1:]
	}
	chosen := 0
	for _, b := range []bool{len(ids) > 0, *domain != "", all} {
		if b {
			chosen++
		}
	}
	if chosen != 1 || (sub == "bounce" && len(ids) == 0) {
		what := "queue ids or -domain D (one of them)"
		switch sub {
		case "requeue":
			what = "queue ids, -domain D or -all (one of them)"
		case "bounce":
			what = "queue ids"
		}
		fmt.Fprintf(stderr, "mailroot: queue %s needs %s\n", sub, what)
		return 2
	}
	cfg, err := cf.load()
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute+*wait)
	defer cancel()
	q, code := openQueue(ctx, cf, name, stderr)
	if q == nil {
		return code
	}
	defer q.nc.Close()
	a := newAdmin(ctx, q, cfg.NATS.User)
	a.Wait = *wait
	a.Waiting = func(qid string, why error) {
		fmt.Fprintf(stderr, "mailroot: %s is being delivered now (%v); waiting up to %s for the attempt to end\n", qid, why, *wait)
	}
	n := notify.NewNotifier(cfg, q.js, nil)
	n.Room = a.Room
	a.Notify = n
	sel := queue.Selection{IDs: ids, Domain: *domain, All: all}
	res, err := a.Do(ctx, sub, sel, reason)
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: queue %s: %v\n", sub, err)
		return 1
	}
	return printResults(stdout, stderr, res, sub)
}

// newAdmin acts on q's server as the OS user (and NATS user).
func newAdmin(ctx context.Context, q *queueReader, natsUser string) *queue.Admin {
	return &queue.Admin{JS: q.js, Room: &bus.Room{JS: q.js, Sync: bus.RemoteSync(ctx, q.nc)}, Who: adminName(natsUser)}
}

// printResults prints one line per part acted on, errors on stderr; the
// status is 1 when any failed.
func printResults(stdout, stderr io.Writer, res []queue.Result, verb string) int {
	status, done := 0, 0
	for _, r := range res {
		if r.Err != nil {
			status = 1
			if errors.Is(r.Err, queue.ErrNoSuchMessage) && r.Subject == "" {
				fmt.Fprintf(stderr, "mailroot: no such message: %s\n", r.QueueID)
				continue
			}
			fmt.Fprintf(stderr, "mailroot: %s %s: %v\n", verb, r.QueueID, r.Err)
			continue
		}
		done++
		fmt.Fprintf(stdout, "%s: %s (was %s)\n", r.QueueID, r.Done, r.Subject)
	}
	fmt.Fprintf(stdout, "%d done\n", done)
	return status
}

// redriveCommand is `mailroot redrive -since T -until T [-domain D]
// [-type bounced|badmail|expired]`.
func redriveCommand(args []string, stdout, stderr io.Writer) int {
	fset := flag.NewFlagSet("mailroot redrive", flag.ContinueOnError)
	fset.SetOutput(stderr)
	cf := addCommonFlags(fset)
	since := fset.String("since", "", "from this time (RFC 3339, or a duration back from now: 2h)")
	until := fset.String("until", "", "to this time (RFC 3339, or a duration back from now)")
	domain := fset.String("domain", "", "only mail for this recipient domain")
	typ := fset.String("type", queue.RedriveBounced, "which events: bounced, expired or badmail")
	if err := fset.Parse(args); err != nil {
		return 2
	}
	if fset.NArg() > 0 {
		fmt.Fprintf(stderr, "mailroot: redrive takes no arguments, got %q\n", fset.Args())
		return 2
	}
	now := time.Now()
	var f queue.RedriveFilter
	var err error
	if f.Since, err = parseWhen(*since, now); err != nil || f.Since.IsZero() {
		fmt.Fprintf(stderr, "mailroot: redrive -since: %v\n", orMissing(err))
		return 2
	}
	if f.Until, err = parseWhen(*until, now); err != nil || f.Until.IsZero() {
		fmt.Fprintf(stderr, "mailroot: redrive -until: %v\n", orMissing(err))
		return 2
	}
	if !f.Until.After(f.Since) {
		fmt.Fprintln(stderr, "mailroot: redrive: -until must be after -since")
		return 2
	}
	f.Domain, f.Type = *domain, *typ
	switch f.Type {
	case queue.RedriveBounced, queue.RedriveExpired, queue.RedriveBadmail:
	default:
		fmt.Fprintf(stderr, "mailroot: redrive -type %q is not bounced, expired or badmail\n", f.Type)
		return 2
	}
	cfg, err := cf.load()
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	q, code := openQueue(ctx, cf, "mailroot redrive", stderr)
	if q == nil {
		return code
	}
	defer q.nc.Close()
	a := newAdmin(ctx, q, cfg.NATS.User)
	var res []queue.Result
	if f.Type == queue.RedriveBadmail {
		res, err = redriveBadmail(ctx, a, cfg.BadmailDir(), f)
	} else {
		res, err = a.Redrive(ctx, f)
	}
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: redrive: %v\n", err)
		return 1
	}
	return printResults(stdout, stderr, res, "redrive")
}

func orMissing(err error) error {
	if err == nil {
		return errors.New("required")
	}
	return err
}

// redriveBadmail requeues the Badmail entries of the badmail events in f
// (the .BAD file is the message, as `badmail requeue` sends it); an entry
// already requeued or deleted is reported.
func redriveBadmail(ctx context.Context, a *queue.Admin, dir string, f queue.RedriveFilter) ([]queue.Result, error) {
	evs, err := queue.Events(ctx, a, f)
	if err != nil {
		return nil, err
	}
	var out []queue.Result
	done := map[string]bool{}
	for _, e := range evs {
		if done[e.QueueID] || e.QueueID == "" {
			continue
		}
		done[e.QueueID] = true
		r := queue.Result{QueueID: e.QueueID, Subject: "Badmail/" + e.QueueID}
		be, err := readBadEntry(dir, e.QueueID)
		if err != nil {
			r.Err = fmt.Errorf("badmail entry %s: %w (requeued or deleted already?)", e.QueueID, err)
			out = append(out, r)
			continue
		}
		nq, err := requeueBad(a.JS, dir, be)
		if err != nil {
			r.Err = err
			out = append(out, r)
			continue
		}
		if err := removeBadEntry(dir, be.Name); err != nil {
			r.Err = err
		}
		r.NewQID, r.Done = nq, "sent again as "+nq
		if err := bus.EmitSync(ctx, a.JS, bus.Event{Type: bus.EventRedriven, QueueID: e.QueueID, Domain: e.Domain, Admin: a.Who,
			Time: time.Now().UTC(), NewQID: nq, Rcpts: be.Recipients, Sender: be.Sender, Reason: "badmail: " + be.Reason}); err != nil && r.Err == nil {
			r.Err = err
		}
		out = append(out, r)
	}
	return out, nil
}

// removeBadEntry removes a Badmail entry's files, as `badmail requeue`
// does once it is sent again.
func removeBadEntry(dir, name string) error {
	for _, ext := range []string{badfile.ExtBAD, badfile.ExtBDR} {
		if err := os.Remove(filepath.Join(dir, name+ext)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}
