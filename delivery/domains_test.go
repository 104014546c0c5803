package delivery

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
)

// waitLast returns the last message on subject once there is one.
func (h *harness) waitLast(subject string) *jetstream.RawStreamMsg {
	h.t.Helper()
	var raw *jetstream.RawStreamMsg
	testutil.WaitFor(h.t, wait, "a message on "+subject, func() bool {
		var err error
		raw, err = h.stream.GetLastMsgForSubject(h.t.Context(), subject)
		return err == nil
	})
	return raw
}

// A [[domain]] smart_host sends that domain's mail there, whatever its MX
// records say and whatever the global smart host is.
func TestDomainSmartHost(t *testing.T) {
	h := newHarness(t, "partner.test. MX 10 mx.partner.test.", "mx.partner.test. A 127.0.0.9")
	partner := testutil.StartSink(t)
	h.cfg.Domains = []config.Domain{{Name: "partner.test", Type: config.DomainRemote, SmartHost: partner.Addr}}
	h.start(nil)
	h.publishOut(newEnv("partner.test", "x@partner.test"), sampleBody)
	testutil.WaitFor(t, wait, "delivery via the domain's smart host", func() bool { return partner.Count() == 1 })
	if m := partner.Mails()[0]; !bytes.Equal(m.Data, sampleBody) || m.To[0] != "x@partner.test" {
		t.Errorf("got to %v: %q", m.To, m.Data)
	}
	if h.sink.Count() != 0 {
		t.Errorf("the MX was used too")
	}
	h.waitEmpty()
}

// require_tls: a server without STARTTLS gets nothing — the mail is
// deferred with 4.7.10 — and a failed handshake is not retried in plain
// text; a server with STARTTLS gets the mail over TLS when its certificate
// verifies for the MX host name, and nothing (4.7.5) when it does not: not
// trusted, or trusted but for another name.
func TestDomainRequireTLS(t *testing.T) {
	t.Run("no STARTTLS: deferred", func(t *testing.T) {
		h := newHarness(t, "secure.test. MX 10 mx.secure.test.", "mx.secure.test. A 127.0.0.1")
		h.cfg.Domains = []config.Domain{{Name: "secure.test", Type: config.DomainRemote, RequireTLS: true}}
		h.start(nil)
		env := newEnv("secure.test", "x@secure.test")
		h.publishOut(env, sampleBody)
		raw := h.waitLast(bus.Defer(bus.Token("secure.test"), env.QueueID))
		next, err := envelope.Decode(raw.Header)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(next.LastError, "4.7.10") || !strings.Contains(next.LastError, "TLS is required for secure.test") {
			t.Errorf("last error %q", next.LastError)
		}
		if h.sink.Transactions() != 0 {
			t.Errorf("mail sent in plain text to a require_tls domain")
		}
	})
	t.Run("STARTTLS with a verified certificate: delivered over TLS", func(t *testing.T) {
		b := &tlsBackend{sink: &testutil.Sink{}}
		cert := selfSigned(t, "mx.secure.test")
		port := serveSMTP(t, b, func(srv *smtp.Server) {
			srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
		})
		h := newHarness(t, "secure.test. MX 10 mx.secure.test.", "mx.secure.test. A 127.0.0.1")
		h.trust(cert)
		h.cfg.Delivery.Port = port
		h.cfg.Domains = []config.Domain{{Name: "secure.test", Type: config.DomainRemote, RequireTLS: true}}
		h.start(nil)
		h.publishOut(newEnv("secure.test", "x@secure.test"), sampleBody)
		testutil.WaitFor(t, wait, "delivery", func() bool { return b.sink.Count() == 1 })
		if got := b.transactions(); len(got) != 1 || !got[0] {
			t.Errorf("transactions over TLS: %v", got)
		}
		h.waitEmpty()
	})
	for name, tc := range map[string]struct {
		names  []string
		trust  bool
		reason string
	}{
		"certificate not trusted: deferred": {[]string{"mx.secure.test"}, false, "unknown authority"},
		"certificate for another name":      {[]string{"mx.elsewhere.test"}, true, "mx.secure.test"},
	} {
		t.Run(name, func(t *testing.T) {
			b := &tlsBackend{sink: &testutil.Sink{}}
			cert := selfSigned(t, tc.names...)
			port := serveSMTP(t, b, func(srv *smtp.Server) {
				srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
			})
			h := newHarness(t, "secure.test. MX 10 mx.secure.test.", "mx.secure.test. A 127.0.0.1")
			if tc.trust {
				h.trust(cert)
			}
			h.cfg.Delivery.Port = port
			h.cfg.Domains = []config.Domain{{Name: "secure.test", Type: config.DomainRemote, RequireTLS: true}}
			h.start(nil)
			env := newEnv("secure.test", "x@secure.test")
			h.publishOut(env, sampleBody)
			raw := h.waitLast(bus.Defer(bus.Token("secure.test"), env.QueueID))
			next, err := envelope.Decode(raw.Header)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(next.LastError, "4.7.5") || !strings.Contains(next.LastError, "could not be verified") || !strings.Contains(next.LastError, tc.reason) {
				t.Errorf("last error %q, want 4.7.5 and why (%s)", next.LastError, tc.reason)
			}
			if n := b.sink.Count(); n != 0 {
				t.Errorf("%d mails delivered over an unverified session", n)
			}
		})
	}
}

