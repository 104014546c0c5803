package resolver

import (
	"time"

	"github.com/miekg/dns"
)

type cacheKey struct {
	name  string
	qtype uint16
}

type cached struct {
	answer  Answer
	err     error
	expires time.Time
}

func (r *Resolver) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Resolver) fromCache(k cacheKey) (*cached, bool) {
	if r.CacheSize <= 0 {
		return nil, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.cache[k]
	if !ok {
		return nil, false
	}
	if !r.now().Before(c.expires) {
		delete(r.cache, k)
		return nil, false
	}
	return c, true
}

// toCache keeps an answer for the smallest TTL of its records (negative
// answers: the SOA's minimum, RFC 2308 §5), capped at MaxCacheTTL.
func (r *Resolver) toCache(k cacheKey, resp *dns.Msg, a Answer, err error) {
	if r.CacheSize <= 0 {
		return
	}
	limit := r.MaxCacheTTL
	if limit <= 0 {
		limit = 5 * time.Minute
	}
	ttl := limit
	rrs := a.RRs
	if err != nil {
		// No SOA in the answer: not kept, as there is no TTL to go by.
		rrs, ttl = nil, 0
		for _, rr := range resp.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				ttl = min(limit, time.Duration(min(soa.Minttl, soa.Hdr.Ttl))*time.Second)
			}
		}
	}
	for _, rr := range rrs {
		ttl = min(ttl, time.Duration(rr.Header().Ttl)*time.Second)
	}
	if ttl <= 0 {
		return
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cache == nil {
		r.cache = make(map[cacheKey]*cached)
	}
	if len(r.cache) >= r.CacheSize {
		// Drop the expired, then, if still full, any one: a bounded map
		// without an LRU list is enough for a cache in front of a
		// resolver that caches too.
		for ck, c := range r.cache {
			if !now.Before(c.expires) {
				delete(r.cache, ck)
			}
		}
		for ck := range r.cache {
			if len(r.cache) < r.CacheSize {
				break
			}
			delete(r.cache, ck)
		}
	}
	r.cache[k] = &cached{answer: a, err: err, expires: now.Add(ttl)}
}
