package admin

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/testutil"
)

// inBox checks that every bar and label of c lies within its box.
func inBox(t *testing.T, c *Chart) {
	t.Helper()
	for _, b := range c.Bars {
		if b.X < 0 || b.Y < 0 || b.W < 0 || b.H < 0 || b.X+b.W > c.Width || b.Y+b.H > c.Height {
			t.Errorf("%s: bar %+v outside %dx%d", c.ID, b, c.Width, c.Height)
		}
	}
	for _, l := range append(c.Labels, c.Legend...) {
		if l.X < 0 || l.Y <= 0 || l.X > c.Width || l.Y > c.Height {
			t.Errorf("%s: label %+v outside %dx%d", c.ID, l, c.Width, c.Height)
		}
	}
}

func TestTimeChartLayout(t *testing.T) {
	start := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	counts := make([][]int, HourMinutes)
	for i := range counts {
		counts[i] = make([]int, len(InOut))
	}
	counts[0][0], counts[0][1], counts[59][1] = 10, 5, 1
	c := TimeChart("chart", "x", start, time.Minute, 10, InOut, counts)
	inBox(t, c)
	if c.Max != 10 || len(c.Bars) != HourMinutes*len(InOut) {
		t.Fatalf("max %d bars %d", c.Max, len(c.Bars))
	}
	full, half, small := c.Bars[0], c.Bars[1], c.Bars[59*2+1]
	if full.H != 2*half.H || full.Y+full.H != half.Y+half.H || full.Y+full.H != c.Axis.Y1 || small.H != full.H/10 || c.Bars[2].H != 0 {
		t.Errorf("bars not to scale on the axis: %+v %+v %+v axis %+v", full, half, small, c.Axis)
	}
	if full.Title != "10:00–10:01 in: 10" || small.Title != "10:59–11:00 out: 1" {
		t.Errorf("titles %q %q", full.Title, small.Title)
	}
	var ticks []string
	for _, l := range c.Labels {
		ticks = append(ticks, l.Text)
	}
	if got := strings.Join(ticks, " "); got != "10:00 10:10 10:20 10:30 10:40 10:50 10 0" {
		t.Errorf("labels %q", got)
	}
	if c.Legend[0].Text != "in 10" || c.Legend[1].Text != "out 6" {
		t.Errorf("legend %+v", c.Legend)
	}
	// A bar of 1 in 1000 is still seen.
	counts[1][0] = 1000
	if c := TimeChart("chart", "x", start, time.Minute, 10, InOut, counts); c.Bars[59*2+1].H != 2 {
		t.Errorf("a count of 1 next to 1000: height %d, want 2", c.Bars[59*2+1].H)
	}
	// No events: no bar has height, the scale says 0.
	for i := range counts {
		counts[i] = make([]int, len(InOut))
	}
	c = TimeChart("chart", "x", start, time.Minute, 10, InOut, counts)
	inBox(t, c)
	for _, b := range c.Bars {
		if b.H != 0 {
			t.Fatalf("empty chart has bar %+v", b)
		}
	}
	if c.Max != 0 || c.Legend[0].Text != "in 0" {
		t.Errorf("empty chart: max %d legend %+v", c.Max, c.Legend)
	}
}

func TestBarChartLayout(t *testing.T) {
	long := strings.Repeat("sub.", 10) + "example.com"
	c := BarChart("d", "x", []Count{{Name: "a.test", N: 40}, {Name: long, N: 10}, {Name: "c.test", N: 0}})
	inBox(t, c)
	if len(c.Bars) != 3 || c.Max != 40 {
		t.Fatalf("bars %d max %d", len(c.Bars), c.Max)
	}
	a, b, z := c.Bars[0], c.Bars[1], c.Bars[2]
	if a.W != 4*b.W || a.X != b.X || z.W != 0 || b.Y <= a.Y || z.Y <= b.Y {
		t.Errorf("bars not to scale or not one under the other: %+v %+v %+v", a, b, z)
	}
	// Each row: its name, right-aligned before the bar, and its number after it.
	names := []string{c.Labels[0].Text, c.Labels[2].Text, c.Labels[4].Text}
	if names[0] != "a.test" || names[1] != "sub.sub.sub.sub.sub.s…" || names[2] != "c.test" || c.Labels[0].Anchor != "end" || c.Labels[0].X > a.X {
		t.Errorf("names %q, first %+v", names, c.Labels[0])
	}
	if c.Labels[1].Text != "40" || c.Labels[1].X <= a.X+a.W || c.Labels[3].Text != "10" {
		t.Errorf("numbers %+v %+v", c.Labels[1], c.Labels[3])
	}
	if b.Title != long+": 10" {
		t.Errorf("title %q", b.Title)
	}
	// Nothing to show: one line saying so.
	c = BarChart("d", "x", nil)
	inBox(t, c)
	if len(c.Bars) != 0 || len(c.Labels) != 1 || c.Labels[0].Text != "none" {
		t.Errorf("empty: %+v", c)
	}
}