// A temporary failure for a held domain puts the mail back on hold for the
// next ETRN, not on the retry ladder.
func TestHeldDomainTempFailureBackToHold(t *testing.T) {
	h := newHarness(t, "site.test. MX 10 mx.site.test.", "mx.site.test. A 127.0.0.1")
	h.sink.DataFunc = func(int, *testutil.Mail) error {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "going offline"}
	}
	h.cfg.Domains = []config.Domain{{Name: "site.test", Type: config.DomainRemote, Hold: true}}
	h.start(nil)
	env := newEnv("site.test", "x@site.test")
	h.publishOut(env, sampleBody) // as an ETRN release would
	tok := bus.Token("site.test")
	raw := h.waitLast(bus.Hold(tok))
	held, err := envelope.Decode(raw.Header)
	if err != nil {
		t.Fatal(err)
	}
	if held.QueueID != env.QueueID || held.Attempt != 1 || !strings.Contains(held.LastError, "going offline") {
		t.Errorf("held envelope %+v", held)
	}
	if got := raw.Header.Get(envelope.HdrMsgID); got != fmt.Sprintf("%s.%s.h1", env.QueueID, tok) {
		t.Errorf("msg id %q", got)
	}
	if _, err := h.stream.GetLastMsgForSubject(t.Context(), bus.Defer(tok, env.QueueID)); err == nil {
		t.Errorf("a retry schedule was made for a held domain")
	}
}

// Held mail expires like any other: its sender gets a 4.4.7 report (the
// null sender's goes to Badmail), and it leaves the hold queue; mail not
// yet expired stays held.
func TestHeldMailExpires(t *testing.T) {
	h := newHarness(t)
	h.cfg.Domains = []config.Domain{{Name: "site.test", Type: config.DomainRemote, Hold: true}}
	tok := bus.Token("site.test")
	expired := newEnv("site.test", "a@site.test")
	expired.ReceivedAt, expired.ExpiresAt = time.Now().Add(-72*time.Hour), time.Now().Add(-time.Hour)
	bounceless := newEnv("site.test", "b@site.test")
	bounceless.From = ""
	bounceless.ReceivedAt, bounceless.ExpiresAt = expired.ReceivedAt, expired.ExpiresAt
	fresh := newEnv("site.test", "c@site.test")
	for _, e := range []*envelope.Envelope{expired, bounceless, fresh} {
		h.publish(bus.Hold(tok), e, sampleBody)
	}
	h.start(func(s *Service) { s.HoldSweep = 100 * time.Millisecond })

	report := h.waitLast(bus.SubjIn)
	for _, want := range []string{"report-type=delivery-status", "Final-Recipient: rfc822; a@site.test", "Status: 4.4.7", "expired while held for site.test"} {
		if !strings.Contains(string(report.Data), want) {
			t.Errorf("report lacks %q:\n%s", want, report.Data)
		}
	}
	if got := report.Header.Get(envelope.HdrRcpt); got != "<sender@origin.test>" {
		t.Errorf("report to %q", got)
	}
	bad := h.waitLast(bus.SubjBad)
	if got := bad.Header.Get(envelope.HdrQueueID); got != bounceless.QueueID || !strings.Contains(bad.Header.Get(envelope.HdrReason), "expired while held") {
		t.Errorf("badmail %s: %q", got, bad.Header.Get(envelope.HdrReason))
	}
	testutil.WaitFor(t, wait, "only the fresh message left on hold", func() bool {
		info, err := h.stream.Info(t.Context(), jetstream.WithSubjectFilter(bus.Hold(tok)))
		return err == nil && info.State.Subjects[bus.Hold(tok)] == 1
	})
	left, err := h.stream.GetLastMsgForSubject(t.Context(), bus.Hold(tok))
	if err != nil || left.Header.Get(envelope.HdrQueueID) != fresh.QueueID {
		t.Errorf("left on hold: %v %v", left, err)
	}
	// The mail log: expired and bounced with the report for the one,
	// expired and badmail for the null sender's.
	testutil.WaitFor(t, wait, "expiry events", func() bool {
		got := map[string]bus.Event{}
		err := bus.ReadEvents(t.Context(), h.js, bus.EventFilter{Domain: "site.test"}, false, func(e bus.Event) error {
			got[e.QueueID+"/"+e.Type] = e
			return nil
		})
		b, exp := got[expired.QueueID+"/"+bus.EventBounced], got[expired.QueueID+"/"+bus.EventExpired]
		_, bad := got[bounceless.QueueID+"/"+bus.EventBadmail]
		_, bexp := got[bounceless.QueueID+"/"+bus.EventExpired]
		_, freshExp := got[fresh.QueueID+"/"+bus.EventExpired]
		if freshExp {
			t.Fatal("the fresh message has an expired event")
		}
		return err == nil && b.ReportQID == report.Header.Get(envelope.HdrQueueID) && b.Rcpts[0] == "a@site.test" &&
			strings.Contains(exp.Reason, "expired while held") && bad && bexp
	})
}
