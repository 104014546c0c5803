package admin

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
)

// The dashboard's charts are laid out here, as rectangles and texts in a
// Chart, and drawn by one template ("chart", dashboard.html) as SVG: no
// script, nothing but the page.

// Chart is a laid-out bar chart.
type Chart struct {
	// ID is the SVG element's id; Label says what it shows (aria-label).
	ID, Label     string
	Width, Height int
	Bars          []Bar
	Labels        []Label
	Legend        []Label
	// Axis is the base line of a time chart (nil for none).
	Axis *Line
	// Max is the largest count drawn.
	Max int
}

// Bar is one rectangle of the chart.
type Bar struct {
	X, Y, W, H int
	Color      string
	Title      string
}

// Label is a text of the chart; Anchor is its SVG text-anchor ("" for
// start).
type Label struct {
	X, Y   int
	Text   string
	Color  string
	Anchor string
}

// Line is a line of the chart.
type Line struct{ X1, Y1, X2, Y2 int }

// Series is one series of a time chart: the event types it counts.
type Series struct {
	Name, Color string
	Types       []string
}

// InOut are the series of the dashboard's time chart: mail in (received
// over SMTP, picked up) and out (delivered to a remote, written to Drop;
// one event per recipient).
var InOut = []Series{
	{"in", "#2f6fb0", []string{bus.EventReceived, bus.EventPickedUp}},
	{"out", "#2e8b57", []string{bus.EventDelivered, bus.EventDropped}},
}

// Outcomes are the delivery outcomes the dashboard counts, with their
// colours.
var Outcomes = []Count{
	{Name: bus.EventDelivered, Color: "#2e8b57"},
	{Name: bus.EventDropped, Color: "#3f9f8f"},
	{Name: bus.EventDeferred, Color: "#d08a00"},
	{Name: bus.EventBounced, Color: "#c0392b"},
	{Name: bus.EventExpired, Color: "#8e44ad"},
	{Name: bus.EventBadmail, Color: "#6d4c41"},
	{Name: bus.EventQuarantined, Color: "#5a6475"},
}

// Count is one category of a bar chart and its number.
type Count struct {
	Name  string
	N     int
	Color string
}

// HourMinutes is the time chart's number of one-minute buckets.
const HourMinutes = 60

// HourEventLimit caps the events the dashboard reads of the last hour.
var HourEventLimit = 50000

// Hour is the last hour of MAIL_EVENTS as the dashboard counts it.
type Hour struct {
	// Start is the first minute.
	Start time.Time
	// InOut counts per minute the events of each InOut series.
	InOut [HourMinutes][]int
	// Received counts the received and pickedup events; Outcomes each
	// outcome's events (Outcomes' order).
	Received int
	Outcomes []Count
	// Read is the number of events read; Capped: there were more than
	// Limit, and the counts are of the first Limit.
	Read   int
	Capped bool
	Limit  int
}

// ReadHour counts the events of the hour up to now, from the stream's
// events of that hour only (by start time) and at most HourEventLimit of
// them.
func ReadHour(ctx context.Context, js jetstream.JetStream, now time.Time) (*Hour, error) {
	h := &Hour{Start: now.Truncate(time.Minute).Add(-(HourMinutes - 1) * time.Minute), Limit: HourEventLimit}
	series := map[string]int{}
	for i, s := range InOut {
		for _, t := range s.Types {
			series[t] = i
		}
	}
	for b := range h.InOut {
		h.InOut[b] = make([]int, len(InOut))
	}
	outcome := map[string]int{}
	h.Outcomes = append([]Count(nil), Outcomes...)
	for i, o := range h.Outcomes {
		outcome[o.Name] = i
	}
	err := bus.ReadEvents(ctx, js, bus.EventFilter{Since: h.Start}, false, func(e bus.Event) error {
		if h.Read == h.Limit {
			h.Capped = true
			return errEnough
		}
		h.Read++
		b := int(e.Time.Sub(h.Start) / time.Minute)
		if b < 0 || b >= HourMinutes {
			return nil
		}
		if j, ok := series[e.Type]; ok {
			h.InOut[b][j]++
		}
		if j, ok := outcome[e.Type]; ok {
			h.Outcomes[j].N++
		}
		if e.Type == bus.EventReceived || e.Type == bus.EventPickedUp {
			h.Received++
		}
		return nil
	})
	if err != nil && !errors.Is(err, errEnough) && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, err
	}
	return h, nil
}

