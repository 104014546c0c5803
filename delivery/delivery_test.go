package delivery

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
)

const wait = 20 * time.Second

// harness is one isolated world: NATS, DNS, a sink MX and the service.
type harness struct {
	t      *testing.T
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
	dns    *testutil.DNS
	sink   *testutil.Sink
	cfg    config.Config
	svc    *Service
}

func newHarness(t *testing.T, zone ...string) *harness {
	t.Helper()
	t.Parallel()
	ns := testutil.StartNATS(t)
	h := &harness{t: t, dns: testutil.StartDNS(t, zone...), sink: testutil.StartSink(t)}
	h.nc, h.js = ns.Connect(t)
	h.cfg = config.Default()
	h.cfg.Hostname = "mailroot.test"
	h.cfg.DataDir = t.TempDir()
	h.cfg.Delivery.Concurrency = 4
	h.cfg.Delivery.Port = h.sink.Port
	h.cfg.Delivery.DNSServer = h.dns.Addr
	h.cfg.Delivery.Retry = []config.Duration{config.Duration(time.Second)}
	h.cfg.Delivery.Expire = config.Duration(time.Hour)
	h.cfg.Delivery.ConnectTimeout = config.Duration(5 * time.Second)
	h.cfg.Delivery.CommandTimeout = config.Duration(10 * time.Second)
	ctx := t.Context()
	if _, err := bus.Setup(ctx, h.js, h.cfg); err != nil {
		t.Fatal(err)
	}
	var err error
	if h.stream, err = h.js.Stream(ctx, bus.StreamMail); err != nil {
		t.Fatal(err)
	}
	return h
}

// start runs the service until the test ends or stop is called; mod may
// change seams first.
func (h *harness) start(mod func(*Service)) (stop func()) {
	h.t.Helper()
	svc, err := New(h.cfg, testutil.Logger(h.t), h.js)
	if err != nil {
		h.t.Fatal(err)
	}
	svc.Grace = time.Second
	if mod != nil {
		mod(svc)
	}
	h.svc = svc
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			h.t.Errorf("Run: %v", err)
		}
	})
	h.t.Cleanup(stop)
	return stop
}

// newEnv returns an envelope for rcpts, all in domain.
func newEnv(domain string, rcpts ...string) *envelope.Envelope {
	env := &envelope.Envelope{
		QueueID:    envelope.NewQueueID(),
		From:       "sender@origin.test",
		Domain:     domain,
		ReceivedAt: time.Now(),
		ExpiresAt:  time.Now().Add(time.Hour),
		Source:     "smtp",
	}
	for _, r := range rcpts {
		env.Rcpts = append(env.Rcpts, envelope.Rcpt{Addr: r})
	}
	return env
}

// publish puts env on subj (with data) the way the router does.
func (h *harness) publish(subj string, env *envelope.Envelope, data []byte) {
	h.t.Helper()
	msg, err := env.Msg(subj, data)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := bus.Publish(h.t.Context(), h.js, msg, env.QueueID+"."+subj); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) publishOut(env *envelope.Envelope, body []byte) {
	h.t.Helper()
	h.publish(bus.Out(bus.Token(env.Domain)), env, body)
}

// bad waits for the envelope on mail.bad and returns it.
func (h *harness) bad() (*envelope.Envelope, []byte) {
	h.t.Helper()
	var raw *jetstream.RawStreamMsg
	testutil.WaitFor(h.t, wait, "a message on mail.bad", func() bool {
		var err error
		raw, err = h.stream.GetLastMsgForSubject(h.t.Context(), bus.SubjBad)
		return err == nil
	})
	env, err := envelope.Decode(raw.Header)
	if err != nil {
		h.t.Fatalf("bad envelope: %v", err)
	}
	return env, raw.Data
}

// waitEmpty waits until nothing is left in the stream but mail.bad and
// mail.in (notifications; no router runs here).
func (h *harness) waitEmpty() {
	h.t.Helper()
	testutil.WaitFor(h.t, wait, "the queue to drain", func() bool {
		info, err := h.stream.Info(h.t.Context(), jetstream.WithSubjectFilter("mail.>"))
		if err != nil {
			return false
		}
		for subj, n := range info.State.Subjects {
			if subj != bus.SubjBad && subj != bus.SubjIn && n > 0 {
				return false
			}
		}
		return true
	})
}

