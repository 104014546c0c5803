package users

import (
	"net/netip"
	"sync"
	"time"

	"github.com/mailroot/mailroot/internal/config"
)

// Limiter counts failed logins per client address, for SMTP AUTH and the
// admin console alike ([auth] fail_limit, fail_window, ban, fail_delay):
// each failure's answer is delayed by fail_delay times the recent
// failures (back-off), and after fail_limit failures within fail_window
// the address may not try again for ban.
type Limiter struct {
	cfg config.Auth
	// Now is the clock (a test seam).
	Now func() time.Time

	mu sync.Mutex
	m  map[netip.Addr]*failures
}

type failures struct {
	times       []time.Time
	bannedUntil time.Time
}

// NewLimiter returns a limiter with cfg's limits.
func NewLimiter(cfg config.Auth) *Limiter {
	return &Limiter{cfg: cfg, Now: time.Now, m: map[netip.Addr]*failures{}}
}

// Banned reports whether ip may not try to log in now.
func (l *Limiter) Banned(ip netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.m[ip]
	return f != nil && l.Now().Before(f.bannedUntil)
}

// Fail records a failure and returns the back-off delay and whether ip is
// now banned.
func (l *Limiter) Fail(ip netip.Addr) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.Now()
	if len(l.m) > 10000 {
		l.prune(now)
	}
	f := l.m[ip]
	if f == nil {
		f = &failures{}
		l.m[ip] = f
	}
	keep := f.times[:0]
	for _, t := range f.times {
		if now.Sub(t) < l.cfg.FailWindow.D() {
			keep = append(keep, t)
		}
	}
	f.times = append(keep, now)
	n := len(f.times)
	if n >= l.cfg.FailLimit {
		f.bannedUntil = now.Add(l.cfg.Ban.D())
		f.times = nil
	}
	return min(time.Duration(n)*l.cfg.FailDelay.D(), 10*time.Second), n >= l.cfg.FailLimit
}

func (l *Limiter) prune(now time.Time) {
	for ip, f := range l.m {
		if now.After(f.bannedUntil) && (len(f.times) == 0 || now.Sub(f.times[len(f.times)-1]) > l.cfg.FailWindow.D()) {
			delete(l.m, ip)
		}
	}
}
