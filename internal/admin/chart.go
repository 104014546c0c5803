package admin

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
)

// ChartSeries are the event types the dashboard's chart counts, with
// their colours.
var ChartSeries = []struct{ Type, Color string }{
	{bus.EventReceived, "#2f6fb0"},
	{bus.EventDelivered, "#2e8b57"},
	{bus.EventDeferred, "#d08a00"},
	{bus.EventBounced, "#c0392b"},
}

// ChartBuckets is the chart's number of 5-minute buckets (one hour).
const ChartBuckets = 12

// ChartStep is one bucket.
const ChartStep = 5 * time.Minute

// Chart is the last hour's mail per 5 minutes, laid out as an SVG bar
// chart (the template draws the rectangles).
type Chart struct {
	Start  time.Time
	Counts [ChartBuckets][4]int
	Totals [4]int
	Max    int
	Bars   []Bar
	Labels []Label
	Legend []Label
	Width  int
	Height int
}

// Bar is one rectangle of the chart.
type Bar struct {
	X, Y, W, H int
	Color      string
	Title      string
}

// Label is a text of the chart.
type Label struct {
	X, Y  int
	Text  string
	Color string
}

// HourChart counts the events of the hour before now.
func HourChart(ctx context.Context, js jetstream.JetStream, now time.Time) (*Chart, error) {
	start := now.Add(-ChartBuckets * ChartStep).Truncate(ChartStep).Add(ChartStep)
	c := &Chart{Start: start}
	idx := map[string]int{}
	for i, s := range ChartSeries {
		idx[s.Type] = i
	}
	err := bus.ReadEvents(ctx, js, bus.EventFilter{Since: start}, false, func(e bus.Event) error {
		j, ok := idx[e.Type]
		b := int(e.Time.Sub(start) / ChartStep)
		if ok && b >= 0 && b < ChartBuckets {
			c.Counts[b][j]++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	c.layout()
	return c, nil
}

// layout places the bars: 12 groups of 4 bars, scaled to the largest.
func (c *Chart) layout() {
	const left, top, bottom, groupW, barW = 30, 24, 22, 48, 10
	c.Width, c.Height = left+ChartBuckets*groupW+4, 200
	plot := c.Height - top - bottom
	for b := range ChartBuckets {
		for j := range ChartSeries {
			c.Totals[j] += c.Counts[b][j]
			c.Max = max(c.Max, c.Counts[b][j])
		}
	}
	scale := max(c.Max, 1)
	for b := range ChartBuckets {
		x0 := left + b*groupW + 4
		for j, s := range ChartSeries {
			n := c.Counts[b][j]
			h := n * plot / scale
			if n > 0 && h < 2 {
				h = 2
			}
			t := c.Start.Add(time.Duration(b) * ChartStep).UTC()
			c.Bars = append(c.Bars, Bar{X: x0 + j*barW, Y: top + plot - h, W: barW - 1, H: h, Color: s.Color,
				Title: fmt.Sprintf("%s–%s %s: %d", t.Format("15:04"), t.Add(ChartStep).Format("15:04"), s.Type, n)})
		}
		if b%3 == 0 {
			c.Labels = append(c.Labels, Label{X: x0, Y: c.Height - 6, Text: c.Start.Add(time.Duration(b) * ChartStep).UTC().Format("15:04")})
		}
	}
	c.Labels = append(c.Labels, Label{X: 2, Y: top + 4, Text: fmt.Sprint(c.Max)}, Label{X: 2, Y: top + plot, Text: "0"})
	for j, s := range ChartSeries {
		c.Legend = append(c.Legend, Label{X: left + j*120, Y: 14, Text: fmt.Sprintf("%s %d", s.Type, c.Totals[j]), Color: s.Color})
	}
}
