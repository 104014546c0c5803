package mtasts

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailroot/mailroot/internal/resolver"
	"github.com/mailroot/mailroot/internal/testutil"
)

const policyText = "version: STSv1\r\nmode: enforce\r\nmx: mx.sts.test\r\nmax_age: 86400\r\n"

// policyServer is a real HTTPS server on 127.0.0.1 serving a policy with
// a certificate for names; it counts its requests.
type policyServer struct {
	srv   *httptest.Server
	roots *x509.CertPool
	hits  atomic.Int32
	mu    sync.Mutex
	body  string
	ctype string
	code  int
}

func startPolicyServer(t *testing.T, names ...string) *policyServer {
	t.Helper()
	ps := &policyServer{body: policyText, ctype: "text/plain; charset=utf-8", code: 200}
	cert := testutil.SelfSigned(t, names...)
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	ps.roots = x509.NewCertPool()
	ps.roots.AddCert(leaf)
	ps.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ps.hits.Add(1)
		ps.mu.Lock()
		body, ctype, code := ps.body, ps.ctype, ps.code
		ps.mu.Unlock()
		if r.URL.Path != "/.well-known/mta-sts.txt" || !strings.HasPrefix(r.Host, "mta-sts.") {
			http.NotFound(w, r)
			return
		}
		if code == http.StatusFound {
			http.Redirect(w, r, "https://elsewhere.test/policy", code)
			return
		}
		w.Header().Set("Content-Type", ctype)
		w.WriteHeader(code)
		_, _ = w.Write([]byte(body))
	}))
	ps.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	ps.srv.StartTLS()
	t.Cleanup(ps.srv.Close)
	return ps
}

func (ps *policyServer) set(body, ctype string, code int) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.body, ps.ctype, ps.code = body, ctype, code
}

// dial sends every connection to the server (mta-sts.<domain>:443 in
// production).
func (ps *policyServer) dial(t *testing.T) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if !strings.HasPrefix(addr, "mta-sts.") || !strings.HasSuffix(addr, ":443") {
			t.Errorf("fetch dials %s, want mta-sts.<domain>:443", addr)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, ps.srv.Listener.Addr().String())
	}
}

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.t = c.t.Add(d) }

