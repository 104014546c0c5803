package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
	"github.com/mailroot/mailroot/node"
)

// queueNode runs `mailroot all` in-process on dir/mailroot-data (the
// default data_dir, seen from dir) with no nats.listen, delivering
// remote.test and other.test to a sink that answers 451 to every RCPT:
// whatever it is sent waits in the queue for an hour, until accept is
// set (when not nil).
func queueNode(t *testing.T, dir string, accept *atomic.Bool) (*node.Node, config.Config, *testutil.Sink) {
	t.Helper()
	return queueNodeRcpt(t, dir, func(string) error {
		if accept != nil && accept.Load() {
			return nil
		}
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "try later"}
	})
}

// queueNodeRcpt is queueNode with the sink's answer to each RCPT.
func queueNodeRcpt(t *testing.T, dir string, rcpt func(to string) error) (*node.Node, config.Config, *testutil.Sink) {
	t.Helper()
	return queueNodeWith(t, dir, rcpt, nil)
}

// queueNodeWith is queueNodeRcpt with a change to the configuration.
func queueNodeWith(t *testing.T, dir string, rcpt func(to string) error, edit func(*config.Config)) (*node.Node, config.Config, *testutil.Sink) {
	t.Helper()
	t.Setenv("MAILROOT_CONFIG", "")
	t.Setenv("MAILROOT_NATS_URL", "")
	t.Setenv("MAILROOT_DATA_DIR", "")
	sink := testutil.StartSink(t)
	sink.RcptFunc = rcpt
	dns := testutil.StartDNS(t,
		"remote.test. MX 10 mx.remote.test.",
		"other.test. MX 10 mx.remote.test.",
		"mx.remote.test. A 127.0.0.1",
	)
	cfg := config.Default()
	cfg.Hostname = "mailroot.test"
	cfg.DataDir = filepath.Join(dir, "mailroot-data")
	cfg.LocalDomains = []string{"local.test"}
	cfg.Ingress.Listen = []string{"127.0.0.1:0"}
	cfg.Ingress.RelayNetworks = []string{"127.0.0.1/32"}
	cfg.Delivery.Port = sink.Port
	cfg.Delivery.DNSServer = dns.Addr
	cfg.Delivery.Retry = []config.Duration{config.Duration(time.Hour)}
	cfg.Delivery.ConnectTimeout = config.Duration(2 * time.Second)
	if edit != nil {
		edit(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	n, err := node.StartEmbedded(context.Background(), cfg, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Stop)
	<-n.Ingress.Ready()
	return n, cfg, sink
}

// queueTwo sends a small message to b@remote.test and a big one (body in
// the Object Store) to d@other.test, and waits until both are deferred.
func queueTwo(t *testing.T, n *node.Node, cfg config.Config, small, big string) []queueEntry {
	t.Helper()
	for _, m := range []struct{ from, to, body string }{
		{"a@local.test", "b@remote.test", small},
		{"c@local.test", "d@other.test", big},
	} {
		c, err := smtp.Dial(n.Ingress.Addrs()[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := c.SendMail(m.from, []string{m.to}, strings.NewReader(m.body)); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	var list []queueEntry
	// Two deferred messages and nothing else: until delivery has acked
	// the attempts, the originals are still listed (active) beside
	// their deferred successors.
	testutil.WaitFor(t, 30*time.Second, "two deferred messages and nothing else", func() bool {
		out, stderr, code := runQueue("list", "-json", "-data", cfg.DataDir)
		if code != 0 {
			t.Fatalf("queue list -json: exit %d: %s", code, stderr)
		}
		list = decodeEntries(t, out)
		for _, e := range list {
			if e.State != "deferred" {
				return false
			}
		}
		return len(list) == 2
	})
	return list
}

// runQueue runs `mailroot queue args...` in-process.
func runQueue(args ...string) (stdout, stderr string, code int) {
	var o, e bytes.Buffer
	code = queueCommand(args, &o, &e)
	return o.String(), e.String(), code
}

func decodeEntries(t *testing.T, out string) []queueEntry {
	t.Helper()
	var list []queueEntry
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e queueEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("queue list -json line %q: %v", sc.Text(), err)
		}
		list = append(list, e)
	}
	return list
}

// Two messages deferred by a remote answering 451: `queue list` shows them
// with their last error and next attempt, its filters select, -json
// parses, show and cat print the envelope and the exact message, an
// unknown id exits 1; mailq, sendmail -bp and a `mailq` symlink run with
// no flags at all print the same list.
func TestQueueCommands(t *testing.T) {
	dir := t.TempDir()
	n, cfg, _ := queueNode(t, dir, nil)
	data := []string{"-data", cfg.DataDir}

	small := "Subject: small\r\n\r\nsmall body\r\n"
	big := "Subject: big\r\n\r\n" + strings.Repeat("a line of a big body, over 64 KiB in all\r\n", 2000)
	list := queueTwo(t, n, cfg, small, big)
	byRcpt := map[string]queueEntry{}
	for _, e := range list {
		if len(e.Recipients) != 1 {
			t.Fatalf("entry %+v: want one recipient", e)
		}
		byRcpt[e.Recipients[0]] = e
		if !strings.HasPrefix(e.LastError, "451 4.7.1") || e.Attempt != 1 {
			t.Errorf("entry %s: last error %q, attempt %d; want 451 4.7.1…, 1", e.ID, e.LastError, e.Attempt)
		}
		if e.NextAttempt == nil || time.Until(*e.NextAttempt) < 45*time.Minute || time.Until(*e.NextAttempt) > 75*time.Minute {
			t.Errorf("entry %s: next attempt %v, want in about an hour", e.ID, e.NextAttempt)
		}
	}
	s, b := byRcpt["b@remote.test"], byRcpt["d@other.test"]
	if s.Sender != "a@local.test" || b.Sender != "c@local.test" || s.Domain != "remote.test" {
		t.Fatalf("entries %+v, %+v", s, b)
	}
	if b.Size <= 64<<10 || s.Size <= int64(len(small)) {
		t.Errorf("sizes %d and %d: want the whole messages with their Received: line", s.Size, b.Size)
	}

	// The text list, as mailq prints it.
	text, stderr, code := runQueue(append([]string{"list"}, data...)...)
	if code != 0 {
		t.Fatalf("queue list: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"-Queue ID-", s.ID + "  ", b.ID + "  ", "a@local.test\n", "(451 4.7.1 try later", "(attempt 1, next attempt ", " b@remote.test\n", " d@other.test\n", " in 2 Requests.\n"} {
		if !strings.Contains(text, want) {
			t.Errorf("queue list lacks %q:\n%s", want, text)
		}
	}

	// Filters.
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"-domain", "remote.test"}, []string{s.ID}},
		{[]string{"-domain", "OTHER.test"}, []string{b.ID}},
		{[]string{"-sender", "c@local.test"}, []string{b.ID}},
		{[]string{"-sender", "@local.test"}, []string{s.ID, b.ID}},
		{[]string{"-sender", "<>"}, nil},
		{[]string{"-state", "active"}, nil},
		{[]string{"-state", "held"}, nil},
		{[]string{"-older", "1h"}, nil},
		{[]string{"-older", "1ms", "-state", "deferred"}, []string{s.ID, b.ID}},
	} {
		out, stderr, code := runQueue(append(append([]string{"list", "-json"}, c.args...), data...)...)
		if code != 0 {
			t.Fatalf("queue list %v: exit %d: %s", c.args, code, stderr)
		}
		var got []string
		for _, e := range decodeEntries(t, out) {
			got = append(got, e.ID)
		}
		// The list is in stream order: which of the two deferred first
		// decides theirs, so the selection is compared as a set.
		slices.Sort(got)
		want := slices.Sorted(slices.Values(c.want))
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("queue list %v: %v, want %v", c.args, got, want)
		}
	}
	if out, _, code := runQueue(append([]string{"list", "-state", "active"}, data...)...); code != 0 || out != "Mail queue is empty\n" {
		t.Errorf("empty selection: exit %d, %q", code, out)
	}
	if _, stderr, code := runQueue(append([]string{"list", "-state", "sleeping"}, data...)...); code != 2 || !strings.Contains(stderr, `"sleeping"`) {
		t.Errorf("bad -state: exit %d, %q", code, stderr)
	}

	// show and cat.
	out, stderr, code := runQueue(append([]string{"show", s.ID}, data...)...)
	if code != 0 {
		t.Fatalf("queue show: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"queue id:      " + s.ID + "\n", "state:         deferred\n", "sender:        a@local.test\n", "recipient:     b@remote.test\n", "last error:    451 4.7.1", "next attempt:  ", "attempt:       1\n", "\nNATS headers:\n", "  Mta-Queue-Id: " + s.ID + "\n", "\nMessage headers:\n", "  Received: ", "  Subject: small\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("queue show lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "small body") {
		t.Errorf("queue show prints the body:\n%s", out)
	}
	for _, c := range []struct{ id, body string }{{s.ID, small}, {b.ID, big}} {
		out, stderr, code := runQueue(append([]string{"cat", c.id}, data...)...)
		if code != 0 {
			t.Fatalf("queue cat %s: exit %d: %s", c.id, code, stderr)
		}
		if !strings.HasPrefix(out, "Received: ") || !strings.HasSuffix(out, "\r\n"+c.body) {
			t.Errorf("queue cat %s: %d bytes, want Received: and then the %d bytes sent", c.id, len(out), len(c.body))
		}
	}
	for _, sub := range []string{"show", "cat"} {
		if _, stderr, code := runQueue(append([]string{sub, "NOPE"}, data...)...); code != 1 || stderr != "mailroot: no such message: NOPE\n" {
			t.Errorf("queue %s NOPE: exit %d, %q", sub, code, stderr)
		}
	}

	// The same list from mailq and sendmail -bp.
	var o, e bytes.Buffer
	if code := mailqCommand(data, &o, &e); code != 0 || o.String() != text {
		t.Errorf("mailq: exit %d %s, output differs from queue list:\n%s", code, e.String(), o.String())
	}

	// With no flags at all, from the directory `mailroot all` ran in, as
	// a `mailq` symlink and as `sendmail -bp`: the data_dir's file leads
	// to the server.
	bin := buildBinary(t)
	mailq := filepath.Join(t.TempDir(), "mailq")
	if err := os.Symlink(bin, mailq); err != nil {
		t.Fatal(err)
	}
	for _, argv := range [][]string{{mailq}, {bin, "sendmail", "-bp"}} {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Dir = dir
		var so, se bytes.Buffer
		cmd.Stdout, cmd.Stderr = &so, &se
		if err := cmd.Run(); err != nil {
			t.Fatalf("%v: %v: %s", argv, err, se.String())
		}
		if so.String() != text {
			t.Errorf("%v prints\n%s\nwant\n%s", argv, so.String(), text)
		}
	}

	// Without the file (no server), the CLI says what it needs and exits 1.
	n.Stop()
	if _, stderr, code := runQueue(append([]string{"list"}, data...)...); code != 1 || !strings.Contains(stderr, "needs a NATS server") {
		t.Errorf("queue list without a server: exit %d, %q", code, stderr)
	}
}

// The mailq format, against a golden file (testdata/mailq.golden; the
// output is written beside it as mailq.actual on a mismatch).
func TestMailqGolden(t *testing.T) {
	at := func(s string) *time.Time {
		tm, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return &tm
	}
	list := []*queueEntry{
		{ID: "01JEXAMPLEACTIVE0000000000", State: stateActive, Size: 1234, Arrival: *at("2026-12-02T04:00:00Z"), Sender: "a@local.test", Recipients: []string{"b@remote.test", "c@remote.test"}},
		{ID: "01JEXAMPLEDEFERRED00000000", State: stateDeferred, Size: 70000, Arrival: *at("2026-12-01T23:59:59Z"), Sender: "", Recipients: []string{"postmaster@other.test"},
			Attempt: 3, LastError: "451 4.7.1 try later (mx.other.test)", NextAttempt: at("2026-12-02T06:30:00Z")},
		{ID: "01JEXAMPLEHELD000000000000", State: stateHeld, Size: 10, Arrival: *at("2026-12-02T01:02:03Z"), Sender: "x@local.test", Recipients: []string{"y@held.test"}},
	}
	var buf bytes.Buffer
	printMailq(&buf, list, time.UTC)
	golden := filepath.Join("testdata", "mailq.golden")
	want, err := os.ReadFile(golden)
	if err != nil || !bytes.Equal(buf.Bytes(), want) {
		_ = os.WriteFile(filepath.Join("testdata", "mailq.actual"), buf.Bytes(), 0o644)
		t.Fatalf("mailq output differs from %s (%v); got:\n%s", golden, err, buf.String())
	}
	buf.Reset()
	printMailq(&buf, nil, time.UTC)
	if buf.String() != "Mail queue is empty\n" {
		t.Errorf("empty queue: %q", buf.String())
	}
}

// queue flush: deferred mail is attempted now, by id, by domain or all of
// it, long before its retry is due; an unknown id exits 1.
func TestQueueFlush(t *testing.T) {
	var accept atomic.Bool
	n, cfg, sink := queueNode(t, t.TempDir(), &accept)
	list := queueTwo(t, n, cfg, "Subject: one\r\n\r\n1\r\n", "Subject: two\r\n\r\n2\r\n")
	accept.Store(true) // the remote is fixed
	data := []string{"-data", cfg.DataDir}
	if _, stderr, code := runQueue(append([]string{"flush"}, data...)...); code != 2 || !strings.Contains(stderr, "one of them") {
		t.Errorf("flush with nothing chosen: exit %d, %q", code, stderr)
	}
	if _, stderr, code := runQueue(append([]string{"flush", "NOPE"}, data...)...); code != 1 || !strings.Contains(stderr, "no such message: NOPE") {
		t.Errorf("flush NOPE: exit %d, %q", code, stderr)
	}
	out, stderr, code := runQueue(append([]string{"flush", "-domain", "remote.test"}, data...)...)
	if code != 0 || !strings.Contains(out, "1 deferred messages flushed") {
		t.Fatalf("flush -domain: exit %d, %q %s", code, out, stderr)
	}
	testutil.WaitFor(t, 20*time.Second, "the remote.test mail delivered", func() bool { return sink.Count() == 1 })
	if got := sink.Mails()[0].To; len(got) != 1 || got[0] != "b@remote.test" {
		t.Fatalf("delivered to %v, want b@remote.test", got)
	}
	out, _, _ = runQueue(append([]string{"list", "-json"}, data...)...)
	if left := decodeEntries(t, out); len(left) != 1 || left[0].Recipients[0] != "d@other.test" || left[0].State != stateDeferred {
		t.Fatalf("after flush -domain remote.test the queue holds %+v, want d@other.test deferred", left)
	}
	var other string
	for _, e := range list {
		if e.Recipients[0] == "d@other.test" {
			other = e.ID
		}
	}
	if out, stderr, code := runQueue(append([]string{"flush", other}, data...)...); code != 0 || !strings.Contains(out, other+": to mail.out.other_test now") {
		t.Fatalf("flush %s: exit %d, %q %s", other, code, out, stderr)
	}
	testutil.WaitFor(t, 20*time.Second, "both delivered and the queue empty", func() bool {
		out, _, _ := runQueue(append([]string{"list"}, data...)...)
		return sink.Count() == 2 && out == "Mail queue is empty\n"
	})
	if out, _, code := runQueue(append([]string{"flush", "-all"}, data...)...); code != 0 || !strings.Contains(out, "0 deferred messages flushed") {
		t.Errorf("flush -all of an empty queue: exit %d, %q", code, out)
	}
}
