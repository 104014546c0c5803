package tlsrpt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// FlushEvery is how often a Counter publishes what it counted when its
// Every is zero.
const FlushEvery = 10 * time.Second

// Counter counts session outcomes in memory and publishes them in
// batches: at each flush one record per distinct outcome of the interval
// (domain, day, policy, result type, MX host, address, reason) carrying
// its Count, so the cost on the delivery path is a map update under a
// mutex, and the stream gets a few records per domain every Every rather
// than one per session. The records of every delivery process add up in
// the Reporter. A flush that fails keeps its counts for the next one; a
// stopped Counter flushes once more. A crash loses at most the counts of
// one interval (statistics, not mail).
type Counter struct {
	// JS publishes to the TLSRPT stream.
	JS jetstream.JetStream
	// ID names this process in the records' Nats-Msg-Id, so that a
	// retried flush is deduplicated ("host.pid.start").
	ID string
	// Now is the clock that dates a session (UTC day).
	Now func() time.Time
	// Every is the flush interval (FlushEvery when zero).
	Every time.Duration
	// Log says when a flush failed.
	Log *slog.Logger

	mu      sync.Mutex
	pending map[counterKey]*Result
	seq     uint64
	failing bool
}

type counterKey struct {
	day, domain, ptype, pstring, mx string
	success                         bool
	rtype, rmx, rip, reason         string
}

// Add counts r (its Count, or one) for the current UTC day.
func (c *Counter) Add(r Result) {
	k := counterKey{day: Day(c.Now()), domain: r.Domain, ptype: r.PolicyType, pstring: strings.Join(r.PolicyString, "\n"),
		mx: strings.Join(r.MXHost, ","), success: r.Success, rtype: r.ResultType, rmx: r.ReceivingMX, rip: r.ReceivingIP, reason: r.Reason}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.pending[k]; ok {
		p.Count += r.n()
		return
	}
	if c.pending == nil {
		c.pending = map[counterKey]*Result{}
	}
	r.Count = r.n()
	c.pending[k] = &r
}

// Pending is the number of sessions counted and not yet published.
func (c *Counter) Pending() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for _, r := range c.pending {
		n += r.Count
	}
	return n
}

// Flush publishes what was counted since the last flush, waiting for the
// stream's acknowledgements. What could not be published is counted
// again for the next flush.
func (c *Counter) Flush(ctx context.Context) error {
	c.mu.Lock()
	batch := c.pending
	c.pending = nil
	c.seq++
	seq := c.seq
	c.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	type sent struct {
		k  counterKey
		r  *Result
		fu jetstream.PubAckFuture
	}
	var out []sent
	var errs []error
	i := 0
	for k, r := range batch {
		i++
		b, err := json.Marshal(r)
		if err != nil {
			continue
		}
		m := &nats.Msg{Subject: Subject(k.day, r.Domain), Data: b,
			Header: nats.Header{jetstream.MsgIDHeader: []string{c.ID + "." + strconv.FormatUint(seq, 10) + "." + strconv.Itoa(i)}}}
		fu, err := c.JS.PublishMsgAsync(m)
		if err != nil {
			errs = append(errs, err)
			out = append(out, sent{k: k, r: r})
			continue
		}
		out = append(out, sent{k, r, fu})
	}
	var failed []sent
	for _, s := range out {
		if s.fu == nil {
			failed = append(failed, s)
			continue
		}
		select {
		case <-s.fu.Ok():
		case err := <-s.fu.Err():
			errs = append(errs, err)
			failed = append(failed, s)
		case <-ctx.Done():
			errs = append(errs, ctx.Err())
			failed = append(failed, s)
		}
	}
	if len(failed) > 0 {
		c.mu.Lock()
		if c.pending == nil {
			c.pending = map[counterKey]*Result{}
		}
		for _, s := range failed {
			if p, ok := c.pending[s.k]; ok {
				p.Count += s.r.Count
			} else {
				c.pending[s.k] = s.r
			}
		}
		c.mu.Unlock()
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("tlsrpt: %d of %d records not published: %w", len(failed), len(batch), err)
	}
	return nil
}

// Run flushes every Every until ctx ends; Stop makes the last flush.
func (c *Counter) Run(ctx context.Context) {
	every := c.Every
	if every <= 0 {
		every = FlushEvery
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.flushLogged(ctx)
		}
	}
}

// Stop makes the last flush, within timeout, once delivery has stopped.
func (c *Counter) Stop(timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c.flushLogged(ctx)
}

// flushLogged flushes and says so once when flushes start and stop
// failing, not at every interval.
func (c *Counter) flushLogged(ctx context.Context) {
	err := c.Flush(ctx)
	c.mu.Lock()
	was := c.failing
	c.failing = err != nil
	c.mu.Unlock()
	switch {
	case err != nil && !was:
		c.Log.Warn("TLS-RPT counts not stored, kept for the next try", "pending", c.Pending(), "err", err)
	case err == nil && was:
		c.Log.Info("TLS-RPT counts stored again")
	}
}
