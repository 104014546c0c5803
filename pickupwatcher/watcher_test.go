package pickupwatcher

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/badfile"
	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
)

type harness struct {
	cfg  config.Config
	js   jetstream.JetStream
	dir  string
	logs testutil.Logs // what the watchers logged
}

func newHarness(t *testing.T, stableFor time.Duration) *harness {
	t.Helper()
	n := testutil.StartNATS(t)
	_, js := n.Connect(t)
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.Hostname = "mx.example.org"
	cfg.LocalDomains = []string{"example.org"}
	cfg.Pickup.Interval = config.Duration(30 * time.Millisecond)
	cfg.Pickup.StableFor = config.Duration(stableFor)
	if _, err := bus.Setup(testutil.Context(t), js, cfg); err != nil {
		t.Fatal(err)
	}
	return &harness{cfg: cfg, js: js, dir: cfg.PickupDir()}
}

// run starts a watcher; it is stopped (and must return) at test end or
// when the returned stop is called.
func (h *harness) run(t *testing.T) (stop func()) {
	t.Helper()
	svc, err := New(h.cfg, h.logs.Logger(t), h.js)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("Run did not return after cancel")
		}
	}
	t.Cleanup(stop)
	return stop
}

// drop writes a file the safe way: elsewhere in Pickup/ (a hidden name),
// then renamed in.
func (h *harness) drop(t *testing.T, name, content string) {
	t.Helper()
	tmp := filepath.Join(h.dir, ".tmp-"+name)
	if err := os.WriteFile(tmp, []byte(content), 0o640); err != nil {
		t.Fatal(err)
	}
	// An mtime in the past, as for a file written a while before its rename.
	past := time.Now().Add(-time.Minute)
	if err := os.Chtimes(tmp, past, past); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(h.dir, name)); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) streamMsgs(t *testing.T) uint64 {
	t.Helper()
	st, err := h.js.Stream(testutil.Context(t), bus.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(testutil.Context(t))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// waitQueued waits until n messages are on the mail stream. This is the
// outcome to wait for: a file leaves Pickup/ when it is claimed, before it
// is queued, so its absence from Pickup/ proves nothing.
func (h *harness) waitQueued(t *testing.T, n uint64) {
	t.Helper()
	testutil.WaitFor(t, 20*time.Second, fmt.Sprintf("%d messages queued", n), func() bool { return h.streamMsgs(t) >= n })
}

// settle waits until n messages are queued, stops the watchers (each
// finishes what it took), then checks that exactly n are queued and that
// nothing is left in Pickup/ or .work/.
func (h *harness) settle(t *testing.T, n uint64, stops ...func()) {
	t.Helper()
	h.waitQueued(t, n)
	for _, stop := range stops {
		stop()
	}
	if got := h.streamMsgs(t); got != n {
		t.Fatalf("%d messages queued, want %d", got, n)
	}
	if left := h.leftover(t); len(left) != 0 {
		t.Fatalf("left after queueing: %v", left)
	}
}

// waitBadmail waits until Badmail holds n complete entries, a .BDR and
// its .BAD, and returns their .BDR paths.
func (h *harness) waitBadmail(t *testing.T, n int) []string {
	t.Helper()
	var whole []string
	testutil.WaitFor(t, 10*time.Second, fmt.Sprintf("%d Badmail entries", n), func() bool {
		bdrs, _ := filepath.Glob(filepath.Join(h.cfg.BadmailDir(), "*"+badfile.ExtBDR))
		whole = slices.DeleteFunc(bdrs, func(bdr string) bool {
			_, err := os.Lstat(strings.TrimSuffix(bdr, badfile.ExtBDR) + badfile.ExtBAD)
			return err != nil
		})
		return len(whole) >= n
	})
	return whole
}

// leftover lists what is still in Pickup/ and .work/ (hidden names and
// .work itself aside). Once a watcher is stopped, every file it took has
// been queued or moved to Badmail, so nothing may be left.
func (h *harness) leftover(t *testing.T) []string {
	t.Helper()
	var left []string
	for _, dir := range []string{h.dir, filepath.Join(h.dir, WorkDir)} {
		es, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if !strings.HasPrefix(e.Name(), ".") {
				left = append(left, filepath.Join(dir, e.Name()))
			}
		}
	}
	return left
}

// fetchIn reads (and acks) n messages from mail.in.
func (h *harness) fetchIn(t *testing.T, n int) []jetstream.Msg {
	t.Helper()
	ctx := testutil.Context(t)
	cons, err := h.js.CreateOrUpdateConsumer(ctx, bus.StreamMail, jetstream.ConsumerConfig{
		Durable: "test-in", FilterSubject: bus.SubjIn, AckPolicy: jetstream.AckExplicitPolicy,
	})
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.Msg
	deadline := time.Now().Add(10 * time.Second)
	for len(out) < n && time.Now().Before(deadline) {
		batch, err := cons.Fetch(n-len(out), jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			if err := m.Ack(); err != nil {
				t.Fatal(err)
			}
			out = append(out, m)
		}
	}
	if len(out) != n {
		t.Fatalf("got %d messages on mail.in, want %d", len(out), n)
	}
	return out
}

func gone(paths ...string) func() bool {
	return func() bool {
		for _, p := range paths {
			if _, err := os.Lstat(p); err == nil {
				return false
			}
		}
		return true
	}
}

func TestRenamedFileIsQueued(t *testing.T) {
	// StableFor is longer than fetchIn waits: a file renamed in, its mtime
	// older than StableFor, must be taken at first sight.
	h := newHarness(t, 30*time.Second)
	stop := h.run(t)
	file := "x-sender: alice@example.com\nx-receiver: bob@example.net\nx-receiver: Carol@example.net\n" +
		"From: Alice <alice@example.com>\nTo: bob@example.net\nSubject: report\n\nAll good.\n"
	h.drop(t, "report.eml", file)
	m := h.fetchIn(t, 1)[0]
	stop()
	if left := h.leftover(t); len(left) != 0 {
		t.Errorf("left after queueing: %v", left)
	}
	env, err := envelope.Decode(m.Headers())
	if err != nil {
		t.Fatal(err)
	}
	if !envelope.ValidQueueID(env.QueueID) || len(env.QueueID) != 26 {
		t.Errorf("queue id %q", env.QueueID)
	}
	if env.MsgID != "pickup."+env.QueueID {
		t.Errorf("Nats-Msg-Id %q", env.MsgID)
	}
	if env.From != "alice@example.com" || strings.Join(env.Addrs(), " ") != "bob@example.net Carol@example.net" {
		t.Errorf("envelope %q -> %q", env.From, env.Addrs())
	}
	if env.Source != "pickup" || env.ClientIP != "pickup" || env.Body != envelope.BodyInline {
		t.Errorf("source %q client %q body %q", env.Source, env.ClientIP, env.Body)
	}
	if got := env.ExpiresAt.Sub(env.ReceivedAt); got != 48*time.Hour {
		t.Errorf("expires after %v", got)
	}
	if time.Since(env.ReceivedAt) > time.Minute {
		t.Errorf("received at %v", env.ReceivedAt)
	}
	data := string(m.Data())
	if env.BodySize != int64(len(data)) {
		t.Errorf("BodySize %d, data %d", env.BodySize, len(data))
	}
	if !strings.HasPrefix(data, "Received: from pickup by mx.example.org (Mailroot)\r\n\twith local-file id "+env.QueueID+";\r\n") {
		t.Errorf("no Received: first:\n%s", data)
	}
	for _, want := range []string{"\r\nFrom: Alice <alice@example.com>\r\n", "\r\nMessage-ID: <" + env.QueueID + "@mx.example.org>\r\n", "\r\nDate: ", "\r\n\r\nAll good.\r\n"} {
		if !strings.Contains(data, want) {
			t.Errorf("message lacks %q:\n%s", want, data)
		}
	}
	if strings.Contains(strings.ToLower(data), "x-sender") {
		t.Errorf("envelope lines left in:\n%s", data)
	}
	if env.Hops != 1 {
		t.Errorf("Hops %d", env.Hops)
	}
}

func TestLargeFileGoesToObjectStore(t *testing.T) {
	h := newHarness(t, time.Second)
	h.run(t)
	body := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyz\r\n", 3000) // ~114 KB
	h.drop(t, "big.eml", "From: a@example.com\r\nTo: b@example.net\r\nSubject: big\r\n\r\n"+body)
	m := h.fetchIn(t, 1)[0]
	env, err := envelope.Decode(m.Headers())
	if err != nil {
		t.Fatal(err)
	}
	if env.Body != envelope.BodyObject || len(m.Data()) != 0 {
		t.Fatalf("body %q with %d bytes of data", env.Body, len(m.Data()))
	}
	bodies, err := bus.OpenBodies(testutil.Context(t), h.js)
	if err != nil {
		t.Fatal(err)
	}
	r, err := bodies.Open(testutil.Context(t), env, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(got)) != env.BodySize || !bytes.HasSuffix(got, []byte("\r\n\r\n"+body)) {
		t.Errorf("stored body: %d bytes, BodySize %d", len(got), env.BodySize)
	}
}

func TestSlowWriteInPlace(t *testing.T) {
	const stable = time.Second
	h := newHarness(t, stable)
	h.run(t)
	path := filepath.Join(h.dir, "slow.eml")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	first := "From: a@example.com\nTo: b@example.net\nSubject: slow\n\nfirst half\n"
	if _, err := f.WriteString(first); err != nil {
		t.Fatal(err)
	}
	// Less than StableFor with a half-written file: nothing may happen.
	// (Proving an absence needs a wait; correctness does not hang on it.)
	time.Sleep(stable / 3)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("half-written file taken: %v", err)
	}
	if n := h.streamMsgs(t); n != 0 {
		t.Fatalf("%d messages published from a half-written file", n)
	}
	if _, err := f.WriteString("second half\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	m := h.fetchIn(t, 1)[0]
	if !strings.HasSuffix(string(m.Data()), "\r\n\r\nfirst half\r\nsecond half\r\n") {
		t.Errorf("message not complete:\n%s", m.Data())
	}
}

func TestBadFileGoesToBadmail(t *testing.T) {
	h := newHarness(t, time.Second)
	stop := h.run(t)
	content := "From: a@example.com\nSubject: nobody to send to\n\nbody\n"
	h.drop(t, "norcpt.eml", content)
	h.waitBadmail(t, 1)
	stop()
	if left := h.leftover(t); len(left) != 0 {
		t.Errorf("left after badmailing: %v", left)
	}

	bad := h.cfg.BadmailDir()
	es, err := os.ReadDir(bad)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2 {
		t.Fatalf("badmail holds %v", es)
	}
	qid := strings.TrimSuffix(es[0].Name(), ".BAD")
	if !envelope.ValidQueueID(qid) || es[1].Name() != qid+".BDR" {
		t.Fatalf("badmail names %q %q", es[0].Name(), es[1].Name())
	}
	got, _ := os.ReadFile(filepath.Join(bad, qid+".BAD"))
	if string(got) != content {
		t.Errorf(".BAD = %q, want the file as it was", got)
	}
	bdr, _ := os.ReadFile(filepath.Join(bad, qid+".BDR"))
	for _, want := range []string{
		"Reason:           pickupwatcher: no recipient: no X-Receiver line and no address in To:, Cc: or Bcc:",
		`Original file:    "norcpt.eml"`,
		"Time:             ",
		"Queue ID:         " + qid,
	} {
		if !strings.Contains(string(bdr), want) {
			t.Errorf(".BDR lacks %q:\n%s", want, bdr)
		}
	}
	if n := h.streamMsgs(t); n != 0 {
		t.Errorf("%d messages published", n)
	}
}

func TestTooBigFileGoesToBadmail(t *testing.T) {
	h := newHarness(t, time.Second)
	h.cfg.Ingress.MaxMessageSize = 1000
	stop := h.run(t)
	content := "From: a@example.com\nTo: b@example.net\n\n" + strings.Repeat("x", 200<<10)
	h.drop(t, "huge.eml", content)
	h.waitBadmail(t, 1)
	stop()
	if left := h.leftover(t); len(left) != 0 {
		t.Errorf("left after badmailing: %v", left)
	}
	if n := h.streamMsgs(t); n != 0 {
		t.Errorf("%d messages published", n)
	}
	matches, _ := filepath.Glob(filepath.Join(h.cfg.BadmailDir(), "*.BDR"))
	if len(matches) != 1 {
		t.Fatalf("badmail: %v", matches)
	}
	bdr, _ := os.ReadFile(matches[0])
	if !strings.Contains(string(bdr), "over the limit of 1000 bytes") {
		t.Errorf(".BDR:\n%s", bdr)
	}
	got, _ := os.ReadFile(strings.TrimSuffix(matches[0], ".BDR") + ".BAD")
	if string(got) != content {
		t.Errorf(".BAD has %d bytes, want %d", len(got), len(content))
	}
}

// A crash after the PubAck but before the delete leaves the file in
// .work/; handling it again must not queue it twice.
func TestCrashAfterPublishQueuesOnce(t *testing.T) {
	h := newHarness(t, time.Second)
	work := filepath.Join(h.dir, WorkDir)
	if err := os.MkdirAll(work, 0o750); err != nil {
		t.Fatal(err)
	}
	claimed := filepath.Join(work, "crash.eml")
	if err := os.WriteFile(claimed, []byte("From: a@example.com\nTo: b@example.net\n\nonce\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	// Keep a second link: the same file (inode, name, size, mtime) can be
	// put back after the first run deleted it, as if the delete had not
	// happened.
	keep := filepath.Join(t.TempDir(), "keep")
	if err := os.Link(claimed, keep); err != nil {
		t.Fatal(err)
	}

	h.settle(t, 1, h.run(t)) // recovery at start handles .work/

	if err := os.Link(keep, claimed); err != nil {
		t.Fatal(err)
	}
	stop := h.run(t)
	// The first scan handles .work/ before it looks at Pickup/: once the
	// probe is queued, the file put back has been handled again, and two
	// messages mean it was not queued twice (dedup by Nats-Msg-Id).
	h.drop(t, "probe.eml", "From: a@example.com\nTo: b@example.net\n\nprobe\n")
	h.settle(t, 2, stop)
}

// A crash between the claim's link and unlink leaves the file in both
// places: it is queued once and both names go.
func TestCrashDuringClaim(t *testing.T) {
	h := newHarness(t, time.Second)
	work := filepath.Join(h.dir, WorkDir)
	if err := os.MkdirAll(work, 0o750); err != nil {
		t.Fatal(err)
	}
	h.drop(t, "twice.eml", "From: a@example.com\nTo: b@example.net\n\nx\n")
	if err := os.Link(filepath.Join(h.dir, "twice.eml"), filepath.Join(work, "twice.eml")); err != nil {
		t.Fatal(err)
	}
	stop := h.run(t)
	h.waitQueued(t, 1)
	// Both names going is the behaviour under test; the stop then lets any
	// second publish finish before the count.
	testutil.WaitFor(t, 10*time.Second, "both names gone", gone(filepath.Join(h.dir, "twice.eml"), filepath.Join(work, "twice.eml")))
	stop()
	if n := h.streamMsgs(t); n != 1 {
		t.Fatalf("%d messages", n)
	}
}

// A file of the same name still in .work/ (not yet queued) is never
// overwritten by a new file: the new one waits.
func TestSameNameWaits(t *testing.T) {
	h := newHarness(t, time.Second)
	svc, err := New(h.cfg, testutil.Logger(t), h.js)
	if err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(h.dir, WorkDir, "same.eml")
	if err := os.WriteFile(old, []byte("old"), 0o640); err != nil {
		t.Fatal(err)
	}
	h.drop(t, "same.eml", "new")
	if svc.claim("same.eml") {
		t.Fatal("claimed over an unsent file of the same name")
	}
	if got, _ := os.ReadFile(old); string(got) != "old" {
		t.Fatalf(".work file now %q", got)
	}
	if _, err := os.Stat(filepath.Join(h.dir, "same.eml")); err != nil {
		t.Fatal("new file lost")
	}
}

func TestTwoWatchersOneDir(t *testing.T) {
	h := newHarness(t, time.Second)
	stopA, stopB := h.run(t), h.run(t)
	const n = 30
	for i := range n {
		h.drop(t, fmt.Sprintf("m%02d.eml", i), fmt.Sprintf("From: a@example.com\nTo: b%d@example.net\n\nmessage %d\n", i, i))
	}
	h.settle(t, n, stopA, stopB)
	seen := map[string]bool{}
	for _, m := range h.fetchIn(t, n) {
		env, err := envelope.Decode(m.Headers())
		if err != nil {
			t.Fatal(err)
		}
		if seen[env.Rcpts[0].Addr] {
			t.Errorf("%s queued twice", env.Rcpts[0].Addr)
		}
		seen[env.Rcpts[0].Addr] = true
	}
	if len(seen) != n {
		t.Errorf("%d distinct messages", len(seen))
	}
}

func TestIgnoredNames(t *testing.T) {
	h := newHarness(t, time.Second)
	stop := h.run(t)
	hidden := filepath.Join(h.dir, ".in-progress.eml")
	if err := os.WriteFile(hidden, []byte("From: a@example.com\nTo: b@example.net\n\nx\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(h.dir, ".staging")
	if err := os.Mkdir(sub, 0o750); err != nil {
		t.Fatal(err)
	}
	// A visible file listed after them (names are listed in order): once
	// it is queued, the scan that took it has passed them, and the stop
	// lets anything that scan took finish.
	h.drop(t, "zz.eml", "From: a@example.com\nTo: b@example.net\n\nx\n")
	h.settle(t, 1, stop)
	for _, p := range []string{hidden, sub} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

func TestFileQIDDeterministic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.eml")
	os.WriteFile(p, []byte("x"), 0o640)
	i1, _ := os.Stat(p)
	q1 := fileQID("a.eml", i1, []byte("x"))
	if !envelope.ValidQueueID(q1) || len(q1) != 26 || strings.ToUpper(q1) != q1 {
		t.Fatalf("qid %q", q1)
	}
	// Same file after a rename into .work/: same id.
	p2 := filepath.Join(dir, "moved")
	os.Rename(p, p2)
	i2, _ := os.Stat(p2)
	if q2 := fileQID("a.eml", i2, []byte("x")); q2 != q1 {
		t.Errorf("id changed on rename: %s %s", q1, q2)
	}
	if q3 := fileQID("b.eml", i2, []byte("x")); q3 == q1 {
		t.Error("same id for another name")
	}
}

// When NATS refuses the message, the file stays in .work/ and is queued
// at a later scan.
func TestPublishFailureRetries(t *testing.T) {
	h := newHarness(t, time.Second)
	ctx := testutil.Context(t)
	stop := h.run(t)
	// Wait until the watcher has set up (it recreates missing buckets),
	// then take the Object Store away so that large bodies cannot be stored.
	h.drop(t, "probe.eml", "From: a@example.com\nTo: b@example.net\n\nx\n")
	h.waitQueued(t, 1)
	if err := h.js.DeleteObjectStore(ctx, bus.BucketBodies); err != nil {
		t.Fatal(err)
	}
	body := strings.Repeat("large body line\r\n", 5000)
	h.drop(t, "retry.eml", "From: a@example.com\r\nTo: b@example.net\r\n\r\n"+body)
	claimed := filepath.Join(h.dir, WorkDir, "retry.eml")
	// A failed attempt shows only in the log; waiting for it makes sure the
	// retry, not a first attempt after the store is back, is under test.
	testutil.WaitFor(t, 10*time.Second, "a failed publish", func() bool {
		return h.logs.Count("publish failed, will retry") > 0
	})
	if n := h.streamMsgs(t); n != 1 {
		t.Fatalf("%d messages while the Object Store is missing", n)
	}
	if _, err := os.Stat(claimed); err != nil {
		t.Fatalf("claimed file gone before it was queued: %v", err)
	}
	if err := bus.EnsureStream(ctx, h.js, bus.LayoutOf(h.cfg)); err != nil {
		t.Fatal(err)
	}
	h.settle(t, 2, stop)
}
