package admin

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/mailroot/mailroot/internal/bus"
)

// Cookie names: the login, and the login form's CSRF token (a
// double-submit cookie: there is no login yet to keep it in).
const (
	cookieLogin     = "mailroot_admin"
	cookieLoginForm = "mailroot_admin_form"
)

// ctxKey carries the login of an authenticated request.
type ctxKey struct{}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *Server) cookie(name, value string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: name, Value: value, Path: "/", MaxAge: maxAge, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: s.opt.TLS}
}

// clientAddr is the request's peer address (the limiter's key).
func clientAddr(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, _ := netip.ParseAddr(host)
	return a.Unmap()
}

// current is the request's login, or nil.
func (s *Server) current(r *http.Request) *login {
	c, err := r.Cookie(cookieLogin)
	if err != nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.logins[c.Value]
	now := s.now()
	if l == nil || now.After(l.expires) || !s.stillAdmin(l) {
		delete(s.logins, c.Value)
		return nil
	}
	l.expires = now.Add(LoginTTL)
	return l
}

// stillAdmin reports whether the users file still has l's user as an
// admin with the password it logged in with: a user deleted, demoted or
// given a new password, by the console or by `mailroot user` on the
// file, is logged out at the next request (the store rereads a changed
// file within a second).
func (s *Server) stillAdmin(l *login) bool {
	u, ok := s.opt.Users.Lookup(l.user)
	return ok && u.Admin && u.Hash == l.hash
}

// authed lets only logged-in admins through; a POST must also carry the
// login's CSRF token (form field "csrf"), else 403.
func (s *Server) authed(h func(http.ResponseWriter, *http.Request, *login)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		l := s.current(r)
		if l == nil {
			if r.Method == http.MethodGet {
				http.Redirect(w, r, "/login", http.StatusSeeOther)
				return
			}
			http.Error(w, "not logged in", http.StatusUnauthorized)
			return
		}
		if r.Method == http.MethodPost {
			if subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(l.csrf)) != 1 {
				s.log.Warn("form refused: missing or wrong CSRF token", "admin", l.user, "path", r.URL.Path, "client", r.RemoteAddr)
				http.Error(w, "403 forbidden: the form's CSRF token is missing or wrong (reload the page)", http.StatusForbidden)
				return
			}
		}
		h(w, r, l)
	}
}

func (s *Server) loginPage(w http.ResponseWriter, r *http.Request) {
	s.showLogin(w, http.StatusOK, "")
}

func (s *Server) showLogin(w http.ResponseWriter, status int, msg string) {
	tok := randomToken()
	http.SetCookie(w, s.cookie(cookieLoginForm, tok, 3600))
	s.render(w, status, "login", nil, map[string]any{"Error": msg, "FormToken": tok})
}

func (s *Server) loginPost(w http.ResponseWriter, r *http.Request) {
	c, err := r.Cookie(cookieLoginForm)
	if err != nil || c.Value == "" || subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(c.Value)) != 1 {
		http.Error(w, "403 forbidden: the login form's CSRF token is missing or wrong (reload the page)", http.StatusForbidden)
		return
	}
	ip := clientAddr(r)
	if s.opt.Limiter.Banned(ip) {
		s.log.Warn("login refused: client banned after failed logins", "client", ip.String())
		s.showLogin(w, http.StatusTooManyRequests, "Too many failed logins from your address: try again later.")
		return
	}
	name, pw := r.PostFormValue("user"), r.PostFormValue("password")
	u, ok := s.opt.Users.Lookup(name)
	if !ok {
		u = s.opt.Users.Decoy() // as slow as a wrong password
	}
	if !u.Check(pw) || !ok || !u.Admin {
		delay, banned := s.opt.Limiter.Fail(ip)
		s.log.Warn("login failed", "user", name, "known_user", ok, "admin", ok && u.Admin, "client", ip.String(), "banned", banned)
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
		status, msg := http.StatusUnauthorized, "Wrong user name or password, or not an administrator."
		if banned {
			status, msg = http.StatusTooManyRequests, "Too many failed logins from your address: try again later."
		}
		s.showLogin(w, status, msg)
		return
	}
	id := randomToken()
	s.mu.Lock()
	now := s.now()
	for k, l := range s.logins {
		if now.After(l.expires) {
			delete(s.logins, k)
		}
	}
	s.logins[id] = &login{user: u.Name, hash: u.Hash, csrf: randomToken(), expires: now.Add(LoginTTL)}
	s.mu.Unlock()
	s.log.Info("admin logged in", "admin", u.Name, "client", ip.String())
	http.SetCookie(w, s.cookie(cookieLogin, id, int(LoginTTL/time.Second)))
	http.SetCookie(w, s.cookie(cookieLoginForm, "", -1))
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request, l *login) {
	if c, err := r.Cookie(cookieLogin); err == nil {
		s.mu.Lock()
		delete(s.logins, c.Value)
		s.mu.Unlock()
	}
	http.SetCookie(w, s.cookie(cookieLogin, "", -1))
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// who is the name the console's changes are recorded under.
func who(l *login) string { return l.user + " (admin console)" }

// record emits the admin event of an action (and logs it); the action
// is done, so a failure to record it is reported but does not undo it.
func (s *Server) record(ctx context.Context, l *login, domain, what string) error {
	s.log.Info("admin action", "admin", l.user, "action", what)
	ev := bus.Event{Type: bus.EventAdmin, Admin: who(l), Domain: domain, Reason: what}
	if err := bus.EmitSync(ctx, s.opt.JS, ev); err != nil {
		s.log.Error("admin action not recorded as an event", "admin", l.user, "action", what, "err", err)
		return err
	}
	return nil
}

// flash carries one message to the next page (in the query string, as
// text the template escapes).
func redirectMsg(w http.ResponseWriter, r *http.Request, path, msg string) {
	if msg != "" {
		path += "?msg=" + strings.ReplaceAll(urlQueryEscape(msg), "+", "%20")
	}
	http.Redirect(w, r, path, http.StatusSeeOther)
}
