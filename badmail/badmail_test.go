package badmail

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
)

type harness struct {
	cfg config.Config
	js  jetstream.JetStream
	svc *Service
	dir string
}

// start runs a badmail service against a fresh embedded NATS server.
func start(t *testing.T) *harness {
	t.Helper()
	n := testutil.StartNATS(t)
	_, js := n.Connect(t)
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.Hostname = "mx.test"
	ctx := testutil.Context(t)
	if _, err := bus.Setup(ctx, js, cfg); err != nil {
		t.Fatal(err)
	}
	svc, err := New(cfg, testutil.Logger(t), js)
	if err != nil {
		t.Fatal(err)
	}
	svc.RetryDelay = 100 * time.Millisecond
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- svc.Run(rctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return &harness{cfg: cfg, js: js, svc: svc, dir: cfg.BadmailDir()}
}

func (h *harness) publish(t *testing.T, msg *nats.Msg, id string) uint64 {
	t.Helper()
	ack, err := bus.Publish(testutil.Context(t), h.js, msg, id)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

// streamMsgs counts the messages left on mail.bad (the reports to senders
// go to mail.in).
func (h *harness) streamMsgs(t *testing.T) uint64 {
	t.Helper()
	st, err := h.js.Stream(testutil.Context(t), bus.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(testutil.Context(t), jetstream.WithSubjectFilter(bus.SubjBad))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects[bus.SubjBad]
}

// reports returns the envelopes and bodies of the reports on mail.in.
func (h *harness) reports(t *testing.T) (envs []*envelope.Envelope, bodies []string) {
	t.Helper()
	ctx := testutil.Context(t)
	st, err := h.js.Stream(ctx, bus.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); ; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			info, ierr := st.Info(ctx)
			if ierr != nil {
				t.Fatal(ierr)
			}
			if seq > info.State.LastSeq {
				return envs, bodies
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if m.Subject != bus.SubjIn {
			continue
		}
		env, err := envelope.Decode(m.Header)
		if err != nil {
			t.Fatal(err)
		}
		envs, bodies = append(envs, env), append(bodies, string(m.Data))
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func mustContain(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s lacks %q:\n%s", what, sub, s)
		}
	}
}

func badEnvelope(qid string) *envelope.Envelope {
	return &envelope.Envelope{
		QueueID:  qid,
		From:     "alice@example.org",
		Rcpts:    []envelope.Rcpt{{Addr: "bob@example.net"}, {Addr: "carol@example.net", Notify: []string{"FAILURE"}}},
		Attempt:  3,
		ClientIP: "192.0.2.7",
		Helo:     "client.example.org",
		Source:   "smtp",
		Reason:   "550 5.1.1 <bob@example.net>: user unknown",
		Remote:   "mx.example.net",
	}
}

func TestWellFormed(t *testing.T) {
	h := start(t)
	qid := envelope.NewQueueID()
	data := []byte("From: alice@example.org\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nhello\r\n")
	msg, err := badEnvelope(qid).Msg(bus.SubjBad, data)
	if err != nil {
		t.Fatal(err)
	}
	msg.Header.Set(envelope.HdrBadSubject, "mail.out.example_net")
	h.publish(t, msg, "t1")

	bad, bdr := filepath.Join(h.dir, qid+".BAD"), filepath.Join(h.dir, qid+".BDR")
	testutil.WaitFor(t, 10*time.Second, "badmail files", func() bool { return exists(bad) && exists(bdr) })
	if got := readFile(t, bad); got != string(data) {
		t.Errorf(".BAD = %q", got)
	}
	mustContain(t, ".BDR", readFile(t, bdr),
		"Badmail-Entry: MAIL seq 1",
		"Reason:           550 5.1.1 <bob@example.net>: user unknown",
		"Enhanced status:  5.1.1",
		"Remote host:      mx.example.net",
		"Attempts:         3",
		"Moved from:       mail.out.example_net",
		"Queue ID:         "+qid,
		"Sender:           <alice@example.org>",
		"Recipient:        <bob@example.net>",
		"Recipient:        <carol@example.net> NOTIFY=FAILURE",
		"Client IP:        192.0.2.7",
		"Client HELO:      client.example.org",
		"Envelope:         well-formed",
		"Original headers:",
		"  Mta-Queue-Id: "+qid,
		"Sender report:   non-delivery report ",
	)
	testutil.WaitFor(t, 10*time.Second, "ack", func() bool { return h.streamMsgs(t) == 0 })

	// The sender is told, about every recipient, with the reason.
	envs, bodies := h.reports(t)
	if len(envs) != 1 {
		t.Fatalf("%d reports on mail.in, want 1", len(envs))
	}
	if e := envs[0]; e.From != "" || len(e.Rcpts) != 1 || e.Rcpts[0].Addr != "alice@example.org" || e.Source != "dsn" {
		t.Errorf("report envelope %+v", e)
	}
	if !strings.Contains(readFile(t, bdr), "Sender report:   non-delivery report "+envs[0].QueueID+" queued to <alice@example.org>") {
		t.Errorf(".BDR does not name the report %s", envs[0].QueueID)
	}
	mustContain(t, "report", bodies[0],
		"Final-Recipient: rfc822; bob@example.net", "Final-Recipient: rfc822; carol@example.net",
		"Action: failed", "Status: 5.1.1", "moved to Badmail: 550 5.1.1 <bob@example.net>: user unknown", "Subject: hi")
}

// Mail from the null sender has nobody to tell: Badmail is the end.
func TestNullSenderNoReport(t *testing.T) {
	h := start(t)
	qid := envelope.NewQueueID()
	env := badEnvelope(qid)
	env.From = ""
	msg, err := env.Msg(bus.SubjBad, []byte("Subject: bounce\r\n\r\nx\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	h.publish(t, msg, "null")
	testutil.WaitFor(t, 10*time.Second, "ack", func() bool { return h.streamMsgs(t) == 0 })
	if envs, _ := h.reports(t); len(envs) != 0 {
		t.Errorf("%d reports for the null sender", len(envs))
	}
	if bdr := readFile(t, filepath.Join(h.dir, qid+".BDR")); strings.Contains(bdr, "Sender report") {
		t.Errorf(".BDR mentions a report:\n%s", bdr)
	}
}

func TestMalformed(t *testing.T) {
	h := start(t)
	data := []byte("junk \x00\xff not a message")
	msg := &nats.Msg{Subject: bus.SubjBad, Header: nats.Header{}, Data: data}
	msg.Header.Set(envelope.HdrQueueID, "not a valid id!")
	msg.Header.Set(envelope.HdrMailFrom, "no brackets")
	msg.Header.Add(envelope.HdrRcpt, "<x@y>")
	msg.Header.Set(envelope.HdrReason, "poison message")
	msg.Header.Set("X-Junk", "\x01\x02weird")
	seq := h.publish(t, msg, "t2")

	name := "seq" + strconv.FormatUint(seq, 10)
	bad, bdr := filepath.Join(h.dir, name+".BAD"), filepath.Join(h.dir, name+".BDR")
	testutil.WaitFor(t, 10*time.Second, "badmail files", func() bool { return exists(bad) && exists(bdr) })
	if got := readFile(t, bad); got != string(data) {
		t.Errorf(".BAD = %q", got)
	}
	mustContain(t, ".BDR", readFile(t, bdr),
		"Reason:           poison message",
		"Queue ID:         "+name,
		"Sender:           no brackets",
		"Recipient:        <x@y>",
		"Envelope:         MALFORMED: envelope: malformed",
		"  Mta-Queue-Id: not a valid id!",
		`  X-Junk: "\x01\x02weird"`,
	)
	testutil.WaitFor(t, 10*time.Second, "ack", func() bool { return h.streamMsgs(t) == 0 })
}

func TestObjectStoreBody(t *testing.T) {
	h := start(t)
	ctx := testutil.Context(t)
	bodies, err := bus.OpenBodies(ctx, h.js)
	if err != nil {
		t.Fatal(err)
	}
	qid := envelope.NewQueueID()
	body := bytes.Repeat([]byte("0123456789abcdef\r\n"), 10000) // 180 KB
	if _, err := bodies.Put(ctx, qid, bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	env := badEnvelope(qid)
	env.Body = envelope.BodyObject
	env.BodySize = int64(len(body))
	msg, err := env.Msg(bus.SubjBad, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.publish(t, msg, "t3")

	bad, bdr := filepath.Join(h.dir, qid+".BAD"), filepath.Join(h.dir, qid+".BDR")
	testutil.WaitFor(t, 10*time.Second, "badmail files", func() bool { return exists(bdr) })
	if got := readFile(t, bad); got != string(body) {
		t.Errorf(".BAD has %d bytes, want the %d of the body", len(got), len(body))
	}
	mustContain(t, ".BDR", readFile(t, bdr), "Message:          180000 bytes, from Object Store mail-bodies")
	// Written and acked, the body is released.
	testutil.WaitFor(t, 10*time.Second, "body deleted", func() bool {
		r, err := bodies.Open(ctx, env, nil)
		if err == nil {
			r.Close()
		}
		return errors.Is(err, jetstream.ErrObjectNotFound)
	})
}

func TestSameQueueIDTwice(t *testing.T) {
	h := start(t)
	qid := envelope.NewQueueID()
	data := []byte("Subject: same\r\n\r\nbody\r\n")
	var seqs []uint64
	for i, rcpt := range []string{"bob@example.net", "carol@example.net"} {
		env := badEnvelope(qid)
		env.Rcpts = []envelope.Rcpt{{Addr: rcpt}}
		msg, err := env.Msg(bus.SubjBad, data)
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, h.publish(t, msg, "same"+strconv.Itoa(i)))
		// One after the other, so the names are predictable.
		testutil.WaitFor(t, 10*time.Second, "ack", func() bool { return h.streamMsgs(t) == 0 })
	}
	first := readFile(t, filepath.Join(h.dir, qid+".BDR"))
	second := readFile(t, filepath.Join(h.dir, qid+"-"+strconv.FormatUint(seqs[1], 10)+".BDR"))
	mustContain(t, "first .BDR", first, "Recipient:        <bob@example.net>")
	mustContain(t, "second .BDR", second, "Recipient:        <carol@example.net>")
	if got := readFile(t, filepath.Join(h.dir, qid+"-"+strconv.FormatUint(seqs[1], 10)+".BAD")); got != string(data) {
		t.Errorf("second .BAD = %q", got)
	}
}

// fakeMsg is a delivered message whose disposition is recorded, for
// calling handle directly (a redelivery after a lost ack).
type fakeMsg struct {
	jetstream.Msg
	h      nats.Header
	data   []byte
	seq    uint64
	acked  int
	nacked int
}

func (m *fakeMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: m.seq}, NumDelivered: 1}, nil
}
func (m *fakeMsg) Headers() nats.Header               { return m.h }
func (m *fakeMsg) Data() []byte                       { return m.data }
func (m *fakeMsg) Subject() string                    { return bus.SubjBad }
func (m *fakeMsg) DoubleAck(context.Context) error    { m.acked++; return nil }
func (m *fakeMsg) NakWithDelay(d time.Duration) error { m.nacked++; return nil }
func (m *fakeMsg) InProgress() error                  { return nil }
func (m *fakeMsg) Ack() error                         { m.acked++; return nil }
func (m *fakeMsg) TermWithReason(string) error        { return nil }
func (m *fakeMsg) Nak() error                         { m.nacked++; return nil }
func (m *fakeMsg) Reply() string                      { return "" }
func (m *fakeMsg) Term() error                        { return nil }

func TestRedeliveryWritesOnce(t *testing.T) {
	// handle is called directly, without Run.
	n := testutil.StartNATS(t)
	_, js := n.Connect(t)
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	if _, err := bus.Setup(testutil.Context(t), js, cfg); err != nil {
		t.Fatal(err)
	}
	svc, err := New(cfg, testutil.Logger(t), js)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{cfg: cfg, js: js, svc: svc, dir: cfg.BadmailDir()}
	qid := envelope.NewQueueID()
	msg, err := badEnvelope(qid).Msg(bus.SubjBad, []byte("Subject: x\r\n\r\ny\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	m := &fakeMsg{h: msg.Header, data: msg.Data, seq: 42}
	h.svc.handle(testutil.Context(t), m)
	h.svc.now = func() time.Time { return time.Now().Add(time.Hour) } // another report text
	h.svc.handle(testutil.Context(t), m)
	if m.acked != 2 || m.nacked != 0 {
		t.Fatalf("acked %d nacked %d", m.acked, m.nacked)
	}
	es, _ := os.ReadDir(h.dir)
	var got []string
	for _, e := range es {
		got = append(got, e.Name())
	}
	if strings.Join(got, " ") != qid+".BAD "+qid+".BDR" {
		t.Fatalf("files %v", got)
	}
}

func TestUnwritableDirRetries(t *testing.T) {
	h := start(t)
	// A regular file where the directory should be: MkdirAll fails, as it
	// would on a full or read-only disk (tests run as root, so chmod does
	// not stop anything).
	if err := os.WriteFile(h.dir, []byte("in the way"), 0o640); err != nil {
		t.Fatal(err)
	}
	qid := envelope.NewQueueID()
	data := []byte("Subject: kept\r\n\r\nkept\r\n")
	msg, err := badEnvelope(qid).Msg(bus.SubjBad, data)
	if err != nil {
		t.Fatal(err)
	}
	h.publish(t, msg, "t5")

	// More deliveries than bus.MaxDeliver: the badmail consumer must keep
	// retrying instead of letting the message sit unseen.
	var cons jetstream.Consumer
	testutil.WaitFor(t, 10*time.Second, "badmail consumer", func() bool {
		var err error
		cons, err = h.js.Consumer(testutil.Context(t), bus.StreamMail, bus.ConsumerBadmail)
		return err == nil
	})
	if md := cons.CachedInfo().Config.MaxDeliver; md != -1 {
		t.Errorf("badmail consumer MaxDeliver = %d, want -1", md)
	}
	testutil.WaitFor(t, 20*time.Second, "more than MaxDeliver deliveries", func() bool {
		info, err := cons.Info(testutil.Context(t))
		return err == nil && info.Delivered.Consumer > bus.MaxDeliver+1
	})
	if n := h.streamMsgs(t); n != 1 {
		t.Fatalf("stream has %d messages, want the un-acked one", n)
	}
	if fi, err := os.Stat(h.dir); err != nil || fi.IsDir() {
		t.Fatalf("obstacle changed: %v", err)
	}

	if err := os.Remove(h.dir); err != nil {
		t.Fatal(err)
	}
	bdr := filepath.Join(h.dir, qid+".BDR")
	testutil.WaitFor(t, 10*time.Second, "badmail written after the fix", func() bool { return exists(bdr) })
	if got := readFile(t, filepath.Join(h.dir, qid+".BAD")); got != string(data) {
		t.Errorf(".BAD = %q", got)
	}
	testutil.WaitFor(t, 10*time.Second, "ack", func() bool { return h.streamMsgs(t) == 0 })
	es, _ := os.ReadDir(h.dir)
	if len(es) != 2 {
		t.Errorf("badmail dir holds %d entries, want 2 (no temp files)", len(es))
	}
}
