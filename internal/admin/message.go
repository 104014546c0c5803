package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/queue"
)

// Queue page, with filters.

// QueueFilter selects the rows of the queue page. It is read from the
// page's GET query (state, domain, q), so that a filtered view is a link.
type QueueFilter struct {
	// State is one of queue.States ("" for any).
	State string
	// Domain is a destination domain: the part's routed domain or one of
	// its recipients'.
	Domain string
	// Text is a substring (any case) of the sender or of a recipient.
	Text string
}

// ParseQueueFilter reads a filter from a query, saying what is wrong with
// a value that cannot be one.
func ParseQueueFilter(q url.Values) (QueueFilter, error) {
	f := QueueFilter{State: strings.TrimSpace(q.Get("state")), Domain: envelope.NormalizeDomain(strings.TrimSpace(q.Get("domain"))),
		Text: strings.TrimSpace(q.Get("q"))}
	if f.State != "" && !slices.Contains(queue.States, f.State) {
		return f, fmt.Errorf("state %q is not one of %s", f.State, strings.Join(queue.States, ", "))
	}
	if f.Domain != "" && !strings.HasPrefix(f.Domain, "[") {
		if err := envelope.CheckDomain(f.Domain); err != nil {
			return f, fmt.Errorf("domain %q is not a domain: %v", q.Get("domain"), err)
		}
	}
	return f, nil
}

// Active reports whether f selects anything less than the whole queue.
func (f QueueFilter) Active() bool { return f != QueueFilter{} }

// Match reports whether it passes f.
func (f QueueFilter) Match(it QueueItem) bool {
	if f.State != "" && it.State != f.State {
		return false
	}
	if f.Domain != "" && !slices.Contains(itemDomains(it), f.Domain) {
		return false
	}
	if f.Text != "" {
		t := strings.ToLower(f.Text)
		in := func(a string) bool { return strings.Contains(strings.ToLower(a), t) }
		if !in(it.Sender) && !slices.ContainsFunc(it.Recipients, in) {
			return false
		}
	}
	return true
}

func (s *Server) queuePage(w http.ResponseWriter, r *http.Request, l *login) {
	f, ferr := ParseQueueFilter(r.URL.Query())
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	q, ok := s.readQueue(ctx, w, l)
	if !ok {
		return
	}
	status, shown := http.StatusOK, q
	if ferr != nil {
		status, shown = http.StatusBadRequest, nil
	} else if f.Active() {
		shown = nil
		for _, it := range q {
			if f.Match(it) {
				shown = append(shown, it)
			}
		}
	}
	data := map[string]any{"Queue": shown, "Total": len(q), "Filter": f, "States": queue.States, "Actions": s.opt.Act != nil, "Msg": r.URL.Query().Get("msg")}
	if ferr != nil {
		data["Error"] = "Filter refused: " + ferr.Error()
	}
	s.render(w, status, "queue", l, data)
}

// Message page.

// MessageEventLimit caps the events the message page reads for one
// message's history.
var MessageEventLimit = 500

// errEnough ends a read of MAIL_EVENTS that has read all it may.
var errEnough = errors.New("enough events")

// RcptState is one recipient of the message page and what is known of
// it: the state of the queued part that holds it, or else the last
// event that named it (delivered, bounced, …).
type RcptState struct {
	Addr, State, Detail string
}

// MessageView is what the message page shows.
type MessageView struct {
	ID string
	// Parts are the message's parts in the queue (one per destination
	// domain once routed), as `mailroot queue show` describes them.
	Parts []*queue.Item
	Rcpts []RcptState
	// Header is the message's header section (the body is never read).
	Header    string
	HeaderErr string
	// Events are the message's history, oldest first; Capped: there were
	// more than EventLimit.
	Events     []bus.Event
	Capped     bool
	EventLimit int
	EventsErr  string
	Actions    bool
	// Gone: the message is no longer in the queue (delivered, bounced,
	// deleted…); the page shows what its events tell.
	Gone bool
}

// rcptEvents are the event types that settle or say something of a
// recipient, and what the message page calls that state.
var rcptEvents = map[string]string{bus.EventDelivered: "delivered", bus.EventDropped: "dropped", bus.EventQuarantined: "quarantined",
	bus.EventDeferred: "deferred", bus.EventBounced: "bounced", bus.EventExpired: "expired", bus.EventDeleted: "deleted",
	bus.EventHeld: "held", bus.EventReleased: "released"}

