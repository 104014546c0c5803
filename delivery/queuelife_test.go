package delivery

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/dsn"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
)

// inbox collects what delivery publishes to mail.in: notifications.
type inbox struct {
	h  *harness
	ch chan *nats.Msg
}

func (h *harness) watchIn() *inbox {
	h.t.Helper()
	in := &inbox{h: h, ch: make(chan *nats.Msg, 64)}
	sub, err := h.nc.ChanSubscribe(bus.SubjIn, in.ch)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := h.nc.Flush(); err != nil {
		h.t.Fatal(err)
	}
	return in
}

// notice is one notification found on mail.in.
type notice struct {
	env *envelope.Envelope
	raw []byte
	p   *dsn.Parsed
}

// next waits for the next notification.
func (in *inbox) next() notice {
	in.h.t.Helper()
	var m *nats.Msg
	select {
	case m = <-in.ch:
	case <-time.After(wait):
		in.h.t.Fatal("no notification on mail.in")
	}
	env, err := envelope.Decode(m.Header)
	if err != nil {
		in.h.t.Fatalf("notification envelope: %v", err)
	}
	raw := m.Data
	if env.Body == envelope.BodyObject {
		bodies, err := bus.OpenBodies(in.h.t.Context(), in.h.js)
		if err != nil {
			in.h.t.Fatal(err)
		}
		r, err := bodies.Open(in.h.t.Context(), env, nil)
		if err != nil {
			in.h.t.Fatalf("notification body: %v", err)
		}
		raw, _ = io.ReadAll(r)
		_ = r.Close()
	}
	p, err := dsn.Parse(bytes.NewReader(raw))
	if err != nil {
		in.h.t.Fatalf("notification does not parse: %v\n%s", err, raw)
	}
	return notice{env: env, raw: raw, p: p}
}

// none checks that no (further) notification was published; call it after
// the queue drained.
func (in *inbox) none() {
	in.h.t.Helper()
	if err := in.h.nc.Flush(); err != nil {
		in.h.t.Fatal(err)
	}
	if n := len(in.ch); n > 0 {
		m := <-in.ch
		in.h.t.Errorf("%d unexpected notification(s), the first: %s\n%s", n, m.Header.Get(envelope.HdrMsgID), m.Data)
	}
}

// mimeReport reads a report with the standard library only (not with our
// own dsn.Parse): the top header, the parts' types and bodies, and the
// delivery-status blocks as MIME headers.
func mimeReport(t *testing.T, raw []byte) (mail.Header, []string, [][]byte, []textproto.MIMEHeader) {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("Content-Type %q (%v)", msg.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	var types []string
	var bodies [][]byte
	var blocks []textproto.MIMEHeader
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(p)
		if err != nil {
			t.Fatal(err)
		}
		ct, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		types, bodies = append(types, ct), append(bodies, b)
		if ct == "message/delivery-status" {
			tr := textproto.NewReader(bufio.NewReader(bytes.NewReader(b)))
			for {
				h, err := tr.ReadMIMEHeader()
				if len(h) > 0 {
					blocks = append(blocks, h)
				}
				if err != nil {
					break
				}
			}
		}
	}
	return msg.Header, types, bodies, blocks
}

