package delivery

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
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

// stsWorld is a destination sts.test publishing an MTA-STS policy: a real
// HTTPS policy server (mta-sts.sts.test), two MX hosts mx1 (127.0.0.2,
// preference 10) and mx2 (127.0.0.3, 20), each a go-smtp server with
// STARTTLS and a certificate, all trusted through delivery.tls_ca_file.
type stsWorld struct {
	h        *harness
	mx1, mx2 *tlsBackend
	fetches  atomic.Int32
	dials    map[string]*atomic.Int32 // by MX address
	// mod is the seams of a service of this world (start another with
	// w.h.start(w.mod)); ruaCert is trusted too, for a TLS-RPT endpoint.
	mod     func(*Service)
	stop    func()
	ruaCert tls.Certificate
}

func newSTSWorld(t *testing.T, policy string, mx1Names, mx2Names []string, edit ...func(*harness)) *stsWorld {
	t.Helper()
	w := &stsWorld{mx1: &tlsBackend{sink: &testutil.Sink{}}, mx2: &tlsBackend{sink: &testutil.Sink{}},
		dials: map[string]*atomic.Int32{"127.0.0.2": {}, "127.0.0.3": {}}}
	policyCert := testutil.SelfSigned(t, "mta-sts.sts.test")
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w.fetches.Add(1)
		if r.Host != "mta-sts.sts.test" || r.URL.Path != "/.well-known/mta-sts.txt" {
			http.NotFound(rw, r)
			return
		}
		rw.Header().Set("Content-Type", "text/plain")
		_, _ = rw.Write([]byte(policy))
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{policyCert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	cert1, cert2 := selfSigned(t, mx1Names...), selfSigned(t, mx2Names...)
	port1 := serveSMTP(t, w.mx1, func(s *smtp.Server) { s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert1}} })
	port2 := serveSMTP(t, w.mx2, func(s *smtp.Server) { s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert2}} })
	w.h = newHarness(t,
		"sts.test. MX 10 mx1.sts.test.", "sts.test. MX 20 mx2.sts.test.",
		"mx1.sts.test. A 127.0.0.2", "mx2.sts.test. A 127.0.0.3",
		`_mta-sts.sts.test. TXT "v=STSv1; id=20261201"`)
	var pemData []byte
	w.ruaCert = selfSigned(t, "rua.test")
	for _, c := range []tls.Certificate{policyCert, cert1, cert2, w.ruaCert} {
		pemData = append(pemData, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]})...)
	}
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pemData, 0o644); err != nil {
		t.Fatal(err)
	}
	w.h.cfg.Delivery.TLSCAFile = path
	ports := map[string]int{"127.0.0.2": port1, "127.0.0.3": port2, "127.0.0.4": w.h.sink.Port}
	for _, e := range edit {
		e(w.h)
	}
	w.mod = func(s *Service) {
		s.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			ip, _, _ := net.SplitHostPort(addr)
			if n := w.dials[ip]; n != nil {
				n.Add(1)
			}
			var d net.Dialer
			return d.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[ip])))
		}
		s.MTASTS.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr != "mta-sts.sts.test:443" {
				t.Errorf("policy fetched from %s", addr)
			}
			var d net.Dialer
			return d.DialContext(ctx, network, srv.Listener.Addr().String())
		}
	}
	w.stop = w.h.start(w.mod)
	return w
}

const stsEnforce = "version: STSv1\nmode: enforce\nmx: *.sts.test\nmax_age: 86400\n"

// enforce: mx1's certificate is for another name, so mx1 gets nothing and
// the mail goes to mx2, whose certificate verifies, over TLS; the policy
// is fetched once and served from the mta-sts bucket for the next mail.
func TestMTASTSEnforce(t *testing.T) {
	w := newSTSWorld(t, stsEnforce, []string{"mx.elsewhere.test"}, []string{"mx2.sts.test"})
	for i := range 3 {
		env := newEnv("sts.test", "x@sts.test")
		w.h.publishOut(env, sampleBody)
		ev := w.h.deliveredEvent(env.QueueID)
		if ev.TLSPolicy != PolicyMTASTS || ev.MX != "mx2.sts.test" || !strings.HasSuffix(ev.TLS, " verified") || ev.TLSFailure != "" {
			t.Errorf("mail %d: delivered event mx %s tls %q tls_policy %q tls_failure %q, want mx2 verified under mta-sts", i, ev.MX, ev.TLS, ev.TLSPolicy, ev.TLSFailure)
		}
	}
	if n := w.mx1.sink.Count(); n != 0 {
		t.Errorf("mx1, whose certificate does not match, got %d mails", n)
	}
	if n := w.dials["127.0.0.2"].Load(); n == 0 {
		t.Errorf("mx1 was never tried: the test proves nothing about its certificate")
	}
	if got := w.mx2.transactions(); len(got) != 3 || !got[0] || !got[1] || !got[2] {
		t.Errorf("mx2 transactions over TLS: %v", got)
	}
	if n := w.fetches.Load(); n != 1 {
		t.Errorf("%d policy fetches for 3 mails, want 1 (then the KV cache)", n)
	}
	w.h.waitEmpty()
}

