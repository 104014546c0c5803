// Package admin is Mailroot's web admin console (the IIS Internet Service
// Manager's HTML version, rebuilt for a cluster): server-rendered pages
// (html/template, embedded with embed.FS, one CSS file, no JavaScript)
// over the same code the command-line tools use:
//
//   - dashboard: SVG charts of the queue by state and its top destination
//     domains (the MAIL stream), and of the last hour (MAIL_EVENTS): mail
//     in and out per minute, delivery outcomes;
//   - sessions: the SMTP sessions of every ingress (KV mta-sessions),
//     with a disconnect button (request bus.SubjCtlDisconnectPrefix+node);
//   - domains: the effective configuration's domains, hold and pause
//     switches (the live key domain.NAME, liveconfig.Store.Set) and an
//     ETRN release button (request bus.SubjCtlRelease);
//   - history: every revision of the live configuration as a line diff
//     of its value, and a rollback button;
//   - queue: the queued messages, filtered by the GET query, with the
//     queue actions (Act); a page per message (/queue/{id}): envelope,
//     headers, history and the same actions;
//   - users: the users file's accounts, added, changed and deleted with
//     users.Store.Edit (the code of `mailroot user`);
//   - sites: the SMTP sites with pause/resume and their live settings
//     (site.NAME.KEY, liveconfig.Store.Set).
//
// Logins are users-file accounts marked admin (users.User.Admin),
// checked with bcrypt; failed logins are limited per client address by
// users.Limiter, as SMTP AUTH's are. A login is a random session id in a
// cookie (HttpOnly, SameSite=Strict, Secure over TLS) kept in memory;
// every POST carries the session's CSRF token. Every action is recorded:
// configuration changes as the liveconfig revision and config event with
// the admin as who, the others as an admin event (bus.EventAdmin).
package admin

import (
	"context"
	"crypto/tls"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/liveconfig"
	"github.com/mailroot/mailroot/internal/users"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// QueueItem is one queued message as the queue page shows it (the fields
// of `mailroot queue list`).
// BadItem is one Badmail entry of the Badmail page.
type BadItem struct {
	Name, Reason, Sender string
	Recipients           []string
	Size                 int64
	Time                 time.Time
}

type QueueItem struct {
	ID          string
	State       string
	Sender      string
	Recipients  []string
	Domain      string
	Size        int64
	Arrival     time.Time
	Attempt     int
	LastError   string
	NextAttempt time.Time
}

// Options are what the console reads and acts on.
type Options struct {
	// JS is the JetStream context of the cluster.
	JS jetstream.JetStream
	// Config is the live configuration.
	Config *liveconfig.Store
	// Users is the users file; only users marked admin may log in.
	Users *users.Store
	// Limiter counts failed logins per client address.
	Limiter *users.Limiter
	// Sessions lists the SMTP sessions of every ingress.
	Sessions func(context.Context) ([]bus.SessionInfo, error)
	// Queue lists the MAIL stream's messages.
	Queue func(context.Context) ([]QueueItem, error)
	// Act runs a queue action (flush, delete, hold, release, bounce) on
	// the message id as who, and says what happened; nil: the queue page
	// is read-only.
	Act func(ctx context.Context, action, id, who string) (string, error)
	// Badmail lists the Badmail directory of this machine; BadAct
	// requeues or deletes an entry as who (nil: no Badmail page).
	Badmail func(context.Context) ([]BadItem, error)
	BadAct  func(ctx context.Context, action, name, who string) (string, error)
	// TLS: the console is served over TLS (cookies are Secure).
	TLS bool
	// Log receives a line per action and per failed login.
	Log *slog.Logger
}

// LoginTTL is how long a login lasts without a request.
const LoginTTL = 8 * time.Hour

// Server is the console's HTTP handler.
type Server struct {
	opt   Options
	log   *slog.Logger
	pages map[string]*template.Template
	now   func() time.Time

	mu     sync.Mutex
	logins map[string]*login
}

// login is one logged-in admin.
type login struct {
	user    string
	hash    string // the password hash it logged in with (stillAdmin)
	csrf    string
	expires time.Time
}

// New returns the console.
func New(opt Options) (*Server, error) {
	if opt.JS == nil || opt.Config == nil || opt.Users == nil || opt.Sessions == nil || opt.Queue == nil {
		return nil, errors.New("admin: JS, Config, Users, Sessions and Queue are required")
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	s := &Server{opt: opt, log: opt.Log.With("svc", "admin"), now: time.Now, logins: map[string]*login{}, pages: map[string]*template.Template{}}
	for _, p := range []string{"login", "dashboard", "sessions", "domains", "history", "queue", "message", "badmail", "users", "sites"} {
		files := []string{"templates/layout.html"}
		for _, part := range pageParts[p] { // its own content last: it is the page's
			files = append(files, "templates/"+part+".html")
		}
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, append(files, "templates/"+p+".html")...)
		if err != nil {
			return nil, fmt.Errorf("admin: template %s: %w", p, err)
		}
		s.pages[p] = t
	}
	return s, nil
}

// Handler routes the console's pages.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /login", s.loginPage)
	mux.HandleFunc("POST /login", s.loginPost)
	mux.HandleFunc("POST /logout", s.authed(s.logout))
	mux.HandleFunc("GET /{$}", s.authed(s.dashboard))
	mux.HandleFunc("GET /sessions", s.authed(s.sessionsPage))
	mux.HandleFunc("POST /sessions/disconnect", s.authed(s.disconnect))
	mux.HandleFunc("GET /domains", s.authed(s.domainsPage))
	mux.HandleFunc("POST /domains/set", s.authed(s.domainSet))
	mux.HandleFunc("POST /domains/release", s.authed(s.release))
	mux.HandleFunc("GET /history", s.authed(s.historyPage))
	mux.HandleFunc("POST /history/rollback", s.authed(s.rollback))
	mux.HandleFunc("GET /queue", s.authed(s.queuePage))
	mux.HandleFunc("GET /queue/{id}", s.authed(s.messagePage))
	mux.HandleFunc("POST /queue/act", s.authed(s.queueAct))
	mux.HandleFunc("GET /badmail", s.authed(s.badmailPage))
	mux.HandleFunc("POST /badmail/act", s.authed(s.badmailAct))
	mux.HandleFunc("GET /users", s.authed(s.usersPage))
	mux.HandleFunc("POST /users/add", s.authed(s.userAdd))
	mux.HandleFunc("POST /users/passwd", s.authed(s.userPasswd))
	mux.HandleFunc("POST /users/edit", s.authed(s.userEdit))
	mux.HandleFunc("POST /users/delete", s.authed(s.userDelete))
	mux.HandleFunc("GET /sites", s.authed(s.sitesPage))
	mux.HandleFunc("POST /sites/pause", s.authed(s.sitePause))
	mux.HandleFunc("POST /sites/set", s.authed(s.siteSet))
	return securityHeaders(mux)
}

// securityHeaders forbids framing, scripts and sniffing: the pages need
// none of them.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'none'; frame-ancestors 'none'; form-action 'self'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "same-origin")
		h.ServeHTTP(w, r)
	})
}

// Serve serves the console on ln until ctx ends, over TLS when certFile
// is set (reloading neither: the console is read at start).
func (s *Server) Serve(ctx context.Context, ln net.Listener, certFile, keyFile string) error {
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 60 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return fmt.Errorf("admin: certificate: %w", err)
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		ln = tls.NewListener(ln, srv.TLSConfig)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("admin: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return nil
}