func (h *harness) waitMails(n int) []testutil.Mail {
	h.t.Helper()
	testutil.WaitFor(h.t, wait, "mail at the sink", func() bool { return h.sink.Count() >= n })
	return h.sink.Mails()
}

var sampleBody = []byte("From: sender@origin.test\r\nTo: rcpt@example.test\r\nSubject: hi\r\n\r\n" +
	"line one\r\n.leading dot\r\n..two dots\r\nlast line\r\n")

func TestDeliverExactBytesAndEnvelope(t *testing.T) {
	h := newHarness(t,
		"exact.test. MX 10 mx.exact.test.",
		"mx.exact.test. A 127.0.0.1")
	h.start(nil)
	env := newEnv("exact.test", "a@exact.test", "b@exact.test")
	env.Ret = "HDRS"
	env.EnvID = "id+2Bone"
	env.Rcpts[0].Notify = []string{"FAILURE", "DELAY"}
	env.Rcpts[0].ORcpt = "rfc822;a+2Bx@exact.test"
	h.publishOut(env, sampleBody)

	m := h.waitMails(1)[0]
	if !bytes.Equal(m.Data, sampleBody) {
		t.Errorf("data at sink:\n%q\nwant\n%q", m.Data, sampleBody)
	}
	if m.From != env.From || !slices.Equal(m.To, []string{"a@exact.test", "b@exact.test"}) {
		t.Errorf("envelope at sink: from %q to %q", m.From, m.To)
	}
	if m.Helo != "mailroot.test" {
		t.Errorf("EHLO name %q, want mailroot.test", m.Helo)
	}
	if m.MailOpts.Return != smtp.DSNReturnHeaders || m.MailOpts.EnvelopeID != "id+one" {
		t.Errorf("MAIL options RET=%q ENVID=%q", m.MailOpts.Return, m.MailOpts.EnvelopeID)
	}
	if m.MailOpts.Size != int64(len(sampleBody)) {
		t.Errorf("SIZE=%d, want %d", m.MailOpts.Size, len(sampleBody))
	}
	ro := m.RcptOpts[0]
	if !slices.Equal(ro.Notify, []smtp.DSNNotify{smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed}) ||
		ro.OriginalRecipientType != smtp.DSNAddressTypeRFC822 || ro.OriginalRecipient != "a+x@exact.test" {
		t.Errorf("RCPT options %+v", ro)
	}
	h.waitEmpty()
	if n := h.sink.Transactions(); n != 1 {
		t.Errorf("%d transactions, want 1", n)
	}
}

func TestNullSender(t *testing.T) {
	h := newHarness(t, "ns.test. MX 10 mx.ns.test.", "mx.ns.test. A 127.0.0.1")
	h.start(nil)
	env := newEnv("ns.test", "x@ns.test")
	env.From = ""
	h.publishOut(env, sampleBody)
	if m := h.waitMails(1)[0]; m.From != "" {
		t.Errorf("MAIL FROM %q, want null sender", m.From)
	}
}

func TestMXPreferenceOrder(t *testing.T) {
	// The most preferred MX (listed last) has nothing listening.
	h := newHarness(t,
		"pref.test. MX 20 mx2.pref.test.",
		"pref.test. MX 10 mx1.pref.test.",
		"mx1.pref.test. A 127.0.0.2",
		"mx2.pref.test. A 127.0.0.1")
	var mu sync.Mutex
	var dialed []string
	h.start(func(s *Service) {
		dial := s.Dial
		s.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			mu.Lock()
			dialed = append(dialed, addr)
			mu.Unlock()
			return dial(ctx, network, addr)
		}
	})
	h.publishOut(newEnv("pref.test", "x@pref.test"), sampleBody)
	h.waitMails(1)
	h.waitEmpty()
	mu.Lock()
	defer mu.Unlock()
	if len(dialed) != 2 || !strings.HasPrefix(dialed[0], "127.0.0.2:") || !strings.HasPrefix(dialed[1], "127.0.0.1:") {
		t.Errorf("dialed %v, want mx1 (127.0.0.2) then mx2 (127.0.0.1)", dialed)
	}
}

func TestImplicitMX(t *testing.T) {
	h := newHarness(t, "amx.test. A 127.0.0.1")
	h.start(nil)
	h.publishOut(newEnv("amx.test", "x@amx.test"), sampleBody)
	if m := h.waitMails(1)[0]; !slices.Equal(m.To, []string{"x@amx.test"}) {
		t.Errorf("to %v", m.To)
	}
	h.waitEmpty()
}