func TestDomainCounts(t *testing.T) {
	var q []QueueItem
	for i := range 12 {
		for range i + 1 {
			q = append(q, QueueItem{Domain: fmt.Sprintf("d%02d.test", i), Recipients: []string{fmt.Sprintf("x@d%02d.test", i)}})
		}
	}
	// A part on mail.in counts for each of its recipients' domains.
	q = append(q, QueueItem{Recipients: []string{"a@D11.test", "b@d11.test", "c@new.test"}})
	list, rest := DomainCounts(q, TopDomains)
	if len(list) != TopDomains || rest != 3 || list[0] != (Count{"d11.test", 13, "#2f6fb0"}) || list[1].Name != "d10.test" || list[9].Name != "d02.test" {
		t.Errorf("top %+v, rest %d", list, rest)
	}
}

// Events published on MAIL_EVENTS are what the dashboard counts; the
// queue's states and domains are the MAIL stream's.
func TestDashboardCounts(t *testing.T) {
	_, base, c, js := queueConsole(t)
	threeMessages(t, js)
	ctx := testutil.Context(t)
	now := time.Now().UTC()
	ago := now.Add(-5 * time.Minute)
	for _, e := range []bus.Event{
		{Type: bus.EventReceived, QueueID: "Q1", Time: ago},
		{Type: bus.EventReceived, QueueID: "Q2", Time: ago},
		{Type: bus.EventPickedUp, QueueID: "Q3", Time: now},
		{Type: bus.EventDelivered, QueueID: "Q1", Rcpt: "a@x.test", Time: now},
		{Type: bus.EventDelivered, QueueID: "Q1", Rcpt: "b@x.test", Time: now},
		{Type: bus.EventDeferred, QueueID: "Q2", Rcpts: []string{"c@y.test"}, Attempt: 1, Time: now},
		{Type: bus.EventBounced, QueueID: "Q3", Rcpts: []string{"d@z.test"}, Time: now},
		{Type: bus.EventExpired, QueueID: "Q4", Rcpts: []string{"e@z.test"}, Time: now},
		{Type: bus.EventDelivered, QueueID: "Q0", Rcpt: "old@x.test", Time: now.Add(-2 * time.Hour)}, // stored now, but of before the hour
	} {
		if err := bus.EmitSync(ctx, js, e); err != nil {
			t.Fatal(err)
		}
	}
	code, body, _ := get(t, c, base, "/")
	if code != 200 {
		t.Fatalf("dashboard: %d", code)
	}
	minute := ago.Truncate(time.Minute)
	for _, w := range []string{
		`id="state-deferred">1<`, `id="state-held">1<`, `id="state-active">1<`,
		"<title>deferred: 1</title>", "<title>remote.test: 2</title>", "<title>held.test: 1</title>", "<title>other.test: 1</title>",
		"■ in 3", "■ out 2", fmt.Sprintf("<title>%s–%s in: 2</title>", minute.Format("15:04"), minute.Add(time.Minute).Format("15:04")),
		"received 3", "delivered 2", "deferred 1", "bounced 1", "expired 1", "badmail 0",
		"<title>delivered: 2</title>", "<title>expired: 1</title>",
		`<a href="/queue?state=held">held</a>`,
	} {
		if !strings.Contains(body, w) {
			t.Errorf("dashboard lacks %q", w)
		}
	}
	if strings.Contains(body, `id="capped"`) {
		t.Error("capped note with 9 events")
	}
	// Past the cap the dashboard says it counted only the first events.
	old := HourEventLimit
	HourEventLimit = 4
	t.Cleanup(func() { HourEventLimit = old })
	_, body, _ = get(t, c, base, "/")
	if !strings.Contains(body, "More than 4 events in the last hour") || !regexp.MustCompile(`received 3<.*delivered 1<`).MatchString(body) {
		t.Errorf("capped dashboard:\n%s", body)
	}
}
