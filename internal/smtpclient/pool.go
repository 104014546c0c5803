package smtpclient

import (
	"context"
	"sync"
	"time"
)

// quitTimeout bounds the wait for the reply to QUIT when a Pool ends a
// session: the message is long delivered, QUIT is a courtesy.
const quitTimeout = 5 * time.Second

// rsetTimeout bounds the RSET that starts the next transaction on a
// session from the pool (Postfix's smtp_rset_timeout).
const rsetTimeout = 20 * time.Second

// Dest is where a session goes and as whom: two sessions with the same
// Dest and the same TLS state are interchangeable.
type Dest struct {
	// Addr is the address dialled, "ip:port".
	Addr string
	// Host is the server's name: TLS SNI, and the name in reports.
	Host string
	// Hostname is the name we said in EHLO.
	Hostname string
	// User is who the session logged in as ("" for none): a login is
	// never lent to mail that did not ask for it.
	User string
	// Verifier names how the session's certificate was checked
	// (Options.Verifier; "" for WebPKI against the roots for Host): the
	// session's Verified is true or false under that check alone, so a
	// request asks for the Verifier its TLS policy uses.
	Verifier string
}

// key is a Dest with the TLS state the session reached. The check its
// certificate passed or failed is Dest.Verifier: a request takes only a
// session checked its own way, and decides by Client.Verified whether
// the session may carry its mail (delivery's TLS policy).
type key struct {
	Dest
	// tls is true once STARTTLS was done (opportunistic: the certificate
	// is not verified), false for plain text (not offered, refused, or
	// the plain retry after a failed handshake).
	tls bool
}

// PoolLimits bound what a Pool keeps. Zero Idle disables the cache: Put
// only says QUIT.
type PoolLimits struct {
	// Idle is how long a session waits in the cache for the next message
	// (Postfix's smtp_connection_cache_time_limit, 2 s).
	Idle time.Duration
	// MaxAge is how long after its connect a session may still take a
	// message (smtp_connection_reuse_time_limit, 300 s); 0 = no limit.
	MaxAge time.Duration
	// MaxUses is how many transactions one session may carry
	// (smtp_connection_reuse_count_limit); 0 = no limit.
	MaxUses int
	// MaxIdlePerDest and MaxIdle bound the idle sessions to one Dest and
	// in all; 0 = no limit. A Put over MaxIdle closes the session that
	// has waited longest.
	MaxIdlePerDest, MaxIdle int
}

// Pool keeps sessions open between messages, so that the next message to
// the same server goes over the same connection instead of a new connect,
// EHLO and STARTTLS. It takes only what Dial made: a session from New
// (ATRN's turned connection) is never cached.
//
// A session is put back after a transaction whose connection is sound
// (every reply read, no 421), once a RSET got its 250; an idle session is
// ended with QUIT after PoolLimits.Idle. Get takes the session that was
// put back last. A session that the remote closed meanwhile fails its
// first command with ErrStale. A Pool is safe for concurrent use.
type Pool struct {
	lim PoolLimits

	mu     sync.Mutex
	idle   map[key][]idleSession // oldest first
	n      int                   // idle sessions in all
	timer  *time.Timer           // the janitor, while sessions are idle
	closed bool
	quits  sync.WaitGroup // QUITs of sessions the janitor ended

	stats PoolStats
}

type idleSession struct {
	c     *Client
	since time.Time
}

// PoolStats counts what a Pool did.
type PoolStats struct {
	// Hits is the sessions Get returned, Misses the times it had none.
	Hits, Misses int
	// Kept is the sessions Put cached.
	Kept int
	// Idle is the number of sessions in the cache now.
	Idle int
}

// NewPool returns an empty pool.
func NewPool(lim PoolLimits) *Pool {
	return &Pool{lim: lim, idle: map[key][]idleSession{}}
}

// Stats returns the pool's counters.
func (p *Pool) Stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.Idle = p.n
	return s
}

// Get returns an idle session to d, or nil. A TLS session is preferred;
// with tlsOnly, a plain-text one is never returned. The session is bound
// to ctx as Dial binds it: the end of ctx closes its connection.
func (p *Pool) Get(ctx context.Context, d Dest, tlsOnly bool) *Client {
	if p == nil || p.lim.Idle <= 0 {
		return nil
	}
	now := time.Now()
	var c *Client
	var expired []*Client
	p.mu.Lock()
	for _, k := range []key{{d, true}, {d, false}} {
		if !k.tls && tlsOnly {
			break
		}
		l := p.idle[k]
		for c == nil && len(l) > 0 {
			s := l[len(l)-1]
			l[len(l)-1] = idleSession{}
			l = l[:len(l)-1]
			p.n--
			if p.expired(s, now) {
				expired = append(expired, s.c)
				continue
			}
			c = s.c
		}
		p.set(k, l)
		if c != nil {
			break
		}
	}
	if c != nil {
		p.stats.Hits++
	} else {
		p.stats.Misses++
	}
	p.mu.Unlock()
	for _, e := range expired {
		p.quitLater(e)
	}
	if c != nil {
		c.pooled = true
		c.bind(ctx)
	}
	return c
}

