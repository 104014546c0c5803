package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/liveconfig"
)

// HdrAdmin is the header naming who asks for a disconnect (the value of
// ingress.HdrAdmin, which this package cannot import).
const HdrAdmin = "Mailroot-Admin"

// requestTimeout bounds every NATS read or request of a page.
const requestTimeout = 10 * time.Second

func urlQueryEscape(s string) string { return url.QueryEscape(s) }

var funcs = map[string]any{
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return time.Since(t).Round(time.Second).String()
	},
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"join": strings.Join,
}

// page is what the layout needs besides the page's own data.
type page struct {
	Title string
	Nav   string
	User  string
	CSRF  string
	Msg   string
	Data  any
}

func (s *Server) render(w http.ResponseWriter, status int, name string, l *login, data any) {
	p := page{Title: name, Nav: name, Data: data}
	if l != nil {
		p.User, p.CSRF = l.user, l.csrf
	}
	if m, ok := data.(map[string]any); ok {
		if msg, ok := m["Msg"].(string); ok {
			p.Msg = msg
		}
	}
	var b bytes.Buffer
	if err := s.pages[name].Execute(&b, p); err != nil {
		s.log.Error("page not rendered", "page", name, "err", err)
		http.Error(w, "500 internal error: the page could not be rendered (see the log)", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(b.Bytes())
}

func (s *Server) fail(w http.ResponseWriter, l *login, what string, err error) {
	s.log.Error("admin page failed", "admin", l.user, "what", what, "err", err)
	http.Error(w, fmt.Sprintf("%s: %v", what, err), http.StatusBadGateway)
}

// Sessions.

func (s *Server) sessionsPage(w http.ResponseWriter, r *http.Request, l *login) {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	list, err := s.opt.Sessions(ctx)
	if err != nil {
		s.fail(w, l, "list the sessions", err)
		return
	}
	s.render(w, http.StatusOK, "sessions", l, map[string]any{"Sessions": list, "Msg": r.URL.Query().Get("msg")})
}

func (s *Server) disconnect(w http.ResponseWriter, r *http.Request, l *login) {
	s.action(w, r, l, "/sessions", func(ctx context.Context) (string, error) {
		node, id := r.PostFormValue("node"), r.PostFormValue("id")
		if node == "" || id == "" || strings.ContainsAny(node, " .*>\t\r\n") {
			return "", badInput("node and id are required (node: one subject token)")
		}
		req := nats.NewMsg(bus.SubjCtlDisconnectPrefix + node)
		req.Data = []byte(id)
		req.Header.Set(HdrAdmin, who(l))
		reply, err := s.opt.JS.Conn().RequestMsgWithContext(ctx, req)
		switch {
		case err != nil:
			return "", fmt.Errorf("Disconnect %s on %s failed: %w", id, node, err)
		case string(reply.Data) != "closed":
			return fmt.Sprintf("Disconnect %s on %s: %s", id, node, reply.Data), nil
		}
		return s.recorded(ctx, l, "", fmt.Sprintf("disconnected session %s on %s", id, node), fmt.Sprintf("Session %s on %s closed.", id, node)), nil
	})
}

// Domains.

// DomainRow is one domain of the domains page.
type DomainRow struct {
	Name   string
	Type   string
	Detail string
	Hold   bool
	Paused bool
	Held   int
	// Live: the domain is set in the live configuration (domain.NAME).
	Live bool
}

func (s *Server) domainsPage(w http.ResponseWriter, r *http.Request, l *login) {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	cfg, entries, err := s.opt.Config.Effective(ctx)
	if err != nil {
		s.fail(w, l, "read the configuration", err)
		return
	}
	var rows []DomainRow
	for _, d := range cfg.LocalDomains {
		rows = append(rows, DomainRow{Name: d, Type: "local", Detail: "delivered to Drop/" + d})
	}
	for _, d := range cfg.Domains {
		row := DomainRow{Name: d.Name, Type: d.Type, Hold: d.Hold, Paused: d.Paused}
		_, row.Live = entries["domain."+d.Name]
		switch {
		case d.SmartHost != "":
			row.Detail = "smart host " + d.SmartHost
		case d.Type == config.DomainRemote:
			row.Detail = "MX"
		}
		if d.RequireTLS {
			row.Detail += ", TLS required"
		}
		if d.Type == config.DomainRemote {
			if n, err := bus.HeldCount(ctx, s.opt.JS, bus.Token(d.Name)); err == nil {
				row.Held = n
			}
		}
		if i := slices.IndexFunc(rows, func(x DomainRow) bool { return x.Name == d.Name }); i >= 0 {
			rows[i] = row
		} else {
			rows = append(rows, row)
		}
	}
	slices.SortFunc(rows, func(a, b DomainRow) int { return strings.Compare(a.Name, b.Name) })
	s.render(w, http.StatusOK, "domains", l, map[string]any{"Domains": rows, "Msg": r.URL.Query().Get("msg")})
}

// DomainValue is the live value of a whole [[domain]] block (the key
// domain.NAME): every field d sets, as an inline table.
func DomainValue(d config.Domain) (string, error) {
	m := map[string]any{"type": d.Type}
	for k, v := range map[string]string{"drop_dir": d.DropDir, "recipients_file": d.RecipientsFile, "smart_host": d.SmartHost,
		"smart_host_user": d.SmartHostUser, "smart_host_password_file": d.SmartHostPasswordFile} {
		if !utf8.ValidString(v) {
			return "", fmt.Errorf("domain %s: %s is not valid UTF-8", d.Name, k)
		}
		if v != "" {
			m[k] = v
		}
	}
	for k, v := range map[string]bool{"require_tls": d.RequireTLS, "hold": d.Hold, "paused": d.Paused} {
		if v {
			m[k] = true
		}
	}
	return liveconfig.FormatValue(m)
}

// domainSet turns hold or paused on or off for a domain: the whole
// block as it is now with the one field changed, stored as domain.NAME.
func (s *Server) domainSet(w http.ResponseWriter, r *http.Request, l *login) {
	s.action(w, r, l, "/domains", func(ctx context.Context) (string, error) {
		name, field, on := r.PostFormValue("domain"), r.PostFormValue("field"), r.PostFormValue("on") == "true"
		cfg, _, err := s.opt.Config.Effective(ctx)
		if err != nil {
			return "", fmt.Errorf("read the configuration: %w", err)
		}
		i := slices.IndexFunc(cfg.Domains, func(d config.Domain) bool { return d.Name == envelope.NormalizeDomain(name) })
		if i < 0 || cfg.Domains[i].Type != config.DomainRemote {
			return "", badInput(fmt.Sprintf("%q is not a remote domain of the configuration", name))
		}
		d := cfg.Domains[i]
		switch field {
		case "hold":
			d.Hold = on
		case "paused":
			d.Paused = on
		default:
			return "", badInput(fmt.Sprintf("field %q is not hold or paused", field))
		}
		value, err := DomainValue(d)
		if err != nil {
			return "", err
		}
		state := map[bool]string{true: "on", false: "off"}[on]
		rev, err := s.opt.Config.Set(ctx, "domain."+d.Name, value, false, who(l), field+" "+state)
		if err != nil {
			return "", fmt.Errorf("%s: %s %s refused: %w", d.Name, field, state, err)
		}
		return fmt.Sprintf("%s: %s %s (revision %d).", d.Name, field, state, rev), nil
	})
}

// release asks the release workers to deliver a domain's held mail now
// (an ETRN from the console).
func (s *Server) release(w http.ResponseWriter, r *http.Request, l *login) {
	s.action(w, r, l, "/domains", func(ctx context.Context) (string, error) {
		name := envelope.NormalizeDomain(r.PostFormValue("domain"))
		if name == "" {
			return "", badInput("domain is required")
		}
		req, _ := json.Marshal(bus.ReleaseRequest{Domains: []string{name}, Client: "admin console: " + l.user})
		var rep bus.ReleaseReply
		m, err := s.opt.JS.Conn().RequestWithContext(ctx, bus.SubjCtlRelease, req)
		if err == nil {
			err = json.Unmarshal(m.Data, &rep)
		}
		if err == nil && rep.Error != "" {
			err = errors.New(rep.Error)
		}
		if err != nil {
			return "", fmt.Errorf("ETRN release of %s failed: %w", name, err)
		}
		return s.recorded(ctx, l, name, fmt.Sprintf("ETRN release of %s (%d pending)", name, rep.Pending),
			fmt.Sprintf("ETRN release of %s started: %d pending.", name, rep.Pending)), nil
	})
}

// History.

// Revision is one row of the history page.
type Revision struct {
	liveconfig.Entry
	// Before is the key's value before this revision ("" with
	// BeforeFile: the file's value or the default).
	Before     string
	BeforeFile bool
	// Current: this revision is the key's value now.
	Current bool
}

func (s *Server) historyPage(w http.ResponseWriter, r *http.Request, l *login) {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	h, err := s.opt.Config.History(ctx, r.URL.Query().Get("key"))
	if err != nil {
		s.fail(w, l, "read the history", err)
		return
	}
	s.render(w, http.StatusOK, "history", l, map[string]any{"Revisions": Revisions(h), "Msg": r.URL.Query().Get("msg")})
}

// Revisions pairs each entry of a history (oldest first) with the value
// before it, newest first.
func Revisions(h []liveconfig.Entry) []Revision {
	last := map[string]int{}
	out := make([]Revision, len(h))
	for i, e := range h {
		out[i] = Revision{Entry: e, BeforeFile: true}
		if j, ok := last[e.Key]; ok && !h[j].Unset {
			out[i].Before, out[i].BeforeFile = h[j].Value, false
		}
		last[e.Key] = i
	}
	for _, i := range last {
		out[i].Current = true
	}
	slices.Reverse(out)
	return out
}

func (s *Server) rollback(w http.ResponseWriter, r *http.Request, l *login) {
	s.action(w, r, l, "/history", func(ctx context.Context) (string, error) {
		key := r.PostFormValue("key")
		rev, err := strconv.ParseUint(r.PostFormValue("revision"), 10, 64)
		if key == "" || err != nil {
			return "", badInput("key and a numeric revision are required")
		}
		nrev, err := s.opt.Config.Rollback(ctx, key, rev, who(l), "")
		if err != nil {
			return "", fmt.Errorf("Rollback of %s to revision %d refused: %w", key, rev, err)
		}
		return fmt.Sprintf("%s rolled back to revision %d (revision %d).", key, rev, nrev), nil
	})
}

// Queue.

// queueActions are the buttons of a queue row.
var queueActions = map[string]bool{"flush": true, "delete": true, "hold": true, "release": true, "bounce": true}

// queueAct runs one queue action from the queue page, as the logged-in
// admin (the action's event names them, internal/queue).
func (s *Server) queueAct(w http.ResponseWriter, r *http.Request, l *login) {
	action, id := r.PostFormValue("action"), r.PostFormValue("id")
	s.action(w, r, l, actedFrom(r, action, id), func(ctx context.Context) (string, error) {
		if !queueActions[action] || id == "" || s.opt.Act == nil {
			return "", badInput("an action (flush, delete, hold, release, bounce) and a message id are required")
		}
		done, err := s.opt.Act(ctx, action, id, who(l))
		if err != nil {
			return "", fmt.Errorf("%s %s failed: %w", action, id, err)
		}
		return fmt.Sprintf("%s %s: %s", action, id, done), nil
	})
}

// badmailPage lists Badmail with the reason of each entry.
func (s *Server) badmailPage(w http.ResponseWriter, r *http.Request, l *login) {
	var list []BadItem
	if s.opt.Badmail != nil {
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		var err error
		if list, err = s.opt.Badmail(ctx); err != nil {
			s.fail(w, l, "read Badmail", err)
			return
		}
	}
	s.render(w, http.StatusOK, "badmail", l, map[string]any{"Bad": list, "Actions": s.opt.BadAct != nil, "Msg": r.URL.Query().Get("msg")})
}

// badmailAct requeues or deletes one Badmail entry as the admin.
func (s *Server) badmailAct(w http.ResponseWriter, r *http.Request, l *login) {
	s.action(w, r, l, "/badmail", func(ctx context.Context) (string, error) {
		action, name := r.PostFormValue("action"), r.PostFormValue("name")
		if action != "requeue" && action != "delete" || name == "" || s.opt.BadAct == nil {
			return "", badInput("an action (requeue, delete) and a Badmail entry are required")
		}
		done, err := s.opt.BadAct(ctx, action, name, who(l))
		if err != nil {
			return "", fmt.Errorf("%s %s failed: %w", action, name, err)
		}
		return fmt.Sprintf("%s: %s", name, done), nil
	})
}