// A 550 for one of two recipients: the other is delivered, the sender gets
// an RFC 3464 report with every field right, checked with a MIME parser.
func TestNDRFor550(t *testing.T) {
	h := newHarness(t, "part.test. MX 10 mx.part.test.", "mx.part.test. A 127.0.0.1")
	h.sink.RcptFunc = func(to string) error {
		if to == "nobody@part.test" {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "user unknown"}
		}
		return nil
	}
	in := h.watchIn()
	h.start(nil)
	start := time.Now().Truncate(time.Second)
	env := newEnv("part.test", "nobody@part.test", "somebody@part.test")
	env.EnvID = "env+2B42"
	env.Rcpts[0].ORcpt = "rfc822;Nobody+2Bx@part.test"
	env.Helo = "client.origin.test"
	h.publishOut(env, sampleBody)
	if m := h.waitMails(1)[0]; !slices.Equal(m.To, []string{"somebody@part.test"}) {
		t.Errorf("delivered to %v", m.To)
	}
	n := in.next()

	wantID := env.QueueID + ".part_test.dsn1"
	if n.env.From != "" || !slices.Equal(n.env.Addrs(), []string{env.From}) || n.env.MsgID != wantID ||
		n.env.QueueID != envelope.QueueIDFor(wantID) || n.env.Source != dsn.Source {
		t.Errorf("report envelope: from %q to %v msgid %q qid %q source %q", n.env.From, n.env.Addrs(), n.env.MsgID, n.env.QueueID, n.env.Source)
	}
	hdr, types, parts, blocks := mimeReport(t, n.raw)
	for k, want := range map[string]string{
		"From":           "Mail Delivery System <MAILER-DAEMON@mailroot.test>",
		"To":             "<sender@origin.test>",
		"Subject":        "Undeliverable: hi",
		"Auto-Submitted": "auto-replied",
		"Message-Id":     "<" + n.env.QueueID + "@mailroot.test>",
	} {
		if got := hdr.Get(k); got != want {
			t.Errorf("header %s: %q, want %q", k, got, want)
		}
	}
	if want := []string{"text/plain", "message/delivery-status", "message/rfc822"}; !slices.Equal(types, want) {
		t.Fatalf("parts %v, want %v", types, want)
	}
	for _, want := range []string{"<nobody@part.test>", "550 5.1.1 user unknown", "mx.part.test[127.0.0.1]", env.QueueID, "Check it for typing errors"} {
		if !bytes.Contains(parts[0], []byte(want)) {
			t.Errorf("human-readable part does not mention %q:\n%s", want, parts[0])
		}
	}
	if len(blocks) != 2 {
		t.Fatalf("%d delivery-status blocks, want 2 (message, one recipient): %v", len(blocks), blocks)
	}
	msgFields, rc := blocks[0], blocks[1]
	for k, want := range map[string]string{
		"Reporting-Mta":        "dns; mailroot.test",
		"Original-Envelope-Id": "env+42",
		"Received-From-Mta":    "dns; client.origin.test",
		"Arrival-Date":         env.ReceivedAt.Format("Mon, 02 Jan 2006 15:04:05 -0700"),
	} {
		if got := msgFields.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	for k, want := range map[string]string{
		"Final-Recipient":    "rfc822; nobody@part.test",
		"Original-Recipient": "rfc822;Nobody+x@part.test",
		"Action":             "failed",
		"Status":             "5.1.1",
		"Remote-Mta":         "dns; mx.part.test",
		"Diagnostic-Code":    "smtp; 550 5.1.1 user unknown",
		"Will-Retry-Until":   "",
	} {
		if got := rc.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	last, err := mail.ParseDate(rc.Get("Last-Attempt-Date"))
	if err != nil || last.Before(start) || last.After(time.Now()) {
		t.Errorf("Last-Attempt-Date %q (%v)", rc.Get("Last-Attempt-Date"), err)
	}
	if !bytes.Equal(parts[2], sampleBody) {
		t.Errorf("returned message %q, want the original", parts[2])
	}
	h.waitEmpty()
	in.none()
	if _, err := h.stream.GetLastMsgForSubject(t.Context(), bus.SubjBad); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Errorf("something went to mail.bad: %v", err)
	}
}

// NOTIFY and RET decide whether a report goes out and what it carries.
func TestNDRHonoursNotifyAndRet(t *testing.T) {
	for _, tc := range []struct {
		name     string
		notify   []string
		ret      string
		wantNDR  bool
		wantType string
	}{
		{"default", nil, "", true, dsn.TypeMessage},
		{"NOTIFY=NEVER", []string{"NEVER"}, "", false, ""},
		{"NOTIFY=SUCCESS", []string{"SUCCESS"}, "", false, ""},
		{"NOTIFY=DELAY", []string{"DELAY"}, "", false, ""},
		{"NOTIFY=FAILURE", []string{"FAILURE"}, "", true, dsn.TypeMessage},
		{"RET=FULL", nil, "FULL", true, dsn.TypeMessage},
		{"RET=HDRS", []string{"SUCCESS", "FAILURE"}, "HDRS", true, dsn.TypeHeaders},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, "rej.test. MX 10 mx.rej.test.", "mx.rej.test. A 127.0.0.1")
			h.sink.RcptFunc = func(string) error {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "go away"}
			}
			in := h.watchIn()
			h.start(nil)
			env := newEnv("rej.test", "x@rej.test")
			env.Ret = tc.ret
			env.Rcpts[0].Notify = tc.notify
			h.publishOut(env, sampleBody)
			if tc.wantNDR {
				n := in.next()
				if n.p.OriginalType != tc.wantType {
					t.Errorf("returned part %q, want %q", n.p.OriginalType, tc.wantType)
				}
				want := sampleBody
				if tc.wantType == dsn.TypeHeaders {
					want = sampleBody[:bytes.Index(sampleBody, []byte("\r\n\r\n"))+2]
					if !strings.Contains(n.p.Text, "RET=HDRS") {
						t.Errorf("text does not say why only headers came back:\n%s", n.p.Text)
					}
				}
				if !bytes.Equal(n.p.Original, want) {
					t.Errorf("returned %q, want %q", n.p.Original, want)
				}
				if rc := n.p.Report.Recipients[0]; rc.Status != "5.7.1" || rc.Action != dsn.ActionFailed {
					t.Errorf("recipient %+v", rc)
				}
			}
			h.waitEmpty()
			in.none()
			if _, err := h.stream.GetLastMsgForSubject(t.Context(), bus.SubjBad); !errors.Is(err, jetstream.ErrMsgNotFound) {
				t.Errorf("something went to mail.bad: %v", err)
			}
		})
	}
}

