package resolver

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mailroot/mailroot/internal/testutil"
)

func newTest(servers ...string) *Resolver {
	return &Resolver{Servers: servers, Timeout: 300 * time.Millisecond, Attempts: 1}
}

func TestNegativeAnswersAreToldApart(t *testing.T) {
	d := testutil.StartDNS(t, "a.test. A 192.0.2.1", "a.test. TXT \"v=spf1 -all\"")
	r := newTest(d.Addr)
	ctx := context.Background()

	if _, err := r.Lookup(ctx, "nope.test", dns.TypeA); !errors.Is(err, ErrNXDomain) {
		t.Fatalf("unknown name: %v, want ErrNXDomain", err)
	}
	_, err := r.Lookup(ctx, "a.test", dns.TypeMX)
	if !errors.Is(err, ErrNoData) {
		t.Fatalf("no MX: %v, want ErrNoData", err)
	}
	var de *net.DNSError
	if !errors.As(err, &de) || !de.IsNotFound || de.IsTemporary {
		t.Fatalf("no MX: %#v, want a not-found *net.DNSError", err)
	}
	txt, err := r.LookupTXT(ctx, "A.TEST.")
	if err != nil || !slices.Equal(txt, []string{"v=spf1 -all"}) {
		t.Fatalf("TXT: %q, %v", txt, err)
	}
	addrs, err := r.Addrs(ctx, "a.test")
	if err != nil || !slices.Equal(addrs, []netip.Addr{netip.MustParseAddr("192.0.2.1")}) {
		t.Fatalf("Addrs: %v, %v", addrs, err)
	}
}

func TestFailsOverToTheNextServer(t *testing.T) {
	dead := testutil.StartDNS(t)
	dead.SetSilent(true)
	failing := testutil.StartDNS(t)
	failing.SetRcode(dns.RcodeServerFailure)
	good := testutil.StartDNS(t, "mx.test. A 192.0.2.7")

	r := newTest(dead.Addr, failing.Addr, good.Addr)
	addrs, err := r.LookupNetIP(context.Background(), "ip4", "mx.test")
	if err != nil || len(addrs) != 1 || addrs[0] != netip.MustParseAddr("192.0.2.7") {
		t.Fatalf("got %v, %v; want the third server's answer", addrs, err)
	}
	if dead.Queries() == 0 || failing.Queries() == 0 {
		t.Fatalf("servers asked: dead %d, failing %d; want each asked before the next", dead.Queries(), failing.Queries())
	}
}

func TestAllServersDownIsTemporary(t *testing.T) {
	dead := testutil.StartDNS(t)
	dead.SetSilent(true)
	r := newTest(dead.Addr)
	r.Attempts = 2
	_, err := r.Lookup(context.Background(), "x.test", dns.TypeA)
	var de *net.DNSError
	if !errors.As(err, &de) || !de.IsTemporary || !de.IsTimeout || IsNegative(err) {
		t.Fatalf("got %#v, want a temporary timeout", err)
	}
	if dead.Queries() != 2 {
		t.Fatalf("%d questions, want 2 (one per attempt)", dead.Queries())
	}

	// The caller's deadline bounds the whole lookup.
	r.Attempts, r.Timeout = 10, time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := r.Lookup(ctx, "x.test", dns.TypeA); err == nil {
		t.Fatal("lookup against a dead server succeeded")
	}
	if took := time.Since(start); took > 900*time.Millisecond {
		t.Fatalf("lookup took %v past a 200ms deadline", took)
	}
}