func TestAddressLiteral(t *testing.T) {
	h := newHarness(t)
	h.start(nil)
	h.publishOut(newEnv("[127.0.0.1]", "x@[127.0.0.1]"), sampleBody)
	if m := h.waitMails(1)[0]; !slices.Equal(m.To, []string{"x@[127.0.0.1]"}) {
		t.Errorf("to %v", m.To)
	}
	h.waitEmpty()
}

func TestTemporaryFailureRetried(t *testing.T) {
	h := newHarness(t, "retry.test. MX 10 mx.retry.test.", "mx.retry.test. A 127.0.0.1")
	h.sink.DataFunc = func(n int, _ *testutil.Mail) error {
		if n <= 2 {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "try later"}
		}
		return nil
	}
	schedules := make(chan *nats.Msg, 10)
	sub, err := h.nc.ChanSubscribe("mail.defer.>", schedules)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	h.start(nil)
	env := newEnv("retry.test", "x@retry.test")
	h.publishOut(env, sampleBody)

	m := h.waitMails(1)[0]
	if !bytes.Equal(m.Data, sampleBody) {
		t.Errorf("data %q", m.Data)
	}
	if n := h.sink.Transactions(); n != 3 {
		t.Errorf("%d transactions, want 3", n)
	}
	h.waitEmpty()
	for want := 1; want <= 2; want++ {
		var sm *nats.Msg
		select {
		case sm = <-schedules:
		case <-time.After(wait):
			t.Fatalf("no schedule for attempt %d", want)
		}
		next, err := envelope.Decode(sm.Header)
		if err != nil {
			t.Fatal(err)
		}
		if sm.Subject != bus.Defer("retry_test", env.QueueID) {
			t.Errorf("schedule subject %s", sm.Subject)
		}
		if next.Attempt != want {
			t.Errorf("Mta-Attempt %d, want %d", next.Attempt, want)
		}
		if d := time.Since(next.LastAttemptAt); d < 0 || d > wait {
			t.Errorf("Mta-Last-Attempt %v is not the time of the attempt", next.LastAttemptAt)
		}
		if want := "451 4.7.1 try later (mx.retry.test[127.0.0.1])"; next.LastError != want {
			t.Errorf("last error %q, want %q", next.LastError, want)
		}
		if got := sm.Header.Get("Nats-Schedule-Target"); got != "mail.out.retry_test" {
			t.Errorf("schedule target %q", got)
		}
		if !strings.HasPrefix(sm.Header.Get("Nats-Schedule"), "@at ") {
			t.Errorf("Nats-Schedule %q", sm.Header.Get("Nats-Schedule"))
		}
		for k := range sm.Header {
			if k == "Nats-Scheduler" || k == "Nats-Schedule-Next" {
				t.Errorf("republished schedule carries %s", k)
			}
		}
		if !bytes.Equal(sm.Data, sampleBody) {
			t.Error("schedule lost the body")
		}
	}
}

func TestConnectionFailureDeferred(t *testing.T) {
	h := newHarness(t, "down.test. MX 10 mx.down.test.", "mx.down.test. A 127.0.0.2")
	h.start(nil)
	env := newEnv("down.test", "x@down.test")
	h.publishOut(env, sampleBody)
	var raw *jetstream.RawStreamMsg
	testutil.WaitFor(t, wait, "a retry schedule", func() bool {
		var err error
		raw, err = h.stream.GetLastMsgForSubject(t.Context(), bus.Defer("down_test", env.QueueID))
		return err == nil
	})
	next, err := envelope.Decode(raw.Header)
	if err != nil {
		t.Fatal(err)
	}
	if next.Attempt != 1 || !strings.HasPrefix(next.LastError, "4.4.1 connect:") || next.Remote != "mx.down.test[127.0.0.2]" {
		t.Errorf("schedule: attempt %d last error %q remote %q", next.Attempt, next.LastError, next.Remote)
	}
}

func TestDNSFailureDeferred(t *testing.T) {
	h := newHarness(t)
	// Nothing answers DNS there: a temporary failure, not a bounce.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.cfg.Delivery.DNSServer = pc.LocalAddr().String()
	_ = pc.Close()
	h.start(nil)
	env := newEnv("dnsfail.test", "x@dnsfail.test")
	h.publishOut(env, sampleBody)
	var raw *jetstream.RawStreamMsg
	testutil.WaitFor(t, wait, "a retry schedule", func() bool {
		raw, err = h.stream.GetLastMsgForSubject(t.Context(), bus.Defer("dnsfail_test", env.QueueID))
		return err == nil
	})
	next, err := envelope.Decode(raw.Header)
	if err != nil {
		t.Fatal(err)
	}
	if next.Attempt != 1 || !strings.HasPrefix(next.LastError, "4.4.3 dns: lookup dnsfail.test: MX query failed") {
		t.Errorf("schedule: attempt %d last error %q", next.Attempt, next.LastError)
	}
}