// Local failures (DNS, loops) are reported with Mailroot's own diagnostic.
func TestNDRForResolveFailures(t *testing.T) {
	for _, tc := range []struct {
		name, domain string
		zone         []string
		want         string
	}{
		{"null MX", "nullmx.test", []string{"nullmx.test. MX 0 ."}, "5.1.10 domain nullmx.test does not accept mail (null MX)"},
		{"NXDOMAIN", "nowhere.test", nil, "5.1.2 domain nowhere.test does not exist"},
		{"no records", "empty.test", []string{"empty.test. TXT \"hello\""}, "5.1.2 domain empty.test has no MX or address records"},
		{"MX is my host name", "loop.test", []string{"loop.test. MX 10 MailRoot.test.", "loop.test. MX 20 backup.loop.test.", "mailroot.test. A 127.0.0.1"},
			"5.4.6 mail for loop.test loops back to myself: MX host mailroot.test is this server's own host name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.zone...)
			in := h.watchIn()
			h.start(nil)
			env := newEnv(tc.domain, "x@"+tc.domain)
			h.publishOut(env, sampleBody)
			n := in.next()
			rc := n.p.Report.Recipients[0]
			if rc.DiagnosticCode != "X-Mailroot; "+tc.want || rc.Status != strings.Fields(tc.want)[0] || rc.RemoteMTA != "" || rc.FinalRecipient != env.Rcpts[0].Addr {
				t.Errorf("recipient %+v, want diagnostic %q", rc, tc.want)
			}
			if !strings.Contains(n.p.Text, tc.want) {
				t.Errorf("text does not give the reason %q:\n%s", tc.want, n.p.Text)
			}
			h.waitEmpty()
			if h.sink.Transactions() != 0 {
				t.Error("the sink was contacted")
			}
		})
	}
}

