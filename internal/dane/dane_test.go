package dane

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mailroot/mailroot/internal/resolver"
	"github.com/mailroot/mailroot/internal/testutil"
)

// state is the ConnectionState of a server that sent c's chain.
func state(t *testing.T, c tls.Certificate) tls.ConnectionState {
	t.Helper()
	var st tls.ConnectionState
	for _, der := range c.Certificate {
		x, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		st.PeerCertificates = append(st.PeerCertificates, x)
	}
	return st
}

// rec is the record of usage, selector and matching for cert.
func rec(t *testing.T, usage, selector, matching uint8, cert *x509.Certificate) Record {
	t.Helper()
	b := cert.Raw
	if selector == SelectorSPKI {
		b = cert.RawSubjectPublicKeyInfo
	}
	switch matching {
	case MatchSHA256:
		d := sha256.Sum256(b)
		b = d[:]
	case MatchSHA512:
		d := sha512.Sum512(b)
		b = d[:]
	}
	r, err := NewRecord(usage, selector, matching, hex.EncodeToString(b))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func set(rs ...Record) Set { return Set{Name: "_25._tcp.mx.example.test.", Found: true, Records: rs} }

func leafOf(t *testing.T, c tls.Certificate) *x509.Certificate {
	t.Helper()
	x, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func TestDANEEE(t *testing.T) {
	names := []string{"mx.example.test", "example.test"}
	good := testutil.SelfSigned(t, "mx.example.test")
	// A certificate for another name, long expired: DANE-EE checks
	// neither (RFC 7672 §3.1.1).
	ca := testutil.NewCA(t, "Old CA")
	stale := ca.Issue(t, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour), "elsewhere.test")
	other := testutil.SelfSigned(t, "mx.example.test")
	for _, c := range []struct {
		name string
		cert tls.Certificate
		rec  func() Record
		ok   bool
	}{
		{"spki sha256", good, func() Record { return rec(t, DANEEE, SelectorSPKI, MatchSHA256, leafOf(t, good)) }, true},
		{"cert sha256", good, func() Record { return rec(t, DANEEE, SelectorCert, MatchSHA256, leafOf(t, good)) }, true},
		{"spki sha512", good, func() Record { return rec(t, DANEEE, SelectorSPKI, MatchSHA512, leafOf(t, good)) }, true},
		{"cert full", good, func() Record { return rec(t, DANEEE, SelectorCert, MatchFull, leafOf(t, good)) }, true},
		{"expired, other name", stale, func() Record { return rec(t, DANEEE, SelectorSPKI, MatchSHA256, leafOf(t, stale)) }, true},
		{"another key", good, func() Record { return rec(t, DANEEE, SelectorSPKI, MatchSHA256, leafOf(t, other)) }, false},
		// The CA of the chain is not the end entity.
		{"EE record of the CA", stale, func() Record { return rec(t, DANEEE, SelectorCert, MatchSHA256, ca.Cert) }, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := set(c.rec()).Verify(state(t, c.cert), names, time.Time{})
			if c.ok && err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if !c.ok && !errors.Is(err, ErrMismatch) {
				t.Fatalf("Verify = %v, want ErrMismatch", err)
			}
		})
	}
}