// TimeChart lays out counts (per bucket of step from start, a count per
// series) as groups of bars, one group per bucket, scaled to the
// largest, with a time label every tick buckets and the series' totals
// as the legend.
func TimeChart(id, label string, start time.Time, step time.Duration, tick int, series []Series, counts [][]int) *Chart {
	const left, top, bottom, barW = 30, 24, 22, 4
	groupW := barW*len(series) + 2
	c := &Chart{ID: id, Label: label, Width: left + len(counts)*groupW + 4, Height: 200}
	plot := c.Height - top - bottom
	totals := make([]int, len(series))
	for _, b := range counts {
		for j := range series {
			totals[j] += b[j]
			c.Max = max(c.Max, b[j])
		}
	}
	scale := max(c.Max, 1)
	for b, row := range counts {
		x0 := left + b*groupW + 2
		t := start.Add(time.Duration(b) * step).UTC()
		for j, s := range series {
			n := row[j]
			h := n * plot / scale
			if n > 0 && h < 2 {
				h = 2
			}
			c.Bars = append(c.Bars, Bar{X: x0 + j*barW, Y: top + plot - h, W: barW - 1, H: h, Color: s.Color,
				Title: fmt.Sprintf("%s–%s %s: %d", t.Format("15:04"), t.Add(step).Format("15:04"), s.Name, n)})
		}
		if tick > 0 && b%tick == 0 {
			c.Labels = append(c.Labels, Label{X: x0, Y: c.Height - 6, Text: t.Format("15:04")})
		}
	}
	c.Axis = &Line{X1: left, Y1: top + plot, X2: c.Width, Y2: top + plot}
	c.Labels = append(c.Labels, Label{X: left - 4, Y: top + 4, Text: fmt.Sprint(c.Max), Anchor: "end"}, Label{X: left - 4, Y: top + plot, Text: "0", Anchor: "end"})
	for j, s := range series {
		c.Legend = append(c.Legend, Label{X: left + j*120, Y: 14, Text: fmt.Sprintf("%s %d", s.Name, totals[j]), Color: s.Color})
	}
	return c
}

// BarChart lays out counts as one horizontal bar each, its name before
// it and its number after it, scaled to the largest. With no counts it
// is one line saying so.
func BarChart(id, label string, counts []Count) *Chart {
	const width, nameW, numW, rowH, barH = 480, 150, 50, 22, 14
	c := &Chart{ID: id, Label: label, Width: width, Height: max(len(counts), 1)*rowH + 4}
	if len(counts) == 0 {
		c.Labels = []Label{{X: 4, Y: 16, Text: "none"}}
		return c
	}
	for _, n := range counts {
		c.Max = max(c.Max, n.N)
	}
	scale, room := max(c.Max, 1), width-nameW-8-numW
	for i, n := range counts {
		y := 2 + i*rowH
		w := n.N * room / scale
		if n.N > 0 && w < 2 {
			w = 2
		}
		c.Bars = append(c.Bars, Bar{X: nameW + 8, Y: y + (rowH-barH)/2, W: w, H: barH, Color: n.Color, Title: fmt.Sprintf("%s: %d", n.Name, n.N)})
		c.Labels = append(c.Labels, Label{X: nameW, Y: y + 15, Text: shorten(n.Name, 22), Anchor: "end"},
			Label{X: nameW + 8 + w + 4, Y: y + 15, Text: fmt.Sprint(n.N)})
	}
	return c
}

// shorten cuts s to n characters, the last an ellipsis.
func shorten(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}