// Mail whose destination is this server itself fails with 5.4.6 and says
// which domain, host and address point back here; a more preferred MX that
// is down makes it a temporary failure instead.
func TestMailToSelf(t *testing.T) {
	for _, tc := range []struct {
		name     string
		hostname string
		listen   func(port int) string
		zone     []string
		want     func(port int) string // "" = deferred, not bounced
	}{
		{"MX address is a listen address", "mailroot.test", func(p int) string { return fmt.Sprintf("127.0.0.1:%d", p) },
			[]string{"self.test. MX 10 mx.self.test.", "mx.self.test. A 127.0.0.1"},
			func(p int) string {
				return fmt.Sprintf("5.4.6 mail for self.test loops back to myself: MX host mx.self.test has address 127.0.0.1, where this server listens (ingress.listen 127.0.0.1:%d)", p)
			}},
		{"listening on all addresses", "mailroot.test", func(p int) string { return fmt.Sprintf("0.0.0.0:%d", p) },
			[]string{"self.test. MX 10 mx.self.test.", "mx.self.test. A 127.0.0.1"},
			func(p int) string {
				return fmt.Sprintf("5.4.6 mail for self.test loops back to myself: MX host mx.self.test has address 127.0.0.1, an address of this machine, where this server listens on all addresses (ingress.listen 0.0.0.0:%d)", p)
			}},
		{"MX address is the host name's", "me.self.test", func(p int) string { return fmt.Sprintf("127.0.0.9:%d", p) },
			[]string{"self.test. MX 10 mx.self.test.", "mx.self.test. A 127.0.0.1", "me.self.test. A 127.0.0.1"},
			func(p int) string {
				return fmt.Sprintf("5.4.6 mail for self.test loops back to myself: MX host mx.self.test has address 127.0.0.1, an address of this server's host name me.self.test, and this server listens on port %d", p)
			}},
		{"no MX, the domain's address", "mailroot.test", func(p int) string { return fmt.Sprintf("127.0.0.1:%d", p) },
			[]string{"self.test. A 127.0.0.1"},
			func(p int) string {
				return fmt.Sprintf("5.4.6 mail for self.test loops back to myself: mail host self.test has address 127.0.0.1, where this server listens (ingress.listen 127.0.0.1:%d)", p)
			}},
		{"more preferred MX down", "mailroot.test", func(p int) string { return fmt.Sprintf("127.0.0.1:%d", p) },
			[]string{"self.test. MX 10 mx1.self.test.", "self.test. MX 20 mx.self.test.", "mx1.self.test. A 127.0.0.2", "mx.self.test. A 127.0.0.1"},
			nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.zone...)
			h.cfg.Hostname = tc.hostname
			h.cfg.Ingress.Listen = []string{tc.listen(h.sink.Port)}
			in := h.watchIn()
			h.start(nil)
			env := newEnv("self.test", "x@self.test")
			h.publishOut(env, sampleBody)
			if tc.want == nil {
				var raw *jetstream.RawStreamMsg
				testutil.WaitFor(t, wait, "a retry schedule", func() bool {
					var err error
					raw, err = h.stream.GetLastMsgForSubject(t.Context(), bus.Defer("self_test", env.QueueID))
					return err == nil
				})
				next, err := envelope.Decode(raw.Header)
				if err != nil {
					t.Fatal(err)
				}
				if !strings.HasPrefix(next.LastError, "4.4.1 connect:") {
					t.Errorf("deferred with %q, want the more preferred MX's connect error", next.LastError)
				}
			} else {
				n := in.next()
				want := tc.want(h.sink.Port)
				rc := n.p.Report.Recipients[0]
				if rc.Status != "5.4.6" || rc.DiagnosticCode != "X-Mailroot; "+want {
					t.Errorf("status %s diagnostic %q, want %q", rc.Status, rc.DiagnosticCode, want)
				}
				if !strings.Contains(n.p.Text, "went round in a loop") {
					t.Errorf("text has no loop advice:\n%s", n.p.Text)
				}
				h.waitEmpty()
			}
			if n := h.sink.Transactions(); n != 0 {
				t.Errorf("%d transactions with ourselves", n)
			}
		})
	}
}

// Mail from the null sender is never answered: its failures go to
// Badmail, a failed notification as a double bounce.
func TestNullSenderFailureToBadmail(t *testing.T) {
	for _, tc := range []struct{ source, want string }{
		{"smtp", "undeliverable mail from the null sender <>, which cannot be returned: 550 5.1.1 user unknown (mx.nb.test[127.0.0.1])"},
		{dsn.Source, "double bounce: this delivery status notification could not be delivered: 550 5.1.1 user unknown (mx.nb.test[127.0.0.1])"},
	} {
		t.Run(tc.source, func(t *testing.T) {
			h := newHarness(t, "nb.test. MX 10 mx.nb.test.", "mx.nb.test. A 127.0.0.1")
			h.sink.RcptFunc = func(string) error {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "user unknown"}
			}
			in := h.watchIn()
			h.start(nil)
			env := newEnv("nb.test", "x@nb.test")
			env.From, env.Source = "", tc.source
			h.publishOut(env, sampleBody)
			bad, data := h.bad()
			if bad.Reason != tc.want {
				t.Errorf("reason %q, want %q", bad.Reason, tc.want)
			}
			if bad.Remote != "mx.nb.test[127.0.0.1]" || bad.Attempt != 1 || !bytes.Equal(data, sampleBody) || bad.MsgID != env.QueueID+".nb_test.bad1" {
				t.Errorf("bad copy: remote %q attempt %d msgid %q data %d bytes", bad.Remote, bad.Attempt, bad.MsgID, len(data))
			}
			h.waitEmpty()
			in.none()
		})
	}
}

// ndr_copy_to gets every non-delivery report, as a second recipient.
func TestNDRCopyToAdmin(t *testing.T) {
	h := newHarness(t, "rej.test. MX 10 mx.rej.test.", "mx.rej.test. A 127.0.0.1")
	h.cfg.Delivery.NDRCopyTo = "postmaster@admin.test"
	h.sink.RcptFunc = func(string) error {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "user unknown"}
	}
	in := h.watchIn()
	h.start(nil)
	h.publishOut(newEnv("rej.test", "x@rej.test"), sampleBody)
	n := in.next()
	if want := []string{"sender@origin.test", "postmaster@admin.test"}; !slices.Equal(n.env.Addrs(), want) {
		t.Errorf("report goes to %v, want %v", n.env.Addrs(), want)
	}
	if got := n.p.Header.Get("To"); got != "<sender@origin.test>" {
		t.Errorf("To: %q", got)
	}
}

