package delivery

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/dane"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/resolver"
	"github.com/mailroot/mailroot/internal/testutil"
)

// spki256 is the "3 1 1" association data of a certificate.
func spki256(t *testing.T, der []byte) string {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(c.RawSubjectPublicKeyInfo))
}

// daneHarness is a harness whose MX host mx.dane.test (127.0.0.1) serves
// STARTTLS with cert (nil: no STARTTLS) and publishes tlsa ("3 1 1 ...",
// none when ""); ad says whether the DNS server sets the AD bit, and
// delivery trusts it (dns.trust_ad).
func daneHarness(t *testing.T, cert *tls.Certificate, ad bool, tlsa ...string) (*harness, *tlsBackend) {
	t.Helper()
	b := &tlsBackend{sink: &testutil.Sink{}}
	port := serveSMTP(t, b, func(srv *smtp.Server) {
		if cert != nil {
			srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*cert}}
		}
	})
	zone := []string{"dane.test. MX 10 mx.dane.test.", "mx.dane.test. A 127.0.0.1"}
	for _, r := range tlsa {
		zone = append(zone, fmt.Sprintf("_%d._tcp.mx.dane.test. TLSA %s", port, r))
	}
	h := newHarness(t, zone...)
	h.dns.SetAD(ad)
	h.cfg.DNS.TrustAD = true
	h.cfg.Delivery.Port = port
	return h, b
}

// The deferred envelope's last error, once the attempt failed.
func (h *harness) deferred(env *envelope.Envelope) string {
	h.t.Helper()
	raw := h.waitLast(bus.Defer(bus.Token(env.Domain), env.QueueID))
	next, err := envelope.Decode(raw.Header)
	if err != nil {
		h.t.Fatal(err)
	}
	return next.LastError
}

// A secure DANE-EE record that matches: delivered over TLS, whatever the
// certificate's name and issuer (a self-signed one for another name here,
// which WebPKI would refuse), and the event says "dane".
func TestDANEEEMatchDelivers(t *testing.T) {
	cert := selfSigned(t, "not-the-mx.test")
	h, b := daneHarness(t, &cert, true, "3 1 1 "+spki256(t, cert.Certificate[0]))
	h.start(nil)
	env := newEnv("dane.test", "x@dane.test")
	h.publishOut(env, sampleBody)
	ev := h.deliveredEvent(env.QueueID)
	if ev.TLSPolicy != PolicyDANE || !strings.HasSuffix(ev.TLS, " verified") {
		t.Errorf("delivered event tls %q tls_policy %q, want dane and verified", ev.TLS, ev.TLSPolicy)
	}
	if got := b.transactions(); len(got) != 1 || !got[0] {
		t.Errorf("transactions over TLS: %v", got)
	}
}

// A secure TLSA record that matches no certificate of the server: the
// host is not used, the mail waits with 4.7.5 and the reason.
func TestDANEMismatchDefers(t *testing.T) {
	cert := selfSigned(t, "mx.dane.test")
	other := selfSigned(t, "mx.dane.test")
	h, b := daneHarness(t, &cert, true, "3 1 1 "+spki256(t, other.Certificate[0]))
	h.trust(cert) // WebPKI would accept it: DANE replaces WebPKI
	h.start(nil)
	env := newEnv("dane.test", "x@dane.test")
	h.publishOut(env, sampleBody)
	last := h.deferred(env)
	for _, want := range []string{"4.7.5", "DANE TLSA records of mx.dane.test", "could not be verified", "no TLSA record matches"} {
		if !strings.Contains(last, want) {
			t.Errorf("last error %q, want %q in it", last, want)
		}
	}
	if n := b.sink.Count(); n != 0 {
		t.Errorf("%d mails delivered to a host whose certificate does not match its TLSA records", n)
	}
}

// Without the AD bit the TLSA records are not secure, and DANE does not
// apply: the mail goes opportunistically, even with a record that does
// not match (RFC 7672 §2.2). The same when the resolver is not trusted
// to validate (dns.trust_ad off), whatever bit it sets.
func TestDANENotSecureIsOpportunistic(t *testing.T) {
	for _, tc := range []struct {
		name        string
		ad, trustAD bool
	}{
		{"no AD bit", false, true},
		{"AD bit, dns.trust_ad off", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cert := selfSigned(t, "mx.dane.test")
			other := selfSigned(t, "mx.dane.test")
			h, _ := daneHarness(t, &cert, tc.ad, "3 1 1 "+spki256(t, other.Certificate[0]))
			h.cfg.DNS.TrustAD = tc.trustAD
			h.start(nil)
			env := newEnv("dane.test", "x@dane.test")
			h.publishOut(env, sampleBody)
			ev := h.deliveredEvent(env.QueueID)
			if ev.TLSPolicy != PolicyOpportunistic || !strings.Contains(ev.TLS, "unverified") {
				t.Errorf("delivered event tls %q tls_policy %q, want opportunistic", ev.TLS, ev.TLSPolicy)
			}
		})
	}
}