func TestShutdownMidTransactionNaks(t *testing.T) {
	h := newHarness(t, "slow.test. MX 10 mx.slow.test.", "mx.slow.test. A 127.0.0.1")
	inData := make(chan struct{}, 1)
	release := make(chan struct{})
	h.sink.DataFunc = func(n int, _ *testutil.Mail) error {
		if n == 1 {
			inData <- struct{}{}
			<-release
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "too late"}
		}
		return nil
	}
	t.Cleanup(func() { close(release) })
	stop := h.start(func(s *Service) { s.Grace = 200 * time.Millisecond })
	env := newEnv("slow.test", "x@slow.test")
	h.publishOut(env, sampleBody)
	select {
	case <-inData:
	case <-time.After(wait):
		t.Fatal("no DATA at the sink")
	}
	stop() // shutdown while the remote has not answered the final dot

	info, err := h.stream.Info(t.Context(), jetstream.WithSubjectFilter("mail.>"))
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Subjects[bus.Out("slow_test")]; n != 1 || len(info.State.Subjects) != 1 {
		t.Fatalf("stream subjects after shutdown: %v, want the message back on mail.out.slow_test only", info.State.Subjects)
	}
	// Another worker gets it well before AckWait (2 min) would have
	// brought it back.
	h.start(nil)
	if m := h.waitMails(1)[0]; !bytes.Equal(m.Data, sampleBody) {
		t.Errorf("data %q", m.Data)
	}
	h.waitEmpty()
}

func TestSmartHost(t *testing.T) {
	for _, tc := range []struct {
		name string
		host func(port string) string
	}{
		{"ip", func(p string) string { return "[127.0.0.1]:" + p }},
		{"name", func(p string) string { return "relay.smart.test:" + p }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// No records at all for the destination: only the smart
			// host's name resolves.
			h := newHarness(t, "relay.smart.test. A 127.0.0.1")
			_, port, _ := net.SplitHostPort(h.sink.Addr)
			h.cfg.Delivery.SmartHost = tc.host(port)
			h.cfg.Delivery.Port = 1 // must not be used
			h.start(nil)
			h.publishOut(newEnv("elsewhere.test", "x@elsewhere.test"), sampleBody)
			if m := h.waitMails(1)[0]; !bytes.Equal(m.Data, sampleBody) {
				t.Errorf("data %q", m.Data)
			}
			h.waitEmpty()
		})
	}
}

func TestObjectStoreBody(t *testing.T) {
	h := newHarness(t, "big.test. MX 10 mx.big.test.", "mx.big.test. A 127.0.0.1")
	h.start(nil)
	bodies, err := bus.OpenBodies(t.Context(), h.js)
	if err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("0123456789 abcdefghijklmnopqrstuvwxyz\r\n"), 5000) // ~195 KiB
	env := newEnv("big.test", "x@big.test")
	if _, err := bodies.Put(t.Context(), env.QueueID, bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	env.Body, env.BodySize = envelope.BodyObject, int64(len(body))
	h.publishOut(env, nil)
	if m := h.waitMails(1)[0]; !bytes.Equal(m.Data, body) {
		t.Errorf("data at sink differs: %d bytes, want %d", len(m.Data), len(body))
	}
	h.waitEmpty()
	testutil.WaitFor(t, wait, "the body to be released", func() bool {
		_, err := bodies.Open(t.Context(), env, nil)
		return errors.Is(err, jetstream.ErrObjectNotFound)
	})
}

func TestUndecodableEnvelopeToBadmail(t *testing.T) {
	h := newHarness(t)
	h.start(nil)
	msg := &nats.Msg{Subject: bus.Out("x_test"), Header: nats.Header{envelope.HdrQueueID: {"Q1"}}, Data: []byte("junk")}
	if _, err := bus.Publish(t.Context(), h.js, msg, "junk1"); err != nil {
		t.Fatal(err)
	}
	var raw *jetstream.RawStreamMsg
	testutil.WaitFor(t, wait, "mail.bad", func() bool {
		var err error
		raw, err = h.stream.GetLastMsgForSubject(t.Context(), bus.SubjBad)
		return err == nil
	})
	if r := raw.Header.Get(envelope.HdrReason); !strings.Contains(r, "undecodable envelope") {
		t.Errorf("reason %q", r)
	}
	h.waitEmpty()
}