func TestADBitOnlyFromATrustedResolver(t *testing.T) {
	d := testutil.StartDNS(t, "_25._tcp.mx.test. TLSA 3 1 1 aabbcc")
	d.SetAD(true)
	ctx := context.Background()
	untrusted := newTest(d.Addr)
	a, err := untrusted.LookupSecure(ctx, "_25._tcp.mx.test", dns.TypeTLSA)
	if err != nil || len(a.RRs) != 1 || a.Secure {
		t.Fatalf("untrusted: %+v, %v; want the record, not secure", a, err)
	}
	trusted := newTest(d.Addr)
	trusted.TrustAD = true
	if a, err = trusted.LookupSecure(ctx, "_25._tcp.mx.test", dns.TypeTLSA); err != nil || !a.Secure {
		t.Fatalf("trusted with AD: %+v, %v; want secure", a, err)
	}
	d.SetAD(false)
	if a, err = trusted.LookupSecure(ctx, "_25._tcp.mx.test", dns.TypeTLSA); err != nil || a.Secure {
		t.Fatalf("trusted without AD: %+v, %v; want not secure", a, err)
	}
}

func TestConfirmedName(t *testing.T) {
	rev6, err := dns.ReverseAddr("2001:db8::1")
	if err != nil {
		t.Fatal(err)
	}
	d := testutil.StartDNS(t,
		"7.2.0.192.in-addr.arpa. PTR Mail.Example.test.",
		"mail.example.test. A 192.0.2.7",
		"8.2.0.192.in-addr.arpa. PTR liar.test.",
		"liar.test. A 192.0.2.99",
		rev6+" PTR v6.example.test.",
		"v6.example.test. AAAA 2001:db8::1",
	)
	r := newTest(d.Addr)
	ctx := context.Background()
	for ip, want := range map[string]string{
		"192.0.2.7":   "mail.example.test",
		"192.0.2.8":   "", // the PTR name does not point back
		"192.0.2.9":   "", // no PTR
		"2001:db8::1": "v6.example.test",
	} {
		got, err := r.ConfirmedName(ctx, netip.MustParseAddr(ip))
		if err != nil || got != want {
			t.Errorf("ConfirmedName(%s) = %q, %v; want %q", ip, got, err, want)
		}
	}
}

func TestCacheKeepsAnswersForTheirTTL(t *testing.T) {
	d := testutil.StartDNS(t, "c.test. 60 IN A 192.0.2.1")
	now := time.Unix(1e9, 0)
	r := newTest(d.Addr)
	r.CacheSize = 10
	r.Now = func() time.Time { return now }
	ctx := context.Background()
	for range 3 {
		if _, err := r.Lookup(ctx, "c.test", dns.TypeA); err != nil {
			t.Fatal(err)
		}
	}
	if q := d.Queries(); q != 1 {
		t.Fatalf("%d questions for 3 lookups within the TTL, want 1", q)
	}
	now = now.Add(61 * time.Second)
	if _, err := r.Lookup(ctx, "c.test", dns.TypeA); err != nil {
		t.Fatal(err)
	}
	if q := d.Queries(); q != 2 {
		t.Fatalf("%d questions after the TTL ran out, want 2", q)
	}
	// Negative answers without an SOA are not kept.
	for range 2 {
		_, _ = r.Lookup(ctx, "none.test", dns.TypeA)
	}
	if q := d.Queries(); q != 4 {
		t.Fatalf("%d questions, want 4: a negative answer with no SOA is not cached", q)
	}
	// The cache stays within its size.
	for i := range 30 {
		d.Add(t, "n"+string(rune('a'+i))+".test. 60 IN A 192.0.2.1")
		_, _ = r.Lookup(ctx, "n"+string(rune('a'+i))+".test", dns.TypeA)
	}
	if n := len(r.cache); n > r.CacheSize {
		t.Fatalf("cache holds %d answers, more than its size %d", n, r.CacheSize)
	}
}

func TestSystemServers(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(p, []byte("nameserver 192.0.2.53\nnameserver 2001:db8::53\noptions timeout:1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := SystemServers(p)
	if err != nil || !slices.Equal(got, []string{"192.0.2.53:53", "[2001:db8::53]:53"}) {
		t.Fatalf("got %q, %v; want both nameservers", got, err)
	}
	if err := os.WriteFile(p, []byte("search example.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := SystemServers(p); err == nil {
		t.Fatal("a resolv.conf without nameservers was accepted")
	}
}
