package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/dsn"
	"github.com/mailroot/mailroot/internal/testutil"
	"github.com/mailroot/mailroot/node"
)

// sendOne sends one message over SMTP to n's ingress.
func sendOne(t *testing.T, n *node.Node, from, to, body string) {
	t.Helper()
	c, err := smtp.Dial(n.Ingress.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SendMail(from, []string{to}, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
}

// eventsOf reads the events of qid of type typ ("" all) from n's log.
func eventsOf(t *testing.T, n *node.Node, qid, typ string) []bus.Event {
	t.Helper()
	var out []bus.Event
	err := bus.ReadEvents(t.Context(), n.JS, bus.EventFilter{QueueID: qid, Type: typ}, false, func(e bus.Event) error {
		out = append(out, e)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func idFor(t *testing.T, list []queueEntry, rcpt string) string {
	t.Helper()
	for _, e := range list {
		if len(e.Recipients) == 1 && e.Recipients[0] == rcpt {
			return e.ID
		}
	}
	t.Fatalf("no queue entry for %s in %+v", rcpt, list)
	return ""
}

// `queue delete` of a deferred message removes it for good: after the
// remote is fixed and the whole queue flushed, the remote gets only the
// other message; an unknown id exits 1 with "no such message"; the
// deletion is an event naming the administrator, stored before the
// command exits.
func TestQueueDelete(t *testing.T) {
	var accept atomic.Bool
	n, cfg, sink := queueNode(t, t.TempDir(), &accept)
	list := queueTwo(t, n, cfg, "Subject: one\r\n\r\n1\r\n", "Subject: two\r\n\r\n"+strings.Repeat("big body line\r\n", 6000))
	small, big := idFor(t, list, "b@remote.test"), idFor(t, list, "d@other.test")
	data := []string{"-data", cfg.DataDir}
	if _, stderr, code := runQueue(append([]string{"delete", "NOPE"}, data...)...); code != 1 || !strings.Contains(stderr, "no such message: NOPE") {
		t.Errorf("delete NOPE: exit %d, %q", code, stderr)
	}
	if _, stderr, code := runQueue(append([]string{"delete"}, data...)...); code != 2 || !strings.Contains(stderr, "needs queue ids or -domain D") {
		t.Errorf("delete with nothing chosen: exit %d, %q", code, stderr)
	}
	out, stderr, code := runQueue(append([]string{"delete", small}, data...)...)
	if code != 0 || !strings.Contains(out, small+": deleted") {
		t.Fatalf("delete %s: exit %d, %q %s", small, code, out, stderr)
	}
	// The deletion is in the log when the command returns.
	evs := eventsOf(t, n, small, bus.EventDeleted)
	if len(evs) != 1 || evs[0].Admin == "" || evs[0].Subject == "" {
		t.Fatalf("deleted events of %s: %+v, want one naming who", small, evs)
	}
	out, _, _ = runQueue(append([]string{"list", "-json"}, data...)...)
	if left := decodeEntries(t, out); len(left) != 1 || left[0].ID != big {
		t.Fatalf("after delete the queue holds %+v, want only %s", left, big)
	}
	accept.Store(true)
	if out, stderr, code := runQueue(append([]string{"flush", "-all"}, data...)...); code != 0 || !strings.Contains(out, "1 deferred messages flushed") {
		t.Fatalf("flush -all: exit %d, %q %s", code, out, stderr)
	}
	testutil.WaitFor(t, 20*time.Second, "the other message delivered", func() bool { return sink.Count() == 1 })
	if got := sink.Mails()[0].To; got[0] != "d@other.test" {
		t.Fatalf("the remote got mail for %v, want only d@other.test", got)
	}
	// Deleting by domain: send another, it is deferred... no: the remote
	// accepts now; the deleted message must never arrive, whatever else does.
	sendOne(t, n, "a@local.test", "e@remote.test", "Subject: three\r\n\r\n3\r\n")
	testutil.WaitFor(t, 20*time.Second, "the third delivered", func() bool { return sink.Count() == 2 })
	for _, m := range sink.Mails() {
		if m.To[0] == "b@remote.test" {
			t.Fatalf("the deleted message reached the remote: %+v", m)
		}
	}
}

// `queue hold` takes a deferred message out of delivery: a flush of the
// whole queue and an ETRN-style fire of the domain's schedules do not send
// it; `queue release` sends it at once.
func TestQueueHoldRelease(t *testing.T) {
	var accept atomic.Bool
	n, cfg, sink := queueNode(t, t.TempDir(), &accept)
	list := queueTwo(t, n, cfg, "Subject: one\r\n\r\n1\r\n", "Subject: two\r\n\r\n2\r\n")
	small := idFor(t, list, "b@remote.test")
	data := []string{"-data", cfg.DataDir}
	out, stderr, code := runQueue(append([]string{"hold", "-domain", "remote.test"}, data...)...)
	if code != 0 || !strings.Contains(out, small+": held") || !strings.Contains(out, "1 done") {
		t.Fatalf("hold -domain remote.test: exit %d, %q %s", code, out, stderr)
	}
	if _, stderr, code := runQueue(append([]string{"hold", small}, data...)...); code != 1 || !strings.Contains(stderr, "on hold already") {
		t.Errorf("hold twice: exit %d, %q", code, stderr)
	}
	out, _, _ = runQueue(append([]string{"list", "-json", "-state", "held"}, data...)...)
	if held := decodeEntries(t, out); len(held) != 1 || held[0].ID != small || !strings.HasPrefix(held[0].Subject, "mail.adminhold.out.remote_test.") {
		t.Fatalf("held: %+v", held)
	}
	accept.Store(true)
	if out, stderr, code := runQueue(append([]string{"flush", "-all"}, data...)...); code != 0 || !strings.Contains(out, "1 deferred messages flushed") {
		t.Fatalf("flush -all: exit %d, %q %s", code, out, stderr)
	}
	testutil.WaitFor(t, 20*time.Second, "the other delivered", func() bool { return sink.Count() == 1 })
	out, _, _ = runQueue(append([]string{"list", "-json"}, data...)...)
	if left := decodeEntries(t, out); len(left) != 1 || left[0].ID != small || left[0].State != stateHeld {
		t.Fatalf("after the flush the queue holds %+v, want %s held", left, small)
	}
	if _, stderr, code := runQueue(append([]string{"release", idFor(t, list, "d@other.test")}, data...)...); code != 1 || !strings.Contains(stderr, "no such message") {
		t.Errorf("release of a delivered message: exit %d, %q", code, stderr)
	}
	out, stderr, code = runQueue(append([]string{"release", small}, data...)...)
	if code != 0 || !strings.Contains(out, small+": released to mail.out.remote_test") {
		t.Fatalf("release: exit %d, %q %s", code, out, stderr)
	}
	testutil.WaitFor(t, 20*time.Second, "the released message delivered", func() bool { return sink.Count() == 2 })
	// `events -id QID` shows the whole life, from received to delivered.
	var o, e bytes.Buffer
	testutil.WaitFor(t, 10*time.Second, "the delivered event", func() bool { return len(eventsOf(t, n, small, bus.EventDelivered)) == 1 })
	if code := eventsCommand(append([]string{"-id", small}, data...), &o, &e); code != 0 {
		t.Fatalf("events -id: exit %d, %s", code, e.String())
	}
	// In the order they happened (a stored received event may follow
	// the routed one: it is emitted without waiting).
	lines := strings.Split(strings.TrimSpace(o.String()), "\n")
	sort.Strings(lines)
	var types []string
	for _, line := range lines {
		if f := strings.Fields(line); len(f) > 3 {
			types = append(types, f[2])
		}
	}
	if got := strings.Join(types, " "); got != "received routed deferred adminheld adminreleased delivered" {
		t.Errorf("events -id %s: %s\n%s", small, got, o.String())
	}
	if !strings.Contains(o.String(), "admin=") {
		t.Errorf("events -id %s names no administrator:\n%s", small, o.String())
	}
}

// `queue requeue` routes a deferred message again as a new message, which
// the fixed remote gets; the old id is gone.
func TestQueueRequeue(t *testing.T) {
	var accept atomic.Bool
	n, cfg, sink := queueNode(t, t.TempDir(), &accept)
	list := queueTwo(t, n, cfg, "Subject: one\r\n\r\n1\r\n", "Subject: two\r\n\r\n"+strings.Repeat("big body line\r\n", 6000))
	big := idFor(t, list, "d@other.test")
	data := []string{"-data", cfg.DataDir}
	accept.Store(true)
	out, stderr, code := runQueue(append([]string{"requeue", big}, data...)...)
	if code != 0 || !strings.Contains(out, big+": requeued as ") {
		t.Fatalf("requeue: exit %d, %q %s", code, out, stderr)
	}
	testutil.WaitFor(t, 20*time.Second, "the requeued message delivered", func() bool { return sink.Count() == 1 })
	m := sink.Mails()[0]
	if m.To[0] != "d@other.test" || !bytes.Contains(m.Data, []byte(strings.Repeat("big body line\r\n", 6000))) {
		t.Fatalf("delivered %v, %d bytes", m.To, len(m.Data))
	}
	evs := eventsOf(t, n, big, bus.EventRequeued)
	if len(evs) != 1 || evs[0].NewQID == "" || !strings.Contains(out, evs[0].NewQID) {
		t.Fatalf("requeued events: %+v", evs)
	}
	if _, stderr, code := runQueue(append([]string{"show", big}, data...)...); code != 1 || !strings.Contains(stderr, "no such message") {
		t.Errorf("show of the requeued id: exit %d, %q", code, stderr)
	}
}

// dropped reads the files of the Drop directory of local.test.
func dropped(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	files, _ := filepath.Glob(filepath.Join(dir, "*.eml"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(f)] = b
	}
	return out
}

// `queue bounce` returns a deferred message to its (local) sender with a
// report that parses as RFC 3464; the remote never gets it. `redrive` of
// the time range of that bounce sends it again, and not the message that
// bounced after the range.
func TestQueueBounceAndRedrive(t *testing.T) {
	var accept atomic.Bool
	n, cfg, sink := queueNode(t, t.TempDir(), &accept)
	list := queueTwo(t, n, cfg, "Subject: one\r\n\r\n1\r\n", "Subject: two\r\n\r\n2\r\n")
	small, other := idFor(t, list, "b@remote.test"), idFor(t, list, "d@other.test")
	data := []string{"-data", cfg.DataDir}
	start := time.Now().Add(-time.Second)
	out, stderr, code := runQueue(append([]string{"bounce", small, "-reason", "no longer wanted"}, data...)...)
	if code != 0 || !strings.Contains(out, small+": bounced, report ") {
		t.Fatalf("bounce: exit %d, %q %s", code, out, stderr)
	}
	dropDir := cfg.DropDirFor("local.test")
	var report []byte
	testutil.WaitFor(t, 20*time.Second, "the report in Drop", func() bool {
		for _, b := range dropped(t, dropDir) {
			report = b
		}
		return report != nil
	})
	p, err := dsn.Parse(bytes.NewReader(report))
	if err != nil {
		t.Fatalf("the report does not parse as RFC 3464: %v\n%s", err, report)
	}
	if len(p.Report.Recipients) != 1 || p.Report.Recipients[0].Action != dsn.ActionFailed || !strings.Contains(string(report), "no longer wanted") {
		t.Fatalf("report: %+v\n%s", p.Report, report)
	}
	mid := time.Now()
	if out, stderr, code := runQueue(append([]string{"bounce", other}, data...)...); code != 0 {
		t.Fatalf("bounce %s: exit %d, %q %s", other, code, out, stderr)
	}
	out, _, _ = runQueue(append([]string{"list"}, data...)...)
	if out != "Mail queue is empty\n" {
		t.Fatalf("after both bounces: %s", out)
	}
	accept.Store(true)
	var o, e bytes.Buffer
	code = redriveCommand(append([]string{"-since", start.UTC().Format(time.RFC3339Nano), "-until", mid.UTC().Format(time.RFC3339Nano)}, data...), &o, &e)
	if code != 0 || !strings.Contains(o.String(), small+": sent again as ") || !strings.Contains(o.String(), "1 done") {
		t.Fatalf("redrive: exit %d, %q %s", code, o.String(), e.String())
	}
	testutil.WaitFor(t, 20*time.Second, "the redriven message delivered", func() bool { return sink.Count() == 1 })
	if got := sink.Mails()[0].To; got[0] != "b@remote.test" {
		t.Fatalf("redrive sent %v, want only b@remote.test", got)
	}
	testutil.WaitFor(t, 10*time.Second, "the queue empty", func() bool {
		out, _, _ := runQueue(append([]string{"list"}, data...)...)
		return out == "Mail queue is empty\n"
	})
	if sink.Count() != 1 {
		t.Fatalf("the remote got %d messages, want only the redriven one", sink.Count())
	}
	if evs := eventsOf(t, n, small, bus.EventRedriven); len(evs) != 1 {
		t.Fatalf("redriven events: %+v", evs)
	}
}

// A message being delivered when `queue delete` runs is not both
// delivered and reported deleted: the command waits for the attempt
// (the delivery worker's lease), then finds the message delivered and
// says so, exit 1; with a short -wait it gives up with a clear message.
func TestQueueDeleteWaitsForDelivery(t *testing.T) {
	var accept atomic.Bool
	inRcpt := make(chan struct{}, 1)
	unblock := make(chan struct{})
	n, cfg, sink := queueNodeRcpt(t, t.TempDir(), func(to string) error {
		if !accept.Load() {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "try later"}
		}
		select {
		case inRcpt <- struct{}{}:
		default:
		}
		<-unblock
		return nil
	})
	list := queueTwo(t, n, cfg, "Subject: one\r\n\r\n1\r\n", "Subject: two\r\n\r\n2\r\n")
	small := idFor(t, list, "b@remote.test")
	data := []string{"-data", cfg.DataDir}
	accept.Store(true)
	if _, stderr, code := runQueue(append([]string{"flush", small}, data...)...); code != 0 {
		t.Fatalf("flush: %s", stderr)
	}
	select {
	case <-inRcpt:
	case <-time.After(20 * time.Second):
		t.Fatal("the delivery attempt did not start")
	}
	if _, stderr, code := runQueue(append([]string{"delete", small, "-wait", "1s"}, data...)...); code != 1 || !strings.Contains(stderr, "being delivered now") {
		t.Fatalf("delete during the attempt with -wait 1s: exit %d, %q", code, stderr)
	}
	type res struct {
		out, stderr string
		code        int
	}
	done := make(chan res, 1)
	var stderrBuf lockedBuffer
	go func() {
		var o bytes.Buffer
		c := queueCommand(append([]string{"delete", small}, data...), &o, &stderrBuf)
		done <- res{o.String(), stderrBuf.String(), c}
	}()
	// The command waits on the delivery's lease while the attempt lasts.
	if owner := bus.LeaseOwner(context.Background(), n.JS, bus.LeaseKey(small, "remote_test")); !strings.HasPrefix(owner, "delivery") {
		t.Fatalf("lease of %s held by %q, want the delivery", small, owner)
	}
	testutil.WaitFor(t, 10*time.Second, "the deletion waiting", func() bool {
		return strings.Contains(stderrBuf.String(), "waiting up to")
	})
	select {
	case r := <-done:
		t.Fatalf("delete returned during the attempt: %+v", r)
	default:
	}
	close(unblock)
	var r res
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("delete did not return after the attempt")
	}
	testutil.WaitFor(t, 10*time.Second, "delivered", func() bool { return sink.Count() == 1 })
	if r.code != 1 || !strings.Contains(r.stderr, "left the queue meanwhile") || strings.Contains(r.out, ": deleted") {
		t.Fatalf("delete after the attempt delivered: exit %d, %q %q", r.code, r.out, r.stderr)
	}
	if evs := eventsOf(t, n, small, bus.EventDeleted); len(evs) != 0 {
		t.Fatalf("a delivered message has deleted events: %+v", evs)
	}
}

// lockedBuffer is a bytes.Buffer safe for a command writing and a test reading.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Mail that bounced in delivery (the remote answered 550) is kept on
// MAIL_FAILED: `redrive` of the time range of the first bounce sends
// exactly that one again; mail from the null sender that failed went to
// Badmail, and `redrive -type badmail` (like `badmail requeue`) sends it
// again, to the remote now accepting it.
func TestRedriveDeliveryBounces(t *testing.T) {
	var accept atomic.Bool
	n, cfg, sink := queueNodeRcpt(t, t.TempDir(), bounceOr451(&accept))
	data := []string{"-data", cfg.DataDir}
	bouncedCount := func() int {
		var k int
		_ = bus.ReadEvents(t.Context(), n.JS, bus.EventFilter{Type: bus.EventBounced}, false, func(e bus.Event) error {
			if e.Kept != "" {
				k++
			}
			return nil
		})
		return k
	}
	start := time.Now().Add(-time.Second)
	sendOne(t, n, "a@local.test", "bounce1@remote.test", "Subject: one\r\n\r\n1\r\n")
	testutil.WaitFor(t, 20*time.Second, "the first bounce", func() bool { return bouncedCount() == 1 })
	mid := time.Now()
	sendOne(t, n, "a@local.test", "bounce2@other.test", "Subject: two\r\n\r\n2\r\n")
	testutil.WaitFor(t, 20*time.Second, "the second bounce", func() bool { return bouncedCount() == 2 })
	sendOne(t, n, "", "bounce3@remote.test", "Subject: three\r\n\r\n3\r\n")
	badDir := cfg.BadmailDir()
	testutil.WaitFor(t, 20*time.Second, "the null sender's mail in Badmail", func() bool {
		m, _ := filepath.Glob(filepath.Join(badDir, "*.BDR"))
		return len(m) == 1
	})
	accept.Store(true)
	var o, e bytes.Buffer
	if code := redriveCommand(append([]string{"-since", start.UTC().Format(time.RFC3339Nano), "-until", mid.UTC().Format(time.RFC3339Nano)}, data...), &o, &e); code != 0 || !strings.Contains(o.String(), "1 done") {
		t.Fatalf("redrive: exit %d, %q %s", code, o.String(), e.String())
	}
	testutil.WaitFor(t, 20*time.Second, "the redriven mail delivered", func() bool { return sink.Count() == 1 })
	if got := sink.Mails()[0].To; got[0] != "bounce1@remote.test" {
		t.Fatalf("redrive sent %v, want bounce1@remote.test only", got)
	}
	o.Reset()
	e.Reset()
	if code := redriveCommand(append([]string{"-type", "badmail", "-since", start.UTC().Format(time.RFC3339Nano), "-until", "0s"}, data...), &o, &e); code != 0 || !strings.Contains(o.String(), "1 done") {
		t.Fatalf("redrive -type badmail: exit %d, %q %s", code, o.String(), e.String())
	}
	testutil.WaitFor(t, 20*time.Second, "the Badmail message delivered", func() bool { return sink.Count() == 2 })
	if got := sink.Mails()[1].To; got[0] != "bounce3@remote.test" {
		t.Fatalf("redrive -type badmail sent %v", got)
	}
	if m, _ := filepath.Glob(filepath.Join(badDir, "*.BAD")); len(m) != 0 {
		t.Errorf("Badmail still holds %v after its redrive", m)
	}
	testutil.WaitFor(t, 10*time.Second, "the queue empty", func() bool {
		out, _, _ := runQueue(append([]string{"list"}, data...)...)
		return out == "Mail queue is empty\n"
	})
	if sink.Count() != 2 {
		t.Fatalf("the remote got %d messages, want 2", sink.Count())
	}
	if _, stderr, code := runRedrive("-since", "1h", data[0], data[1]); code != 2 || !strings.Contains(stderr, "-until") {
		t.Errorf("redrive without -until: exit %d, %q", code, stderr)
	}
}

func runRedrive(args ...string) (stdout, stderr string, code int) {
	var o, e bytes.Buffer
	code = redriveCommand(args, &o, &e)
	return o.String(), e.String(), code
}

// `badmail requeue` of mail from the null sender that a remote refused
// delivers it once the remote accepts, and is a requeued event.
func TestBadmailRequeueDelivers(t *testing.T) {
	var accept atomic.Bool
	n, cfg, sink := queueNodeRcpt(t, t.TempDir(), func(to string) error {
		if accept.Load() {
			return nil
		}
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	})
	sendOne(t, n, "", "x@remote.test", "Subject: bad\r\n\r\nbad\r\n")
	var name string
	testutil.WaitFor(t, 20*time.Second, "the mail in Badmail", func() bool {
		m, _ := filepath.Glob(filepath.Join(cfg.BadmailDir(), "*.BDR"))
		if len(m) == 1 {
			name = strings.TrimSuffix(filepath.Base(m[0]), ".BDR")
		}
		return name != ""
	})
	accept.Store(true)
	var o, e bytes.Buffer
	if code := badmailCommand([]string{"requeue", name, "-data", cfg.DataDir}, &o, &e); code != 0 {
		t.Fatalf("badmail requeue: exit %d, %s %s", code, o.String(), e.String())
	}
	testutil.WaitFor(t, 20*time.Second, "the requeued mail delivered", func() bool { return sink.Count() == 1 })
	if m := sink.Mails()[0]; m.To[0] != "x@remote.test" || !bytes.HasSuffix(m.Data, []byte("bad\r\n")) {
		t.Fatalf("delivered %+v", m)
	}
	if evs := eventsOf(t, n, name, bus.EventRequeued); len(evs) != 1 || evs[0].Admin == "" || evs[0].NewQID == "" {
		t.Fatalf("requeued events of %s: %+v", name, evs)
	}
}

// `redrive -type expired` sends again the mail whose queue lifetime ran
// out in the range: not a hard bounce in the same range, nor mail that
// expired after it.
func TestRedriveExpired(t *testing.T) {
	var accept atomic.Bool
	n, cfg, sink := queueNodeWith(t, t.TempDir(), bounceOr451(&accept), func(c *config.Config) {
		c.Delivery.Expire = config.Duration(time.Millisecond) // expired at the first attempt
		c.Delivery.DelayNotice = 0
	})
	data := []string{"-data", cfg.DataDir}
	count := func(typ string) int {
		var k int
		_ = bus.ReadEvents(t.Context(), n.JS, bus.EventFilter{Type: typ}, false, func(bus.Event) error { k++; return nil })
		return k
	}
	start := time.Now().Add(-time.Second)
	sendOne(t, n, "a@local.test", "bounce@remote.test", "Subject: hard\r\n\r\nhard\r\n")
	testutil.WaitFor(t, 20*time.Second, "the hard bounce", func() bool { return count(bus.EventBounced) == 1 })
	sendOne(t, n, "a@local.test", "b@remote.test", "Subject: one\r\n\r\n1\r\n")
	testutil.WaitFor(t, 20*time.Second, "the first expiry", func() bool { return count(bus.EventExpired) == 1 && count(bus.EventBounced) == 2 })
	mid := time.Now()
	sendOne(t, n, "a@local.test", "d@other.test", "Subject: two\r\n\r\n2\r\n")
	testutil.WaitFor(t, 20*time.Second, "the second expiry", func() bool { return count(bus.EventExpired) == 2 && count(bus.EventBounced) == 3 })
	accept.Store(true)
	out, stderr, code := runRedrive(append([]string{"-type", "expired", "-since", start.UTC().Format(time.RFC3339Nano), "-until", mid.UTC().Format(time.RFC3339Nano)}, data...)...)
	if code != 0 || !strings.Contains(out, "1 done") {
		t.Fatalf("redrive -type expired: exit %d, %q %s", code, out, stderr)
	}
	testutil.WaitFor(t, 20*time.Second, "the expired mail delivered", func() bool { return sink.Count() == 1 })
	testutil.WaitFor(t, 10*time.Second, "the queue empty", func() bool {
		out, _, _ := runQueue(append([]string{"list"}, data...)...)
		return out == "Mail queue is empty\n"
	})
	if got := sink.Mails(); len(got) != 1 || got[0].To[0] != "b@remote.test" {
		t.Fatalf("redrive -type expired sent %+v, want b@remote.test only", got)
	}
}

// bounceOr451 answers RCPT as a remote that accepts once accept is set,
// and until then refuses bounce* for good (550) and the rest for now (451).
func bounceOr451(accept *atomic.Bool) func(string) error {
	return func(to string) error {
		switch {
		case accept.Load():
			return nil
		case strings.HasPrefix(to, "bounce"):
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "try later"}
	}
}