// RcptStates are the recipients of parts (in the queue, with their part's
// state) and then those only events name, each with the state of the last
// event naming it.
func RcptStates(parts []*queue.Item, events []bus.Event) []RcptState {
	var out []RcptState
	at := map[string]int{}
	set := func(addr, state, detail string) {
		if i, ok := at[addr]; ok {
			out[i].State, out[i].Detail = state, detail
			return
		}
		at[addr] = len(out)
		out = append(out, RcptState{addr, state, detail})
	}
	for _, e := range events {
		state, ok := rcptEvents[e.Type]
		if !ok {
			continue
		}
		detail := e.Reply
		if detail == "" {
			detail = e.Reason
		}
		if e.Type == bus.EventDelivered && e.MX != "" {
			detail = strings.TrimSpace("to " + e.MX + " " + detail)
		}
		for _, a := range append(slices.Clip(e.Rcpts), e.Rcpt) {
			if a != "" {
				set(a, state, detail)
			}
		}
	}
	for _, p := range parts {
		for _, a := range p.Recipients {
			detail := p.LastError
			if p.NextAttempt != nil {
				detail = strings.TrimSpace("next attempt " + p.NextAttempt.UTC().Format("2006-01-02 15:04:05Z") + " " + detail)
			}
			set(a, "queued: "+p.State, detail)
		}
	}
	// The queued recipients first: they are what an action acts on.
	slices.SortStableFunc(out, func(a, b RcptState) int {
		return boolInt(!strings.HasPrefix(a.State, "queued")) - boolInt(!strings.HasPrefix(b.State, "queued"))
	})
	return out
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// messagePage is /queue/{id}: one queued message's envelope, headers,
// history and actions.
func (s *Server) messagePage(w http.ResponseWriter, r *http.Request, l *login) {
	id := r.PathValue("id")
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	v := &MessageView{ID: id, EventLimit: MessageEventLimit, Actions: s.opt.Act != nil}
	if envelope.ValidQueueID(id) {
		all, err := queue.List(ctx, s.opt.JS)
		if err != nil {
			s.fail(w, l, "read the queue", err)
			return
		}
		for _, it := range all {
			if it.ID == id {
				v.Parts = append(v.Parts, it)
			}
		}
	}
	msg := r.URL.Query().Get("msg")
	// Its events, from a little before it arrived on: not the whole log.
	// A message no longer queued arrived when its id was made.
	var since time.Time
	for i, p := range v.Parts {
		if i == 0 || p.Arrival.Before(since) {
			since = p.Arrival
		}
	}
	if len(v.Parts) == 0 {
		t, ok := envelope.QueueIDTime(id)
		if !ok {
			s.render(w, http.StatusNotFound, "message", l, map[string]any{"Missing": id, "Msg": msg})
			return
		}
		since, v.Gone, v.Actions = t, true, false
	} else {
		// The parts of a split message share one body: the first will do.
		var hb strings.Builder
		if err := v.Parts[0].Headers(ctx, s.opt.JS, &hb, ""); err != nil {
			v.HeaderErr = err.Error()
		}
		v.Header = hb.String()
	}
	f := bus.EventFilter{QueueID: id, Since: since.Add(-time.Minute)}
	if v.Gone {
		// Its events end within its life: the queue's expiry and a day
		// for its report, not the whole log after it.
		life := config.Default().Delivery.Expire.D()
		if cfg, _, err := s.opt.Config.Effective(ctx); err == nil {
			life = cfg.Delivery.Expire.D()
		}
		f.Until = since.Add(life + 24*time.Hour)
	}
	err := bus.ReadEvents(ctx, s.opt.JS, f, false, func(e bus.Event) error {
		if len(v.Events) == MessageEventLimit {
			v.Capped = true
			return errEnough
		}
		v.Events = append(v.Events, e)
		return nil
	})
	if err != nil && !errors.Is(err, errEnough) {
		v.EventsErr = err.Error()
	}
	if v.Gone && len(v.Events) == 0 && v.EventsErr == "" {
		s.render(w, http.StatusNotFound, "message", l, map[string]any{"Missing": id, "Msg": msg})
		return
	}
	v.Rcpts = RcptStates(v.Parts, v.Events)
	s.render(w, http.StatusOK, "message", l, map[string]any{"M": v, "Msg": msg})
}

// actedFrom is where a queue action goes back to: the message's page
// when it was done there (form field from=message) and the message is
// still queued, else the queue page.
func actedFrom(r *http.Request, action, id string) string {
	if r.PostFormValue("from") == "message" && action != "delete" && action != "bounce" {
		return "/queue/" + url.PathEscape(id)
	}
	return "/queue"
}

// ActionForm is what the queueActions template (queue.html) needs for the
// buttons of one message, on the queue page and the message page.
type ActionForm struct{ CSRF, ID, From string }

// pageParts are the templates a page uses besides layout.html and its own.
var pageParts = map[string][]string{"message": {"queue"}}

func init() {
	funcs["actionForm"] = func(csrf, id, from string) ActionForm { return ActionForm{csrf, id, from} }
}

// QueueItemOf is the queue page's row of a queued part.
func QueueItemOf(e *queue.Item) QueueItem {
	it := QueueItem{ID: e.ID, State: e.State, Sender: e.Sender, Recipients: e.Recipients, Domain: e.Domain,
		Size: e.Size, Arrival: e.Arrival, Attempt: e.Attempt, LastError: e.LastError}
	if e.NextAttempt != nil {
		it.NextAttempt = *e.NextAttempt
	}
	return it
}

// itemDomains are the destination domains of a row (queue.Item.Domains).
func itemDomains(it QueueItem) []string {
	return (&queue.Item{Domain: it.Domain, Recipients: it.Recipients}).Domains()
}

// readQueue lists the queue for a page; when it cannot, it answers the
// request with the error (ok false).
func (s *Server) readQueue(ctx context.Context, w http.ResponseWriter, l *login) (q []QueueItem, ok bool) {
	q, err := s.opt.Queue(ctx)
	if err != nil {
		s.fail(w, l, "read the queue", err)
		return nil, false
	}
	return q, true
}
