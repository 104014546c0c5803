package admin

import (
	"context"
	"errors"
	"net/http"
)

// badInput is an action's refusal of its form: answered 400 with the
// text, which names what is wrong.
type badInput string

func (e badInput) Error() string { return string(e) }

// action runs one POST action of a page, the one shape of every form
// handler: the form parsed, do run with a context bounded by
// requestTimeout, then a redirect to back carrying do's message, or its
// error's text (the action failed or was refused; the page shows why).
// A badInput error is a 400 instead: the form itself is wrong. Every
// result is logged with the admin's name.
func (s *Server) action(w http.ResponseWriter, r *http.Request, l *login, back string, do func(context.Context) (string, error)) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "400 bad request: the form does not parse: "+err.Error(), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	msg, err := do(ctx)
	var bad badInput
	if errors.As(err, &bad) {
		s.log.Warn("admin action refused", "admin", l.user, "path", r.URL.Path, "err", err)
		http.Error(w, "400 bad request: "+bad.Error(), http.StatusBadRequest)
		return
	}
	if err != nil {
		msg = err.Error()
	}
	s.log.Info("admin action", "admin", l.user, "path", r.URL.Path, "result", msg, "ok", err == nil)
	redirectMsg(w, r, back, msg)
}

// recorded records what as the admin event of a done action (record)
// and returns msg, saying so when the event could not be stored.
func (s *Server) recorded(ctx context.Context, l *login, domain, what, msg string) string {
	if err := s.record(ctx, l, domain, what); err != nil {
		msg += " (Its event was not recorded: " + err.Error() + ")"
	}
	return msg
}