// On a compressed clock: attempts follow the retry ladder, one delay
// notice goes out after delay_notice, and expiry ends in a report.
func TestRetryLadderDelayNoticeExpiry(t *testing.T) {
	h := newHarness(t, "slow.test. MX 10 mx.slow.test.", "mx.slow.test. A 127.0.0.1")
	h.cfg.Delivery.Retry = []config.Duration{config.Duration(time.Second), config.Duration(3 * time.Second), config.Duration(6 * time.Second)}
	h.cfg.Delivery.RetryJitter = 0
	h.cfg.Delivery.DelayNotice = config.Duration(4 * time.Second)
	var mu sync.Mutex
	var tries []time.Time
	h.sink.RcptFunc = func(string) error {
		mu.Lock()
		tries = append(tries, time.Now())
		mu.Unlock()
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "try later"}
	}
	in := h.watchIn()
	h.start(nil)
	env := newEnv("slow.test", "x@slow.test")
	env.ExpiresAt = env.ReceivedAt.Add(16 * time.Second)
	h.publishOut(env, sampleBody)

	delay := in.next()
	if delay.env.MsgID != env.QueueID+".slow_test.delay" {
		t.Errorf("first notice %q, want the delay notice", delay.env.MsgID)
	}
	rc := delay.p.Report.Recipients[0]
	if rc.Action != dsn.ActionDelayed || rc.Status != "4.7.1" || rc.DiagnosticCode != "smtp; 451 4.7.1 try later" ||
		!rc.WillRetryUntil.Equal(env.ExpiresAt.Truncate(time.Second)) || rc.RemoteMTA != "mx.slow.test" {
		t.Errorf("delay notice recipient %+v", rc)
	}
	if !strings.Contains(delay.p.Text, "warning only") || delay.p.OriginalType != dsn.TypeHeaders {
		t.Errorf("delay notice: returned %s, text:\n%s", delay.p.OriginalType, delay.p.Text)
	}
	final := in.next()
	if final.env.MsgID != fmt.Sprintf("%s.slow_test.dsn%d", env.QueueID, len(tries)) {
		t.Errorf("second notice %q after %d attempts", final.env.MsgID, len(tries))
	}
	rc = final.p.Report.Recipients[0]
	if rc.Action != dsn.ActionFailed || rc.Status != "4.4.7" || rc.DiagnosticCode != "smtp; 451 4.7.1 try later" || !rc.WillRetryUntil.IsZero() {
		t.Errorf("expiry report recipient %+v", rc)
	}
	if !strings.Contains(final.p.Text, "expired") {
		t.Errorf("expiry report text:\n%s", final.p.Text)
	}
	h.waitEmpty()
	in.none()

	// The mail log: a deferred event per attempt with its next attempt,
	// then expired and bounced with the expiry report.
	var types []string
	testutil.WaitFor(t, wait, "expiry events", func() bool {
		types = types[:0]
		err := bus.ReadEvents(t.Context(), h.js, bus.EventFilter{QueueID: env.QueueID}, false, func(e bus.Event) error {
			types = append(types, fmt.Sprintf("%s%d", e.Type, e.Attempt))
			if e.Type == bus.EventDeferred && (e.NextAttempt.IsZero() || e.MX != "mx.slow.test") {
				t.Errorf("deferred event %+v", e)
			}
			if e.Type == bus.EventBounced && e.ReportQID != final.env.QueueID {
				t.Errorf("bounced event %+v, want report %s", e, final.env.QueueID)
			}
			return nil
		})
		return err == nil && len(types) == 6
	})
	if got := strings.Join(types, " "); got != "deferred1 deferred2 deferred3 deferred4 expired5 bounced5" {
		t.Errorf("events %s", got)
	}

	mu.Lock()
	defer mu.Unlock()
	if len(tries) != 5 {
		t.Fatalf("%d attempts, want 5 (0, +1 s, +3 s, +6 s, expiry at 16 s): %v", len(tries), tries)
	}
	// Each wait is at least its ladder step; schedules fire on whole
	// seconds, about a second late at most, so allow 2.5 s on top (more
	// under load).
	for i, step := range []time.Duration{time.Second, 3 * time.Second, 6 * time.Second} {
		got := tries[i+1].Sub(tries[i])
		if got < step-100*time.Millisecond || got > step+5*time.Second {
			t.Errorf("wait before attempt %d: %v, want the ladder step %v", i+2, got, step)
		}
	}
	if last := tries[4]; last.Before(env.ExpiresAt) {
		t.Errorf("last attempt %v before expiry %v", last, env.ExpiresAt)
	}
}

