package mtasts

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/resolver"
)

// Bucket is the NATS KV bucket of fetched policies, one key per domain
// (docs/DESIGN.md §2): every delivery process shares them.
const Bucket = "mta-sts"

// FetchTimeout bounds one policy fetch, connect to last byte (RFC 8461
// §3.3 suggests a minute at most; a slow policy server must not hold a
// delivery slot long).
const FetchTimeout = 10 * time.Second

// EnsureBucket creates or updates the policy cache bucket. Entries carry
// their own expiry (the policy's max_age); the bucket's MaxAge, a little
// more than the longest max_age, only clears domains no longer mailed.
func EnsureBucket(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "MTA-STS policies of remote domains (RFC 8461), cached for their max_age",
		History:     1,
		TTL:         MaxAge + 7*24*time.Hour,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("mtasts: create kv %s: %w", Bucket, err)
	}
	return kv, nil
}

// Client finds the MTA-STS policies of domains. The exported fields are
// its settings and test seams.
type Client struct {
	// LookupTXT asks DNS for TXT records (internal/resolver's).
	LookupTXT func(ctx context.Context, name string) ([]string, error)
	// Addrs resolves the policy host (internal/resolver's Addrs), used
	// by the default Dial.
	Addrs func(ctx context.Context, host string) ([]netip.Addr, error)
	// Dial connects to "host:port" for the HTTPS fetch; nil: resolve host
	// with Addrs and connect to each address in turn. Tests map
	// mta-sts.<domain>:443 to a local server.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Roots verify the policy server's certificate (nil: the system's).
	Roots *x509.CertPool
	// KV caches policies (EnsureBucket); nil: every Get fetches.
	KV jetstream.KeyValue
	// Now is the clock of the cache.
	Now func() time.Time
	// Timeout bounds a fetch (FetchTimeout when zero).
	Timeout time.Duration

	http *http.Client
}

// Result is what Get found for a domain.
type Result struct {
	// Policy is the policy in force, nil when the domain has none (or
	// none could be had: Err says why).
	Policy *Policy
	// ID is the policy's id from the TXT record it was fetched under.
	ID string
	// Fetched is true when the policy was fetched over HTTPS by this Get,
	// false when it came from the cache.
	Fetched bool
	// Err is a failure on the way: the TXT lookup, or the fetch of a
	// new policy. With a Policy, the cached one was used instead (§5.1);
	// without, the domain is treated as having no policy. TLS-RPT
	// reports it as sts-policy-fetch-error.
	Err error
}

// cached is a policy as stored in the bucket.
type cached struct {
	ID      string    `json:"id"`
	Policy  string    `json:"policy"`
	Fetched time.Time `json:"fetched"`
	Expires time.Time `json:"expires"`
}

// Get returns the policy in force for domain (an A-label, lower case):
// the TXT record's id decides whether the cached policy is current; a
// policy is fetched when there is none cached, the id changed, or the
// cached copy is in the last quarter of its max_age; a refresh that fails
// falls back to the cached policy while it has not expired.
func (c *Client) Get(ctx context.Context, domain string) Result {
	now := c.now()
	cur, haveCache := c.load(ctx, domain, now)
	txts, err := c.LookupTXT(ctx, "_mta-sts."+domain)
	var id string
	found := false
	if err == nil {
		id, found, err = ParseRecord(txts)
	} else if resolver.IsNegative(err) {
		err = nil // no record: no policy published, a cached one still holds
	}
	switch {
	case err != nil:
		err = fmt.Errorf("txt _mta-sts.%s: %w", domain, err)
		if haveCache {
			return Result{Policy: cur.p, ID: cur.ID, Err: err}
		}
		return Result{Err: err}
	case !found:
		// §5.1 (policy withdrawn by removing the record): a cached
		// policy stays in force until it expires.
		if haveCache {
			return Result{Policy: cur.p, ID: cur.ID}
		}
		return Result{}
	case haveCache && cur.ID == id && now.Before(cur.Fetched.Add(cur.p.MaxAge*3/4)):
		return Result{Policy: cur.p, ID: cur.ID}
	}
	p, body, err := c.fetch(ctx, domain)
	if err != nil {
		err = fmt.Errorf("fetch policy of %s: %w", domain, err)
		if haveCache {
			return Result{Policy: cur.p, ID: cur.ID, Err: err}
		}
		return Result{ID: id, Err: err}
	}
	c.store(ctx, domain, cached{ID: id, Policy: body, Fetched: now, Expires: now.Add(p.MaxAge)})
	return Result{Policy: p, ID: id, Fetched: true}
}

type entry struct {
	cached
	p *Policy
}

// load returns the cached, unexpired policy of domain.
func (c *Client) load(ctx context.Context, domain string, now time.Time) (entry, bool) {
	if c.KV == nil {
		return entry{}, false
	}
	kve, err := c.KV.Get(ctx, domain)
	if err != nil {
		return entry{}, false
	}
	var e entry
	if json.Unmarshal(kve.Value(), &e.cached) != nil || !now.Before(e.Expires) {
		return entry{}, false
	}
	if e.p, err = Parse([]byte(e.Policy)); err != nil {
		return entry{}, false
	}
	return e, true
}

// store caches a fetched policy; a failure only costs a fetch later.
func (c *Client) store(ctx context.Context, domain string, e cached) {
	if c.KV == nil {
		return
	}
	b, _ := json.Marshal(e)
	_, _ = c.KV.Put(ctx, domain, b)
}

// fetch gets and parses https://mta-sts.<domain>/.well-known/mta-sts.txt
// (RFC 8461 §3.3): a certificate that verifies for mta-sts.<domain>, a
// 200 without redirects, text/plain, at most MaxPolicySize bytes.
func (c *Client) fetch(ctx context.Context, domain string) (*Policy, string, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = FetchTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://mta-sts."+domain+"/.well-known/mta-sts.txt", nil)
	if err != nil {
		return nil, "", err
	}
	resp, err := c.client().Do(req)
	if err != nil {
		return nil, "", err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, "", fmt.Errorf("HTTP status %s (redirects are not followed)", resp.Status)
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != "text/plain" {
		return nil, "", fmt.Errorf("content type %q, want text/plain", resp.Header.Get("Content-Type"))
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxPolicySize+1))
	if err != nil {
		return nil, "", fmt.Errorf("read policy: %w", err)
	}
	if len(b) > MaxPolicySize {
		return nil, "", fmt.Errorf("policy larger than %d bytes", MaxPolicySize)
	}
	p, err := Parse(b)
	if err != nil {
		return nil, "", err
	}
	return p, string(b), nil
}

// client is the HTTPS client of the fetches, made once.
func (c *Client) client() *http.Client {
	if c.http != nil {
		return c.http
	}
	dial := c.Dial
	if dial == nil {
		dial = c.dialResolved
	}
	c.http = &http.Client{
		Transport: &http.Transport{
			Proxy:                  nil, // straight to the domain, as an MTA does
			DialContext:            dial,
			TLSClientConfig:        &tls.Config{RootCAs: c.Roots, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout:    FetchTimeout,
			DisableKeepAlives:      true, // one fetch per domain per max_age
			MaxResponseHeaderBytes: 16 << 10,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c.http
}

// dialResolved connects to addr's host through Addrs (the configured DNS
// servers), trying each address in turn.
func (c *Client) dialResolved(ctx context.Context, network, addr string) (net.Conn, error) {
	return resolver.DialVia(c.Addrs)(ctx, network, addr)
}

func (c *Client) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}