func TestDANETA(t *testing.T) {
	ca := testutil.NewCA(t, "Example CA")
	otherCA := testutil.NewCA(t, "Other CA")
	mx := ca.Issue(t, time.Time{}, time.Time{}, "mx.example.test")
	wild := ca.Issue(t, time.Time{}, time.Time{}, "*.example.test")
	forDomain := ca.Issue(t, time.Time{}, time.Time{}, "example.test")
	wrong := ca.Issue(t, time.Time{}, time.Time{}, "mx.elsewhere.test")
	expired := ca.Issue(t, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour), "mx.example.test")
	leafOnly := mx
	leafOnly.Certificate = leafOnly.Certificate[:1]
	names := []string{"mx.example.test", "example.test"}
	for _, c := range []struct {
		name  string
		cert  tls.Certificate
		rec   Record
		names []string
		ok    bool
	}{
		{"ca cert sha256", mx, rec(t, DANETA, SelectorCert, MatchSHA256, ca.Cert), names, true},
		{"ca spki sha512", mx, rec(t, DANETA, SelectorSPKI, MatchSHA512, ca.Cert), names, true},
		{"wildcard", wild, rec(t, DANETA, SelectorCert, MatchSHA256, ca.Cert), names, true},
		{"names the destination domain", forDomain, rec(t, DANETA, SelectorSPKI, MatchSHA256, ca.Cert), names, true},
		{"destination domain not a reference id", forDomain, rec(t, DANETA, SelectorSPKI, MatchSHA256, ca.Cert), names[:1], false},
		{"wrong name", wrong, rec(t, DANETA, SelectorCert, MatchSHA256, ca.Cert), names, false},
		{"expired", expired, rec(t, DANETA, SelectorCert, MatchSHA256, ca.Cert), names, false},
		{"anchor not sent", leafOnly, rec(t, DANETA, SelectorCert, MatchSHA256, ca.Cert), names, false},
		{"other anchor", mx, rec(t, DANETA, SelectorCert, MatchSHA256, otherCA.Cert), names, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := set(c.rec).Verify(state(t, c.cert), c.names, time.Time{})
			if c.ok && err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if !c.ok && !errors.Is(err, ErrMismatch) {
				t.Fatalf("Verify = %v, want ErrMismatch", err)
			}
		})
	}
}