// NOTIFY=SUCCESS: a server without DSN gets the mail and we report
// "relayed"; a server with DSN gets NOTIFY passed on and reports itself.
func TestSuccessNotice(t *testing.T) {
	for _, withDSN := range []bool{false, true} {
		t.Run(fmt.Sprintf("remote DSN %v", withDSN), func(t *testing.T) {
			sink := &testutil.Sink{}
			port := serveSMTP(t, sink, func(srv *smtp.Server) { srv.EnableDSN = withDSN })
			h := newHarness(t, "ok.test. MX 10 mx.ok.test.", "mx.ok.test. A 127.0.0.1")
			h.cfg.Delivery.Port = port
			in := h.watchIn()
			h.start(nil)
			env := newEnv("ok.test", "x@ok.test", "quiet@ok.test")
			env.Rcpts[0].Notify = []string{"SUCCESS", "FAILURE"}
			h.publishOut(env, sampleBody)
			testutil.WaitFor(t, wait, "delivery", func() bool { return sink.Count() == 1 })
			m := sink.Mails()[0]
			if withDSN {
				if !slices.Equal(m.RcptOpts[0].Notify, []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure}) {
					t.Errorf("NOTIFY not passed on: %+v", m.RcptOpts[0])
				}
				h.waitEmpty()
				in.none()
				return
			}
			n := in.next()
			if len(n.p.Report.Recipients) != 1 {
				t.Fatalf("notice about %d recipients, want only the one with NOTIFY=SUCCESS", len(n.p.Report.Recipients))
			}
			rc := n.p.Report.Recipients[0]
			if rc.FinalRecipient != "x@ok.test" || rc.Action != dsn.ActionRelayed || rc.Status != "2.0.0" || rc.RemoteMTA != "mx.ok.test" ||
				!strings.HasPrefix(rc.DiagnosticCode, "smtp; 250 ") {
				t.Errorf("recipient %+v", rc)
			}
			if n.p.Header.Get("Subject") != "Relayed: hi" || n.p.OriginalType != dsn.TypeHeaders || len(n.env.Rcpts) != 1 {
				t.Errorf("subject %q, returned %s, to %v", n.p.Header.Get("Subject"), n.p.OriginalType, n.env.Addrs())
			}
			h.waitEmpty()
			in.none()
		})
	}
}

// A large original comes back whole in the report (itself in the Object
// Store) unless it is over ndr_return_limit; the original body is released
// either way.
func TestNDRWithLargeOriginal(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit int64
		full  bool
	}{
		{"returned whole", 10 << 20, true},
		{"over the limit", 100 << 10, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, "big.test. MX 10 mx.big.test.", "mx.big.test. A 127.0.0.1")
			h.cfg.Delivery.NDRReturnLimit = tc.limit
			h.sink.RcptFunc = func(string) error {
				return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 2, 2}, Message: "mailbox full"}
			}
			in := h.watchIn()
			h.start(nil)
			bodies, err := bus.OpenBodies(t.Context(), h.js)
			if err != nil {
				t.Fatal(err)
			}
			body := append([]byte("Subject: big\r\n\r\n"), bytes.Repeat([]byte("0123456789 abcdefghijklmnopqrstuvwxyz\r\n"), 5000)...)
			env := newEnv("big.test", "x@big.test")
			if _, err := bodies.Put(t.Context(), env.QueueID, bytes.NewReader(body)); err != nil {
				t.Fatal(err)
			}
			env.Body, env.BodySize = envelope.BodyObject, int64(len(body))
			h.publishOut(env, nil)
			n := in.next()
			if tc.full {
				if n.env.Body != envelope.BodyObject || n.p.OriginalType != dsn.TypeMessage || !bytes.Equal(n.p.Original, body) {
					t.Errorf("report body %s, returned %s of %d bytes", n.env.Body, n.p.OriginalType, len(n.p.Original))
				}
			} else if n.env.Body != envelope.BodyInline || n.p.OriginalType != dsn.TypeHeaders || string(n.p.Original) != "Subject: big\r\n" ||
				!strings.Contains(n.p.Text, "larger than 102400 bytes") {
				t.Errorf("report body %s, returned %s %q, text:\n%s", n.env.Body, n.p.OriginalType, n.p.Original, n.p.Text)
			}
			h.waitEmpty()
			testutil.WaitFor(t, wait, "the original body to be released", func() bool {
				_, err := bodies.Open(t.Context(), env, nil)
				return errors.Is(err, jetstream.ErrObjectNotFound)
			})
		})
	}
}

