package admin

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/mailroot/mailroot/internal/queue"
)

// StateCount is one queue state and its number of messages.
type StateCount struct {
	State string
	Count int
}

// stateColors are the queue states' colours on the dashboard.
var stateColors = map[string]string{queue.StateActive: "#2f6fb0", queue.StateDeferred: "#d08a00", queue.StateHeld: "#8e44ad", queue.StateBad: "#c0392b"}

// TopDomains is how many destination domains the dashboard charts.
const TopDomains = 10

// QueueStates counts the queue's parts per state: the known states first,
// in queue.States' order, then any other.
func QueueStates(q []QueueItem) []StateCount {
	counts := map[string]int{}
	for _, m := range q {
		counts[m.State]++
	}
	var states []StateCount
	for _, st := range queue.States {
		states = append(states, StateCount{st, counts[st]})
		delete(counts, st)
	}
	for st, n := range counts { // a state this page does not know yet
		states = append(states, StateCount{st, n})
	}
	return states
}

// DomainCounts counts the queue's parts per destination domain, most
// first (then by name), at most top of them; rest is how many other
// domains there are.
func DomainCounts(q []QueueItem, top int) (list []Count, rest int) {
	counts := map[string]int{}
	for _, it := range q {
		for _, d := range itemDomains(it) {
			counts[d]++
		}
	}
	for d, n := range counts {
		list = append(list, Count{Name: d, N: n, Color: "#2f6fb0"})
	}
	slices.SortFunc(list, func(a, b Count) int { return cmp.Or(b.N-a.N, cmp.Compare(a.Name, b.Name)) })
	if len(list) > top {
		return list[:top], len(list) - top
	}
	return list, 0
}

func (s *Server) dashboard(w http.ResponseWriter, r *http.Request, l *login) {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	q, ok := s.readQueue(ctx, w, l)
	if !ok {
		return
	}
	states := QueueStates(q)
	var stateBars []Count
	for _, st := range states {
		stateBars = append(stateBars, Count{Name: st.State, N: st.Count, Color: cmp.Or(stateColors[st.State], "#5a6475")})
	}
	domains, more := DomainCounts(q, TopDomains)
	now := s.now()
	h, err := ReadHour(ctx, s.opt.JS, now)
	if err != nil {
		s.fail(w, l, "read the events", err)
		return
	}
	s.render(w, http.StatusOK, "dashboard", l, map[string]any{
		"States": states, "Total": len(q), "Now": now, "Hour": h,
		"StateChart":  BarChart("states-chart", "queued messages by state", stateBars),
		"DomainChart": BarChart("domains-chart", fmt.Sprintf("the %d destination domains with the most queued messages", TopDomains), domains),
		"MoreDomains": more,
		"Chart":       TimeChart("chart", "messages in and out per minute, the last hour", h.Start, time.Minute, 10, InOut, h.InOut[:]),
		"Outcomes":    BarChart("outcomes", "delivery outcomes of the last hour", h.Outcomes),
	})
}