func TestCrashWindowGuard(t *testing.T) {
	h := newHarness(t)
	svc, err := New(h.cfg, testutil.Logger(t), h.js)
	if err != nil {
		t.Fatal(err)
	}
	svc.stream = h.stream
	env := newEnv("guard.test", "x@guard.test")
	env.Attempt = 2
	if svc.alreadyRescheduled(t.Context(), "guard_test", env) {
		t.Error("guard fired with no schedule")
	}
	next := env.Clone()
	next.Attempt = 3
	msg, err := next.Msg(bus.Defer("guard_test", env.QueueID), sampleBody)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(t.Context(), h.js, msg, "guard.a3",
		jetstream.WithScheduleAt(time.Now().Add(time.Hour)), jetstream.WithScheduleTarget(bus.Out("guard_test"))); err != nil {
		t.Fatal(err)
	}
	if !svc.alreadyRescheduled(t.Context(), "guard_test", env) {
		t.Error("guard missed a newer schedule")
	}
	env.Attempt = 3
	if svc.alreadyRescheduled(t.Context(), "guard_test", env) {
		t.Error("guard fired for the schedule's own attempt")
	}
}

func TestRetryAt(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC)
	for range 100 {
		at := retryAt(now, 15*time.Minute, now.Add(48*time.Hour), 0.1)
		if at.Before(now.Add(13*time.Minute+30*time.Second)) || at.After(now.Add(16*time.Minute+31*time.Second)) {
			t.Fatalf("at %v outside ±10%%", at.Sub(now))
		}
		if at.Nanosecond() != 0 {
			t.Fatalf("at %v not on a whole second", at)
		}
	}
	if at := retryAt(now, time.Hour, now.Add(time.Minute), 0.1); !at.Equal(now.Add(time.Minute).Truncate(time.Second).Add(time.Second)) {
		t.Errorf("not capped at expiry: %v", at.Sub(now))
	}
	if at := retryAt(now, time.Hour, now.Add(-time.Minute), 0.1); at.Before(now.Add(time.Second)) {
		t.Errorf("less than a second ahead: %v", at.Sub(now))
	}
}

func TestErrorText(t *testing.T) {
	for _, tc := range []struct {
		e    *Error
		want string
	}{
		{&Error{Code: 550, Enhanced: "5.1.1", Message: "user unknown", Remote: "mx.example[192.0.2.1]", Permanent: true}, "550 5.1.1 user unknown (mx.example[192.0.2.1])"},
		{&Error{Code: 421, Message: "bye"}, "421 bye"},
		{permErr("5.1.10", "", "domain %s does not accept mail (null MX)", "x.test"), "5.1.10 domain x.test does not accept mail (null MX)"},
		{replyErr(&smtp.SMTPError{Code: 554, Message: "no\nway"}, "h[1.2.3.4]", "RCPT"), "554 no way (h[1.2.3.4])"},
		{parseReply(451, "4.3.2 shutting down", ""), "451 4.3.2 shutting down"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
	if !replyErr(&smtp.SMTPError{Code: 550}, "", "x").Permanent || replyErr(&smtp.SMTPError{Code: 450}, "", "x").Permanent {
		t.Error("classification by code is wrong")
	}
	if replyErr(io.ErrUnexpectedEOF, "", "DATA").Permanent {
		t.Error("a network error is permanent")
	}
}

// tlsBackend records whether each transaction ran over TLS.
type tlsBackend struct {
	sink *testutil.Sink
	mu   sync.Mutex
	tls  []bool
}

func (b *tlsBackend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	s, err := b.sink.NewSession(c)
	_, isTLS := c.TLSConnectionState()
	return &tlsSession{Session: s, b: b, tls: isTLS}, err
}

type tlsSession struct {
	smtp.Session
	b   *tlsBackend
	tls bool
}

func (s *tlsSession) Data(r io.Reader) error {
	s.b.mu.Lock()
	s.b.tls = append(s.b.tls, s.tls)
	s.b.mu.Unlock()
	return s.Session.Data(r)
}

func (b *tlsBackend) transactions() []bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.tls)
}