// A body shared by a Badmail copy (null sender) and a retry must outlive
// the delivery of the retry, until Badmail releases it too.
func TestObjectStoreBodySharedBySuccessors(t *testing.T) {
	h := newHarness(t, "share.test. MX 10 mx.share.test.", "mx.share.test. A 127.0.0.1")
	var mu sync.Mutex
	tries := 0
	h.sink.RcptFunc = func(to string) error {
		switch to {
		case "gone@share.test":
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "user unknown"}
		case "busy@share.test":
			mu.Lock()
			defer mu.Unlock()
			if tries++; tries == 1 {
				return &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "busy"}
			}
		}
		return nil
	}
	h.start(nil)
	bodies, err := bus.OpenBodies(t.Context(), h.js)
	if err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("shared body line\r\n"), 5000)
	env := newEnv("share.test", "gone@share.test", "busy@share.test")
	env.From = ""
	if _, err := bodies.Put(t.Context(), env.QueueID, bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	env.Body, env.BodySize = envelope.BodyObject, int64(len(body))
	h.publishOut(env, nil)

	bad, data := h.bad()
	if len(data) != 0 || bad.Body != envelope.BodyObject || !slices.Equal(bad.Addrs(), []string{"gone@share.test"}) {
		t.Errorf("bad copy: body %q, %d data bytes, rcpts %v", bad.Body, len(data), bad.Addrs())
	}
	if m := h.waitMails(1)[0]; !bytes.Equal(m.Data, body) || !slices.Equal(m.To, []string{"busy@share.test"}) {
		t.Errorf("retry delivered %d bytes to %v", len(m.Data), m.To)
	}
	h.waitEmpty()
	// The retry releases its reference after its ack, so the stream can be
	// empty a moment before the count drops to the Badmail copy's one.
	testutil.WaitFor(t, wait, "the retry to release its reference", func() bool {
		n, err := bodies.References(t.Context(), bad)
		return err == nil && n == 1
	})
	// The retry is done; the Badmail copy still needs the body.
	r, err := bodies.Open(t.Context(), bad, nil)
	if err != nil {
		t.Fatalf("body gone while the Badmail copy refers to it: %v", err)
	}
	got, _ := io.ReadAll(r)
	_ = r.Close()
	if !bytes.Equal(got, body) {
		t.Error("body changed")
	}
	if err := bodies.Release(t.Context(), bad); err != nil {
		t.Fatal(err)
	}
	if _, err := bodies.Open(t.Context(), bad, nil); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Errorf("body still there after the last release: %v", err)
	}
}

// A message that keeps killing or failing its workers is moved to mail.bad
// with the reason before the consumer's MaxDeliver, instead of sitting
// unseen in the WorkQueue stream.
func TestPoisonMessageToBadmail(t *testing.T) {
	h := newHarness(t, "poison.test. MX 10 mx.poison.test.", "mx.poison.test. A 127.0.0.1")
	env := newEnv("poison.test", "x@poison.test")
	h.publishOut(env, sampleBody)
	// Workers that took the message and died without settling it.
	cons, err := bus.EnsureConsumer(t.Context(), h.js, bus.ConsumerDelivery, 1)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < bus.MaxDeliver-2; i++ {
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			_ = m.Nak()
		}
	}
	h.start(nil)
	bad, _ := h.bad()
	if !strings.Contains(bad.Reason, "poison message") || bad.QueueID != env.QueueID {
		t.Errorf("reason %q qid %s", bad.Reason, bad.QueueID)
	}
	h.waitEmpty()
	if n := h.sink.Transactions(); n != 0 {
		t.Errorf("poison message delivered (%d transactions)", n)
	}
}