func newClient(t *testing.T, d *testutil.DNS, ps *policyServer, clk *clock) *Client {
	t.Helper()
	res, err := resolver.New(resolver.Config{Servers: []string{d.Addr}, Timeout: 2 * time.Second, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	ns := testutil.StartNATS(t)
	_, js := ns.Connect(t)
	kv, err := EnsureBucket(t.Context(), js, 1)
	if err != nil {
		t.Fatal(err)
	}
	return &Client{LookupTXT: res.LookupTXT, Addrs: res.Addrs, Dial: ps.dial(t), Roots: ps.roots, KV: kv, Now: clk.now}
}

// The policy is fetched once over verified HTTPS, then served from the KV
// bucket until the TXT id changes or its max_age is three quarters gone;
// a refresh that fails keeps the cached policy (RFC 8461 §5.1), and an
// expired one is gone.
func TestGetCachesAndRefreshes(t *testing.T) {
	d := testutil.StartDNS(t, `_mta-sts.sts.test. TXT "v=STSv1; id=one"`)
	ps := startPolicyServer(t, "mta-sts.sts.test")
	clk := &clock{t: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	c := newClient(t, d, ps, clk)
	ctx := t.Context()

	r := c.Get(ctx, "sts.test")
	if r.Err != nil || r.Policy == nil || !r.Fetched || r.ID != "one" || r.Policy.Mode != Enforce || !r.Policy.Match("mx.sts.test") {
		t.Fatalf("first Get = %+v", r)
	}
	for range 3 {
		if r = c.Get(ctx, "sts.test"); r.Fetched || r.Policy == nil || r.Err != nil {
			t.Fatalf("cached Get = %+v", r)
		}
	}
	// A second client (another delivery process) shares the cache.
	c2 := &Client{LookupTXT: c.LookupTXT, Dial: c.Dial, Roots: c.Roots, KV: c.KV, Now: clk.now}
	if r = c2.Get(ctx, "sts.test"); r.Fetched || r.Policy == nil {
		t.Fatalf("other process's Get = %+v", r)
	}
	if n := ps.hits.Load(); n != 1 {
		t.Fatalf("%d HTTPS requests, want 1", n)
	}

	// A new id: fetched anew.
	d2 := testutil.StartDNS(t, `_mta-sts.sts.test. TXT "v=STSv1; id=two"`)
	res2, _ := resolver.New(resolver.Config{Servers: []string{d2.Addr}, Timeout: 2 * time.Second, Attempts: 1})
	c.LookupTXT = res2.LookupTXT
	ps.set(strings.Replace(policyText, "enforce", "testing", 1), "text/plain", 200)
	if r = c.Get(ctx, "sts.test"); !r.Fetched || r.ID != "two" || r.Policy.Mode != Testing {
		t.Fatalf("Get after the id changed = %+v", r)
	}

	// Near expiry the refresh fails: the cached policy holds, with the error.
	ps.set("", "text/plain", 500)
	clk.add(19 * time.Hour)
	r = c.Get(ctx, "sts.test")
	if r.Policy == nil || r.Policy.Mode != Testing || r.Err == nil || !strings.Contains(r.Err.Error(), "500") {
		t.Fatalf("Get with a failing refresh = %+v", r)
	}
	if n := ps.hits.Load(); n != 3 {
		t.Errorf("%d HTTPS requests, want 3", n)
	}
	// Past max_age nothing is left.
	clk.add(6 * time.Hour)
	if r = c.Get(ctx, "sts.test"); r.Policy != nil || r.Err == nil {
		t.Fatalf("Get after expiry = %+v", r)
	}
}

// What the fetch refuses: a redirect, another content type, a policy
// that does not parse, a certificate not for mta-sts.<domain>, a body
// over 64 KiB, a server too slow. None gives a policy.
func TestFetchRefuses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		names  []string
		body   string
		ctype  string
		code   int
		reason string
	}{
		{"redirect", []string{"mta-sts.sts.test"}, policyText, "text/plain", http.StatusFound, "302"},
		{"html", []string{"mta-sts.sts.test"}, policyText, "text/html", 200, "content type"},
		{"not a policy", []string{"mta-sts.sts.test"}, "hello", "text/plain", 200, "invalid policy"},
		{"certificate for another name", []string{"www.sts.test"}, policyText, "text/plain", 200, "certificate"},
		{"too large", []string{"mta-sts.sts.test"}, policyText + strings.Repeat("x: y\n", MaxPolicySize/4), "text/plain", 200, "larger"},
		{"no TXT id", nil, "", "", 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			zone := `_mta-sts.sts.test. TXT "v=STSv1; id=one"`
			if tc.names == nil {
				zone = `_mta-sts.sts.test. TXT "v=spf1 -all"`
				tc.names = []string{"mta-sts.sts.test"}
			}
			d := testutil.StartDNS(t, zone)
			ps := startPolicyServer(t, tc.names...)
			if tc.code != 0 {
				ps.set(tc.body, tc.ctype, tc.code)
			}
			c := newClient(t, d, ps, &clock{t: time.Now()})
			r := c.Get(t.Context(), "sts.test")
			if r.Policy != nil {
				t.Fatalf("Get = %+v, want no policy", r)
			}
			if tc.reason == "" {
				if r.Err != nil || ps.hits.Load() != 0 {
					t.Errorf("no STSv1 record: err %v, %d fetches; want none", r.Err, ps.hits.Load())
				}
				return
			}
			if r.Err == nil || !strings.Contains(r.Err.Error(), tc.reason) {
				t.Errorf("error %v, want one naming %q", r.Err, tc.reason)
			}
		})
	}
}

// A policy server that does not answer is given up after the timeout.
func TestFetchTimeout(t *testing.T) {
	d := testutil.StartDNS(t, `_mta-sts.sts.test. TXT "v=STSv1; id=one"`)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() { // accepts, never speaks TLS
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { _ = conn.Close() })
		}
	}()
	ps := &policyServer{roots: x509.NewCertPool()}
	c := newClient(t, d, ps, &clock{t: time.Now()})
	c.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, l.Addr().String())
	}
	c.Timeout = 300 * time.Millisecond
	start := time.Now()
	r := c.Get(t.Context(), "sts.test")
	if r.Policy != nil || r.Err == nil {
		t.Fatalf("Get = %+v", r)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Get took %v with a 300 ms timeout", took)
	}
}