// serveSMTP runs a go-smtp server for be on 127.0.0.1 until the test ends
// (edit may change its settings first) and returns its port.
func serveSMTP(t *testing.T, be smtp.Backend, edit func(*smtp.Server)) int {
	t.Helper()
	srv := smtp.NewServer(be)
	srv.Domain = "mx.test"
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	if edit != nil {
		edit(srv)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

// selfSigned is a certificate for names (default mx.tls.test) signed by
// itself: unverifiable unless trusted (trust).
func selfSigned(t *testing.T, names ...string) tls.Certificate {
	t.Helper()
	if len(names) == 0 {
		names = []string{"mx.tls.test"}
	}
	return testutil.SelfSigned(t, names...)
}

// trust makes delivery verify remote certificates against cert alone
// (delivery.tls_ca_file).
func (h *harness) trust(cert tls.Certificate) {
	h.t.Helper()
	path := filepath.Join(h.t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o644); err != nil {
		h.t.Fatal(err)
	}
	h.cfg.Delivery.TLSCAFile = path
}

func TestOpportunisticTLS(t *testing.T) {
	for _, tc := range []struct {
		name    string
		tls     func(t *testing.T) *tls.Config
		wantTLS bool
	}{
		{"handshake ok", func(t *testing.T) *tls.Config {
			return &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}
		}, true},
		{"handshake fails, plain text fallback", func(*testing.T) *tls.Config {
			return &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
				return nil, errors.New("no certificate today")
			}}
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &tlsBackend{sink: &testutil.Sink{}}
			port := serveSMTP(t, b, func(srv *smtp.Server) { srv.TLSConfig = tc.tls(t) })
			h := newHarness(t, "tls.test. MX 10 mx.tls.test.", "mx.tls.test. A 127.0.0.1")
			h.cfg.Delivery.Port = port
			var dials atomic.Int32
			h.start(func(s *Service) {
				dial := s.Dial
				s.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
					dials.Add(1)
					return dial(ctx, network, addr)
				}
			})
			h.publishOut(newEnv("tls.test", "x@tls.test"), sampleBody)
			testutil.WaitFor(t, wait, "delivery", func() bool { return b.sink.Count() == 1 })
			wantDials := int32(1)
			if !tc.wantTLS {
				wantDials = 2 // the failed handshake, then a fresh plain connection
			}
			if n := dials.Load(); n != wantDials {
				t.Errorf("%d connections, want %d", n, wantDials)
			}
			if got := b.transactions(); !slices.Equal(got, []bool{tc.wantTLS}) {
				t.Errorf("transactions over TLS: %v, want [%v]", got, tc.wantTLS)
			}
			if m := b.sink.Mails()[0]; !bytes.Equal(m.Data, sampleBody) || m.Helo != "mailroot.test" {
				t.Errorf("data %q helo %q", m.Data, m.Helo)
			}
			h.waitEmpty()
		})
	}
}

func TestDropWritesExactBytes(t *testing.T) {
	h := newHarness(t)
	h.cfg.Drop.EnvelopeLines = false
	h.start(nil)
	for _, body := range [][]byte{sampleBody, []byte("Subject: no final newline\r\n\r\nabc")} {
		env := newEnv("", "User@Local.Test")
		h.publish(bus.SubjDrop, env, body)
		path := filepath.Join(h.cfg.DropDir(), "local.test", env.QueueID+".eml")
		testutil.WaitFor(t, wait, "the drop file", func() bool { _, err := os.Stat(path); return err == nil })
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, body) {
			t.Errorf("drop file:\n%q\nwant\n%q", got, body)
		}
	}
	h.waitEmpty()
	entries, _ := os.ReadDir(filepath.Join(h.cfg.DropDir(), "local.test"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
}

func TestDropUnsafeDomainToBadmail(t *testing.T) {
	h := newHarness(t)
	h.start(nil)
	env := newEnv("..", "x@example.test")
	h.publish(bus.SubjDrop, env, sampleBody)
	var raw *jetstream.RawStreamMsg
	testutil.WaitFor(t, wait, "mail.bad", func() bool {
		var err error
		raw, err = h.stream.GetLastMsgForSubject(t.Context(), bus.SubjBad)
		return err == nil
	})
	if r := raw.Header.Get(envelope.HdrReason); !strings.Contains(r, "cannot be a directory name") {
		t.Errorf("reason %q", r)
	}
}
