package metrics

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailroot/mailroot/internal/bus"
)

// QueueStates are the values of mailroot_queue_messages' state label, one
// per kind of subject of the MAIL stream (docs/DESIGN.md §2).
var QueueStates = []string{"incoming", "active", "deferred", "held", "drop", "quarantine", "bad"}

// QueueState is the state of a message on subject of the MAIL stream, or
// "" for a subject that is none of Mailroot's.
func QueueState(subject string) string {
	switch {
	case subject == bus.SubjIn:
		return "incoming"
	case strings.HasPrefix(subject, bus.SubjOutPrefix) && len(subject) > len(bus.SubjOutPrefix):
		return "active"
	case strings.HasPrefix(subject, bus.SubjDeferPrefix) && len(subject) > len(bus.SubjDeferPrefix):
		return "deferred"
	case strings.HasPrefix(subject, bus.SubjHoldPrefix) && len(subject) > len(bus.SubjHoldPrefix):
		return "held"
	case subject == bus.SubjDrop:
		return "drop"
	case subject == bus.SubjBad:
		return "bad"
	case subject == bus.SubjQuarantine:
		return "quarantine"
	}
	return ""
}

// QueueCacheFor is how long one reading of the queue serves scrapes: a
// reading lists every subject of the stream (one per deferred message),
// so several Prometheus servers scraping at once ask once.
const QueueCacheFor = 5 * time.Second

// WatchQueue exports mailroot_queue_messages, by state, from the subject
// counts of the MAIL stream, asked at scrape time and cached for
// QueueCacheFor: nothing is counted per message.
func (m *Metrics) WatchQueue(js jetstream.JetStream) {
	m.registerOnce("queue", func() prometheus.Collector {
		return &queueCollector{js: js, desc: prometheus.NewDesc(Namespace+"_queue_messages",
			"Messages in the MAIL stream now, by state: incoming (mail.in, not routed yet), active (mail.out.*), deferred (retry schedules), held (for ETRN/ATRN), drop (for the Drop directory), quarantine (for the Quarantine directory), bad (for Badmail).",
			[]string{"state"}, nil)}
	})
}

type queueCollector struct {
	js   jetstream.JetStream
	desc *prometheus.Desc

	mu     sync.Mutex // one reading at a time; scrapes only
	at     time.Time
	counts map[string]uint64
	err    error
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	counts, err := c.read()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for _, st := range QueueStates {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[st]), st)
	}
}

func (c *queueCollector) read() (map[string]uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && time.Since(c.at) < QueueCacheFor {
		return c.counts, c.err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c.counts, c.err = queueCounts(ctx, c.js)
	c.at = time.Now()
	return c.counts, c.err
}

func queueCounts(ctx context.Context, js jetstream.JetStream) (map[string]uint64, error) {
	s, err := js.Stream(ctx, bus.StreamMail)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(bus.SubjAll))
	if err != nil {
		return nil, err
	}
	counts := make(map[string]uint64, len(QueueStates))
	for subj, n := range info.State.Subjects {
		if st := QueueState(subj); st != "" {
			counts[st] += n
		}
	}
	return counts, nil
}