// A DANE-TA record names the CA; the server sends its certificate for the
// MX host name with the CA's in its chain: delivered. A certificate of
// that CA for another name is not (the name check of DANE-TA).
func TestDANETAChain(t *testing.T) {
	ca := testutil.NewCA(t, "DANE CA")
	caSum := fmt.Sprintf("%x", sha256.Sum256(ca.Cert.Raw))
	t.Run("chain to the anchor, right name: delivered", func(t *testing.T) {
		cert := ca.Issue(t, time.Time{}, time.Time{}, "mx.dane.test")
		h, b := daneHarness(t, &cert, true, "2 0 1 "+caSum)
		h.start(nil)
		env := newEnv("dane.test", "x@dane.test")
		h.publishOut(env, sampleBody)
		if ev := h.deliveredEvent(env.QueueID); ev.TLSPolicy != PolicyDANE {
			t.Errorf("tls_policy %q", ev.TLSPolicy)
		}
		if b.sink.Count() != 1 {
			t.Errorf("%d mails at the sink", b.sink.Count())
		}
	})
	t.Run("another name: deferred", func(t *testing.T) {
		cert := ca.Issue(t, time.Time{}, time.Time{}, "mx.elsewhere.test")
		h, b := daneHarness(t, &cert, true, "2 0 1 "+caSum)
		h.start(nil)
		env := newEnv("dane.test", "x@dane.test")
		h.publishOut(env, sampleBody)
		if last := h.deferred(env); !strings.Contains(last, "4.7.5") || !strings.Contains(last, "DANE-TA") {
			t.Errorf("last error %q", last)
		}
		if b.sink.Count() != 0 {
			t.Errorf("delivered to a certificate for another name")
		}
	})
}

// A host with secure TLSA records that offers no STARTTLS gets nothing:
// TLS is mandatory (4.7.10), also when every record is unusable.
func TestDANENoSTARTTLSDefers(t *testing.T) {
	for name, rec := range map[string]string{
		"usable record":      "3 1 1 " + strings.Repeat("ab", 32),
		"unusable (PKIX-EE)": "1 1 1 " + strings.Repeat("ab", 32),
	} {
		t.Run(name, func(t *testing.T) {
			h, b := daneHarness(t, nil, true, rec)
			h.start(nil)
			env := newEnv("dane.test", "x@dane.test")
			h.publishOut(env, sampleBody)
			if last := h.deferred(env); !strings.Contains(last, "4.7.10") || !strings.Contains(last, "DANE TLSA records") {
				t.Errorf("last error %q", last)
			}
			if b.sink.Count() != 0 {
				t.Errorf("mail sent in plain text to a DANE host")
			}
		})
	}
}

// Unusable records only: TLS, with any certificate (RFC 7672 §2.2).
func TestDANEUnusableOnlyEncrypts(t *testing.T) {
	cert := selfSigned(t, "anything.test")
	h, b := daneHarness(t, &cert, true, "0 0 1 "+strings.Repeat("ab", 32))
	h.start(nil)
	env := newEnv("dane.test", "x@dane.test")
	h.publishOut(env, sampleBody)
	if ev := h.deliveredEvent(env.QueueID); ev.TLSPolicy != PolicyDANE {
		t.Errorf("tls_policy %q", ev.TLSPolicy)
	}
	if got := b.transactions(); len(got) != 1 || !got[0] {
		t.Errorf("transactions over TLS: %v", got)
	}
}