// Put takes back c after a transaction (or after a Send that sent
// nothing): it keeps the session when the connection is sound and within
// the limits, else it says QUIT. Either way the caller is done with c.
// Nothing is said to keep it: the next Send on it starts with RSET, which
// proves it alive and rolls back anything left open.
func (p *Pool) Put(c *Client) {
	if p == nil || p.lim.Idle <= 0 || c.dest == (Dest{}) || c.broken || p.worn(c, time.Now()) {
		p.end(c)
		return
	}
	k := key{c.dest, c.isTLS}
	full := func() bool { // with p.mu held
		return p.closed || p.lim.MaxIdlePerDest > 0 && len(p.idle[k]) >= p.lim.MaxIdlePerDest
	}
	if !c.release() {
		c.Close() // the caller's context ended: the connection is closed
		return
	}
	p.mu.Lock()
	if full() {
		p.mu.Unlock()
		c.quitWithin(quitTimeout)
		return
	}
	var evicted *Client
	if p.lim.MaxIdle > 0 && p.n >= p.lim.MaxIdle {
		evicted = p.evictOldest()
	}
	p.idle[k] = append(p.idle[k], idleSession{c: c, since: time.Now()})
	p.n++
	p.stats.Kept++
	if p.timer == nil {
		p.timer = time.AfterFunc(p.tick(), p.sweep)
	}
	p.mu.Unlock()
	if evicted != nil {
		p.quitLater(evicted)
	}
}

// end says QUIT to a session that is not kept; a broken one is only closed.
func (p *Pool) end(c *Client) {
	if c.broken {
		c.Close()
		return
	}
	timeout := c.timeout
	if p != nil && p.lim.Idle > 0 {
		timeout = min(timeout, quitTimeout)
	}
	c.quitWithin(timeout)
}

// Close ends every idle session with QUIT, waiting at most timeout for
// the replies, and makes later Puts say QUIT: the pool is drained on
// shutdown.
func (p *Pool) Close(timeout time.Duration) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.closed = true
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	var all []*Client
	for _, l := range p.idle {
		for _, s := range l {
			all = append(all, s.c)
		}
	}
	clear(p.idle)
	p.n = 0
	p.mu.Unlock()
	d := min(timeout, quitTimeout)
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for _, c := range all {
		wg.Go(func() { c.quitWithin(d) })
	}
	wg.Wait()
	// The janitor's QUITs started earlier get what is left of d.
	done := make(chan struct{})
	go func() { p.quits.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Until(deadline)):
	}
}

// worn reports whether c may carry no more messages.
func (p *Pool) worn(c *Client, now time.Time) bool {
	return p.lim.MaxUses > 0 && c.txns >= p.lim.MaxUses || p.lim.MaxAge > 0 && now.Sub(c.born) >= p.lim.MaxAge
}

// expired reports whether an idle session is past its time.
func (p *Pool) expired(s idleSession, now time.Time) bool {
	return now.Sub(s.since) >= p.lim.Idle || p.worn(s.c, now)
}

// set stores l as k's idle list (with p.mu held).
func (p *Pool) set(k key, l []idleSession) {
	if len(l) == 0 {
		delete(p.idle, k)
	} else {
		p.idle[k] = l
	}
}

// evictOldest takes out the session idle longest (with p.mu held).
func (p *Pool) evictOldest() *Client {
	var oldest key
	found := false
	for k, l := range p.idle {
		if !found || l[0].since.Before(p.idle[oldest][0].since) {
			oldest, found = k, true
		}
	}
	if !found {
		return nil
	}
	l := p.idle[oldest]
	c := l[0].c
	l[0] = idleSession{}
	p.set(oldest, l[1:])
	p.n--
	return c
}

// tick is how often the janitor looks: an idle session is closed at most
// a quarter of Idle late.
func (p *Pool) tick() time.Duration {
	return min(max(p.lim.Idle/4, 10*time.Millisecond), time.Second)
}

// sweep is the janitor: it ends the sessions idle for too long and runs
// again while any are left.
func (p *Pool) sweep() {
	now := time.Now()
	var expired []*Client
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	for k, l := range p.idle {
		keep := l[:0]
		for _, s := range l {
			if p.expired(s, now) {
				expired = append(expired, s.c)
				p.n--
			} else {
				keep = append(keep, s)
			}
		}
		clear(l[len(keep):])
		p.set(k, keep)
	}
	if p.n > 0 {
		p.timer.Reset(p.tick())
	} else {
		p.timer = nil
	}
	p.quits.Add(len(expired))
	p.mu.Unlock()
	for _, c := range expired {
		go p.quit(c)
	}
}

// quit ends c, counted in p.quits already.
func (p *Pool) quit(c *Client) {
	defer p.quits.Done()
	c.quitWithin(quitTimeout)
}

// quitLater ends c in the background; Close waits for it.
func (p *Pool) quitLater(c *Client) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.quitWithin(quitTimeout)
		return
	}
	p.quits.Add(1)
	p.mu.Unlock()
	go p.quit(c)
}
