package metrics

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// NATSStates are the values of mailroot_nats_connection_state's state
// label: one series each, 1 for the state the connection is in.
var NATSStates = []string{"connected", "reconnecting", "disconnected", "closed", "other"}

func natsState(s nats.Status) string {
	switch s {
	case nats.CONNECTED, nats.DRAINING_SUBS, nats.DRAINING_PUBS:
		return "connected"
	case nats.RECONNECTING:
		return "reconnecting"
	case nats.DISCONNECTED:
		return "disconnected"
	case nats.CLOSED:
		return "closed"
	}
	return "other"
}

// WatchNATS exports the state of the process's NATS connection nc and
// its reconnects, read at scrape time.
func (m *Metrics) WatchNATS(nc *nats.Conn) {
	m.registerOnce("nats", func() prometheus.Collector {
		return &natsCollector{nc: nc,
			state: prometheus.NewDesc(Namespace+"_nats_connection_state",
				"State of this process's NATS connection: 1 for the state it is in ("+strings.Join(NATSStates, ", ")+"), 0 for the others.", []string{"state"}, nil),
			reconnects: prometheus.NewDesc(Namespace+"_nats_reconnects_total",
				"Reconnects of this process's NATS connection since it started.", nil, nil),
		}
	})
}

type natsCollector struct {
	nc                *nats.Conn
	state, reconnects *prometheus.Desc
}

func (c *natsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.state; ch <- c.reconnects }

func (c *natsCollector) Collect(ch chan<- prometheus.Metric) {
	now := natsState(c.nc.Status())
	for _, st := range NATSStates {
		v := 0.0
		if st == now {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, v, st)
	}
	ch <- prometheus.MustNewConstMetric(c.reconnects, prometheus.CounterValue, float64(c.nc.Stats().Reconnects))
}

// WatchStreams exports the bytes and messages each JetStream stream of
// the account holds (MAIL, MAIL_EVENTS, the buckets' KV_* and OBJ_*),
// listed at scrape time and cached for QueueCacheFor. The streams are
// Mailroot's own, a handful: the label is bounded.
func (m *Metrics) WatchStreams(js jetstream.JetStream) {
	m.registerOnce("streams", func() prometheus.Collector {
		return &streamCollector{js: js,
			bytes: prometheus.NewDesc(Namespace+"_jetstream_stream_bytes",
				"Bytes stored by each JetStream stream now.", []string{"stream"}, nil),
			msgs: prometheus.NewDesc(Namespace+"_jetstream_stream_messages",
				"Messages stored by each JetStream stream now.", []string{"stream"}, nil),
		}
	})
}

type streamCollector struct {
	js          jetstream.JetStream
	bytes, msgs *prometheus.Desc

	mu    sync.Mutex
	at    time.Time
	state map[string]jetstream.StreamState
	err   error
}

func (c *streamCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.bytes; ch <- c.msgs }

func (c *streamCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.at.IsZero() || time.Since(c.at) >= QueueCacheFor {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c.state, c.err = streamStates(ctx, c.js)
		cancel()
		c.at = time.Now()
	}
	if c.err != nil {
		ch <- prometheus.NewInvalidMetric(c.bytes, c.err)
		return
	}
	for name, st := range c.state {
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(st.Bytes), name)
		ch <- prometheus.MustNewConstMetric(c.msgs, prometheus.GaugeValue, float64(st.Msgs), name)
	}
}

func streamStates(ctx context.Context, js jetstream.JetStream) (map[string]jetstream.StreamState, error) {
	l := js.ListStreams(ctx)
	out := map[string]jetstream.StreamState{}
	for info := range l.Info() {
		out[info.Config.Name] = info.State
	}
	if err := l.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// WatchPickup exports how many files wait in the Pickup directory (and
// its work folder), counted by waiting at scrape time.
func (m *Metrics) WatchPickup(waiting func() int) {
	m.registerOnce("pickup", func() prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: "pickup", Name: "files",
			Help: "Files waiting in the Pickup directory and its work folder now, not yet queued."}, func() float64 { return float64(waiting()) })
	})
}