// A session checked against a host's TLSA records carries the next
// message checked against the same records; once the records change, the
// next message gets a session of its own, checked against the new ones.
func TestDANEConnectionReuse(t *testing.T) {
	cert := selfSigned(t, "mx.dane.test")
	h, _ := daneHarness(t, &cert, true, "3 1 1 "+spki256(t, cert.Certificate[0]))
	h.cfg.Delivery.Concurrency = 1
	h.cfg.Delivery.ConnectionCacheTime = config.Duration(time.Minute)
	h.cfg.DNS.CacheSize = 0
	var mu sync.Mutex
	var dials []string
	conns := func() int { mu.Lock(); defer mu.Unlock(); return len(dials) }
	h.start(func(s *Service) { recordDials(s, &mu, &dials) })
	send := func(n int) {
		t.Helper()
		env, body := numbered("dane.test", n)
		h.publishOut(env, body)
		if ev := h.deliveredEvent(env.QueueID); ev.TLSPolicy != PolicyDANE {
			t.Fatalf("message %d: tls_policy %q", n, ev.TLSPolicy)
		}
	}
	send(1)
	send(2)
	if c := conns(); c != 1 {
		t.Errorf("%d connections for two messages under the same TLSA records, want 1", c)
	}
	// A second record (a key roll-over): another set, another session.
	next := selfSigned(t, "mx.dane.test")
	h.dns.Add(t, fmt.Sprintf("_%d._tcp.mx.dane.test. TLSA 3 1 1 %s", h.cfg.Delivery.Port, spki256(t, next.Certificate[0])))
	send(3)
	if c := conns(); c != 2 {
		t.Errorf("%d connections, want 2: a session checked against other records was reused", c)
	}
}

// A TLSA lookup that fails (here SERVFAIL, after the MX host's addresses
// were found secure) keeps the mail from that host: an attacker who can
// block the answer must not turn DANE off (RFC 7672 §2.2).
func TestDANELookupFailureRefusesHost(t *testing.T) {
	t.Parallel()
	d := testutil.StartDNS(t, "mx.dane.test. A 127.0.0.1")
	d.SetAD(true)
	cfg := config.Default()
	s := &Service{cfgs: config.NewLive(cfg), dns: &resolver.Resolver{Servers: []string{d.Addr}, TrustAD: true, CacheSize: 100, Timeout: time.Second, Attempts: 1}}
	ctx := t.Context()
	if !s.addrsSecure(ctx, "mx.dane.test") { // now in the resolver's cache
		t.Fatal("address not secure")
	}
	d.SetRcode(dns.RcodeServerFailure)
	tg := target{host: "mx.dane.test", port: 25, kind: "MX host", dnssec: true}
	p, herr := s.daneFor(ctx, "dane.test", []target{tg})
	if herr != nil || p == nil {
		t.Fatalf("daneFor = %v, %v; want a DANE policy", p, herr)
	}
	p.other = &tlsPolicy{kind: PolicyOpportunistic}
	var fail string
	hp := p.forHost(tg)
	if why := hp.hostAllowed(tg, &fail); hp.kind != PolicyDANE || !strings.Contains(why, "TLSA records could not be looked up") {
		t.Errorf("host policy %q allows with %q, want the host refused for its failed TLSA lookup", hp.kind, why)
	}
	// A host whose addresses are not secure: no DANE, no TLSA asked.
	d.SetRcode(dns.RcodeSuccess)
	d.SetAD(false)
	tg.host = "other.dane.test"
	d.Add(t, "other.dane.test. A 127.0.0.1")
	if p, herr := s.daneFor(ctx, "dane.test", []target{tg}); p != nil || herr != nil {
		t.Errorf("insecure addresses: daneFor = %v, %v", p, herr)
	}
}

// DANE-TA identifies the server by the MX host name, and by the mail
// domain only when the MX answer was secure (RFC 7672 §3.2.2).
func TestDANETANamesNeedSecureMX(t *testing.T) {
	ca := testutil.NewCA(t, "DANE CA")
	cert := ca.Issue(t, time.Time{}, time.Time{}, "dane.test") // the domain's name only
	rec, err := dane.NewRecord(dane.DANETA, dane.SelectorCert, dane.MatchSHA256, fmt.Sprintf("%x", sha256.Sum256(ca.Cert.Raw)))
	if err != nil {
		t.Fatal(err)
	}
	set := dane.Set{Name: "_25._tcp.mx.dane.test.", Found: true, Records: []dane.Record{rec}}
	var st tls.ConnectionState
	st.PeerCertificates = []*x509.Certificate{cert.Leaf, ca.Cert}
	if why := danePolicy("dane.test", "mx.dane.test", true, set).verify("mx.dane.test", st); why != "" {
		t.Errorf("secure MX: %s", why)
	}
	if why := danePolicy("dane.test", "mx.dane.test", false, set).verify("mx.dane.test", st); why == "" {
		t.Error("insecure MX: a certificate for the mail domain was taken for the MX host")
	}
}