// One matching record of several is enough, whatever its place.
func TestVerifyAnyRecord(t *testing.T) {
	c := testutil.SelfSigned(t, "mx.example.test")
	o := testutil.SelfSigned(t, "mx.example.test")
	s := set(rec(t, DANEEE, SelectorSPKI, MatchSHA256, leafOf(t, o)), rec(t, DANEEE, SelectorSPKI, MatchSHA256, leafOf(t, c)))
	if err := s.Verify(state(t, c), []string{"mx.example.test"}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(tls.ConnectionState{}, []string{"mx.example.test"}, time.Time{}); !errors.Is(err, ErrMismatch) {
		t.Fatalf("no certificate: %v", err)
	}
}

func TestNewRecordUnusable(t *testing.T) {
	h32 := hex.EncodeToString(make([]byte, 32))
	h64 := hex.EncodeToString(make([]byte, 64))
	for _, c := range []struct {
		u, s, m uint8
		data    string
		ok      bool
	}{
		{3, 1, 1, h32, true},
		{2, 0, 2, h64, true},
		{3, 0, 0, "3082", true},
		{0, 0, 1, h32, false}, // PKIX-TA
		{1, 1, 1, h32, false}, // PKIX-EE
		{4, 1, 1, h32, false},
		{3, 2, 1, h32, false},
		{3, 1, 3, h32, false},
		{3, 1, 1, h64, false}, // wrong length
		{3, 1, 2, h32, false},
		{3, 1, 0, "", false},
		{3, 1, 1, "zz", false},
	} {
		_, err := NewRecord(c.u, c.s, c.m, c.data)
		if (err == nil) != c.ok {
			t.Errorf("NewRecord(%d %d %d %.8s) = %v, want ok=%v", c.u, c.s, c.m, c.data, err, c.ok)
		}
	}
}

func TestLookup(t *testing.T) {
	c := testutil.SelfSigned(t, "mx.example.test")
	spki := sha256.Sum256(leafOf(t, c).RawSubjectPublicKeyInfo)
	d := testutil.StartDNS(t,
		fmt.Sprintf("_25._tcp.mx.example.test. TLSA 3 1 1 %x", spki),
		"_25._tcp.mx.example.test. TLSA 1 1 1 "+hex.EncodeToString(make([]byte, 32)),
		"_25._tcp.pkix.example.test. TLSA 1 1 1 "+hex.EncodeToString(make([]byte, 32)),
		"pkix.example.test. A 127.0.0.1",
	)
	r := &resolver.Resolver{Servers: []string{d.Addr}, TrustAD: true, Timeout: time.Second}
	ctx := testutil.Context(t)

	// Without the AD bit the records do not count (RFC 7672 §2.2).
	s, err := Lookup(ctx, r, "mx.example.test", 25)
	if err != nil || s.Found || s.Authenticate() {
		t.Fatalf("insecure: %+v, %v", s, err)
	}
	d.SetAD(true)
	s, err = Lookup(ctx, r, "MX.example.test.", 25)
	if err != nil || !s.Found || len(s.Records) != 1 || len(s.Unusable) != 1 || !s.Authenticate() {
		t.Fatalf("secure: %+v, %v", s, err)
	}
	if err := s.Verify(state(t, c), []string{"mx.example.test"}, time.Time{}); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	// Unusable records only: TLS is mandatory, the certificate is not
	// authenticated.
	s, err = Lookup(ctx, r, "pkix.example.test", 25)
	if err != nil || !s.Found || s.Authenticate() {
		t.Fatalf("unusable only: %+v, %v", s, err)
	}
	if err := s.Verify(state(t, testutil.SelfSigned(t, "x.test")), nil, time.Time{}); err != nil {
		t.Fatalf("unusable only: Verify = %v", err)
	}
	// No records (NXDOMAIN, NODATA): no DANE, no error.
	for _, h := range []string{"none.example.test", "pkix.example.test:587"} {
		port := 25
		if h == "pkix.example.test:587" {
			h, port = "pkix.example.test", 587
		}
		s, err = Lookup(ctx, r, h, port)
		if err != nil || s.Found {
			t.Fatalf("%s:%d: %+v, %v", h, port, s, err)
		}
	}
	// A failure is an error: the host must not be used.
	d.SetRcode(dns.RcodeServerFailure)
	if _, err := Lookup(ctx, r, "mx.example.test", 25); err == nil {
		t.Fatal("SERVFAIL: no error")
	}
}

func TestSetEqual(t *testing.T) {
	c := testutil.SelfSigned(t, "mx.example.test")
	a := set(rec(t, DANEEE, SelectorSPKI, MatchSHA256, leafOf(t, c)))
	b := set(rec(t, DANEEE, SelectorSPKI, MatchSHA256, leafOf(t, c)))
	if !a.Equal(b) {
		t.Fatal("equal sets differ")
	}
	if a.Equal(set(rec(t, DANEEE, SelectorSPKI, MatchSHA512, leafOf(t, c)))) || a.Equal(Set{}) {
		t.Fatal("different sets equal")
	}
}

// FuzzVerify feeds arbitrary TLSA fields to NewRecord and Verify: neither
// may panic, and a DANE-EE match must be a real one.
func FuzzVerify(f *testing.F) {
	ca := testutil.NewCA(f, "Fuzz CA")
	cert := ca.Issue(f, time.Time{}, time.Time{}, "mx.example.test")
	leaf := cert.Leaf
	spki := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	caSum := sha512.Sum512(ca.Cert.Raw)
	f.Add(uint8(3), uint8(1), uint8(1), hex.EncodeToString(spki[:]))
	f.Add(uint8(2), uint8(0), uint8(2), hex.EncodeToString(caSum[:]))
	f.Add(uint8(3), uint8(0), uint8(0), hex.EncodeToString(leaf.Raw))
	f.Add(uint8(1), uint8(1), uint8(1), "00")
	f.Add(uint8(3), uint8(9), uint8(9), "not hex")
	var st tls.ConnectionState
	st.PeerCertificates = []*x509.Certificate{leaf, ca.Cert}
	f.Fuzz(func(t *testing.T, u, s, m uint8, data string) {
		r, err := NewRecord(u, s, m, data)
		if err != nil {
			return
		}
		err = set(r).Verify(st, []string{"mx.example.test"}, time.Time{})
		if err == nil && u == DANEEE && !r.Matches(leaf) {
			t.Fatalf("%v verified without matching the leaf", r)
		}
		if err != nil && !errors.Is(err, ErrMismatch) {
			t.Fatalf("error %v does not wrap ErrMismatch", err)
		}
	})
}
