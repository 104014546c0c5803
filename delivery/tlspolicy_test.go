package delivery

import (
	"crypto/tls"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

// deliveredEvent waits for the delivered event of qid and returns it.
func (h *harness) deliveredEvent(qid string) bus.Event {
	h.t.Helper()
	var ev bus.Event
	testutil.WaitFor(h.t, wait, "the delivered event of "+qid, func() bool {
		found := false
		err := bus.ReadEvents(h.t.Context(), h.js, bus.EventFilter{QueueID: qid}, false, func(e bus.Event) error {
			if e.Type == bus.EventDelivered {
				ev, found = e, true
			}
			return nil
		})
		return err == nil && found
	})
	return ev
}

// The delivered event says which TLS policy the attempt
// applied and what the session's TLS was: opportunistic by default,
// require_tls for such a domain, requiretls for a message with REQUIRETLS.
func TestTLSPolicyInDeliveredEvent(t *testing.T) {
	for _, tc := range []struct {
		name        string
		requireTLS  bool // the domain's
		requireMsg  bool // the message's REQUIRETLS
		trust       bool
		wantPolicy  string
		wantTLSPart string
	}{
		{"opportunistic, unverified", false, false, false, PolicyOpportunistic, "unverified"},
		{"require_tls, verified", true, false, true, PolicyRequireTLS, " verified"},
		{"REQUIRETLS, verified", false, true, true, PolicyREQUIRETLS, " verified"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &tlsBackend{sink: &testutil.Sink{}}
			cert := selfSigned(t, "mx.tls.test")
			port := serveSMTP(t, b, func(srv *smtp.Server) {
				srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
				srv.EnableREQUIRETLS = true
			})
			h := newHarness(t, "tls.test. MX 10 mx.tls.test.", "mx.tls.test. A 127.0.0.1")
			if tc.trust {
				h.trust(cert)
			}
			h.cfg.Delivery.Port = port
			if tc.requireTLS {
				h.cfg.Domains = []config.Domain{{Name: "tls.test", Type: config.DomainRemote, RequireTLS: true}}
			}
			h.start(nil)
			env := newEnv("tls.test", "x@tls.test")
			env.RequireTLS = tc.requireMsg
			h.publishOut(env, sampleBody)
			ev := h.deliveredEvent(env.QueueID)
			if ev.TLSPolicy != tc.wantPolicy || !strings.HasPrefix(ev.TLS, "TLS 1.") || !strings.Contains(ev.TLS, tc.wantTLSPart) || ev.TLSFailure != "" {
				t.Errorf("delivered event tls %q tls_policy %q tls_failure %q, want %s and %q", ev.TLS, ev.TLSPolicy, ev.TLSFailure, tc.wantPolicy, tc.wantTLSPart)
			}
		})
	}
}