// A failed Drop write is retried on the ladder through a schedule into
// mail.drop, and written once the directory is fixed.
func TestDropWriteErrorRetried(t *testing.T) {
	h := newHarness(t)
	// A regular file where the domain directory should be: MkdirAll fails
	// even for root.
	if err := os.MkdirAll(h.cfg.DropDir(), 0o750); err != nil {
		t.Fatal(err)
	}
	obstacle := filepath.Join(h.cfg.DropDir(), "blocked.test")
	if err := os.WriteFile(obstacle, []byte("in the way"), 0o640); err != nil {
		t.Fatal(err)
	}
	h.cfg.Drop.EnvelopeLines = false
	h.cfg.Delivery.Retry = []config.Duration{config.Duration(2 * time.Second)}
	schedules := make(chan *nats.Msg, 10)
	sub, err := h.nc.ChanSubscribe("mail.defer.>", schedules)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	h.start(nil)
	env := newEnv("blocked.test", "x@blocked.test")
	h.publish(bus.SubjDrop, env, sampleBody)

	var sm *nats.Msg
	select {
	case sm = <-schedules:
	case <-time.After(wait):
		t.Fatal("no retry schedule")
	}
	next, err := envelope.Decode(sm.Header)
	if err != nil {
		t.Fatal(err)
	}
	if sm.Subject != bus.Defer("blocked_test", env.QueueID) || sm.Header.Get("Nats-Schedule-Target") != bus.SubjDrop ||
		next.Attempt != 1 || !strings.HasPrefix(next.LastError, "4.3.0 cannot write the Drop directory") {
		t.Errorf("schedule %s target %q attempt %d last error %q", sm.Subject, sm.Header.Get("Nats-Schedule-Target"), next.Attempt, next.LastError)
	}
	if err := os.Remove(obstacle); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(obstacle, env.QueueID+".eml")
	testutil.WaitFor(t, wait, "the drop file", func() bool { _, err := os.Stat(path); return err == nil })
	if got, _ := os.ReadFile(path); !bytes.Equal(got, sampleBody) {
		t.Errorf("drop file %q", got)
	}
	h.waitEmpty()
}

// Local delivery has its own expiry and delay notice; success with
// NOTIFY=SUCCESS is reported as "delivered".
func TestDropExpiryAndNotices(t *testing.T) {
	t.Run("local_expire", func(t *testing.T) {
		h := newHarness(t)
		if err := os.MkdirAll(h.cfg.DropDir(), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(h.cfg.DropDir(), "stuck.test"), nil, 0o640); err != nil {
			t.Fatal(err)
		}
		h.cfg.Delivery.LocalExpire = config.Duration(3 * time.Second)
		h.cfg.Delivery.LocalDelayNotice = config.Duration(time.Second)
		in := h.watchIn()
		h.start(nil)
		env := newEnv("stuck.test", "x@stuck.test")
		env.ExpiresAt = time.Now().Add(time.Hour) // remote expiry does not apply
		h.publish(bus.SubjDrop, env, sampleBody)
		delay := in.next()
		if rc := delay.p.Report.Recipients[0]; rc.Action != dsn.ActionDelayed || !strings.Contains(rc.DiagnosticCode, "cannot write the Drop directory") ||
			!rc.WillRetryUntil.Equal(env.ReceivedAt.Add(3*time.Second).Truncate(time.Second)) {
			t.Errorf("delay notice %+v", rc)
		}
		final := in.next()
		if rc := final.p.Report.Recipients[0]; rc.Action != dsn.ActionFailed || rc.Status != "4.4.7" || rc.RemoteMTA != "" ||
			!strings.HasPrefix(rc.DiagnosticCode, "X-Mailroot; 4.4.7 message expired after") {
			t.Errorf("expiry report %+v", rc)
		}
		h.waitEmpty()
		in.none()
	})
	t.Run("NOTIFY=SUCCESS", func(t *testing.T) {
		h := newHarness(t)
		in := h.watchIn()
		h.start(nil)
		env := newEnv("here.test", "a@here.test", "b@here.test")
		env.Rcpts[1].Notify = []string{"SUCCESS"}
		h.publish(bus.SubjDrop, env, sampleBody)
		n := in.next()
		if rc := n.p.Report.Recipients; len(rc) != 1 || rc[0].FinalRecipient != "b@here.test" || rc[0].Action != dsn.ActionDelivered || rc[0].Status != "2.0.0" {
			t.Errorf("success notice %+v", rc)
		}
		if n.p.Header.Get("Subject") != "Delivered: hi" {
			t.Errorf("subject %q", n.p.Header.Get("Subject"))
		}
		h.waitEmpty()
		in.none()
	})
}