// enforce with no host that verifies: the mail is deferred with 4.7.5,
// naming the policy and why, and goes nowhere.
func TestMTASTSEnforceNoHostLeft(t *testing.T) {
	w := newSTSWorld(t, stsEnforce, []string{"mx.elsewhere.test"}, []string{"mx.elsewhere.test"})
	env := newEnv("sts.test", "x@sts.test")
	w.h.publishOut(env, sampleBody)
	raw := w.h.waitLast(bus.Defer(bus.Token("sts.test"), env.QueueID))
	next, err := envelope.Decode(raw.Header)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(next.LastError, "4.7.5") || !strings.Contains(next.LastError, "MTA-STS policy of sts.test") || !strings.Contains(next.LastError, "could not be verified") {
		t.Errorf("last error %q, want 4.7.5 naming the policy and the certificate", next.LastError)
	}
	if n := w.mx1.sink.Count() + w.mx2.sink.Count(); n != 0 {
		t.Errorf("%d mails delivered over unverified sessions", n)
	}
}

// An MX host outside the policy's patterns is not even connected to; with
// none left the mail waits, 4.7.5 naming the patterns.
func TestMTASTSSkipsUnlistedMX(t *testing.T) {
	t.Run("one listed", func(t *testing.T) {
		w := newSTSWorld(t, "version: STSv1\nmode: enforce\nmx: mx2.sts.test\nmax_age: 86400\n", []string{"mx1.sts.test"}, []string{"mx2.sts.test"})
		env := newEnv("sts.test", "x@sts.test")
		w.h.publishOut(env, sampleBody)
		if ev := w.h.deliveredEvent(env.QueueID); ev.MX != "mx2.sts.test" || ev.TLSPolicy != PolicyMTASTS {
			t.Errorf("delivered to %s under %s", ev.MX, ev.TLSPolicy)
		}
		if n := w.dials["127.0.0.2"].Load(); n != 0 {
			t.Errorf("mx1, not in the policy, got %d connections", n)
		}
	})
	t.Run("none listed", func(t *testing.T) {
		w := newSTSWorld(t, "version: STSv1\nmode: enforce\nmx: mail.other.test\nmax_age: 86400\n", []string{"mx1.sts.test"}, []string{"mx2.sts.test"})
		env := newEnv("sts.test", "x@sts.test")
		w.h.publishOut(env, sampleBody)
		raw := w.h.waitLast(bus.Defer(bus.Token("sts.test"), env.QueueID))
		next, err := envelope.Decode(raw.Header)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(next.LastError, "4.7.5") || !strings.Contains(next.LastError, "mail.other.test") {
			t.Errorf("last error %q, want 4.7.5 naming the policy's patterns", next.LastError)
		}
		if n := w.dials["127.0.0.2"].Load() + w.dials["127.0.0.3"].Load(); n != 0 {
			t.Errorf("%d connections to hosts outside the policy", n)
		}
	})
}

// testing: the mail goes to mx1 although its certificate does not verify,
// and the delivered event records what enforce would have refused.
func TestMTASTSTesting(t *testing.T) {
	w := newSTSWorld(t, "version: STSv1\nmode: testing\nmx: *.sts.test\nmax_age: 86400\n", []string{"mx.elsewhere.test"}, []string{"mx2.sts.test"})
	env := newEnv("sts.test", "x@sts.test")
	w.h.publishOut(env, sampleBody)
	ev := w.h.deliveredEvent(env.QueueID)
	if ev.MX != "mx1.sts.test" || ev.TLSPolicy != PolicyMTASTSTesting || !strings.Contains(ev.TLSFailure, "could not be verified") {
		t.Errorf("delivered event mx %s tls_policy %q tls_failure %q, want mx1 under mta-sts-testing with the failure", ev.MX, ev.TLSPolicy, ev.TLSFailure)
	}
	if n := w.mx1.sink.Count(); n != 1 {
		t.Errorf("mx1 got %d mails, want 1", n)
	}
}
