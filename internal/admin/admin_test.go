package admin

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/liveconfig"
	"github.com/mailroot/mailroot/internal/testutil"
	"github.com/mailroot/mailroot/internal/users"
)

// startConsole serves a console on a real embedded nats-server, with a
// users file holding root (admin, password "rootpw") and bob (not admin,
// "bobpw").
func startConsole(t *testing.T, base string) (*Server, *httptest.Server) {
	t.Helper()
	n := testutil.StartNATS(t)
	_, js := n.Connect(t)
	ctx := testutil.Context(t)
	if err := bus.EnsureEvents(ctx, js, 1, 0, 0); err != nil {
		t.Fatal(err)
	}
	st, err := liveconfig.Open(ctx, js, 1, base)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "users")
	var list []users.User
	for _, u := range []struct {
		name, pw string
		admin    bool
	}{{"root", "rootpw", true}, {"bob", "bobpw", false}} {
		h, err := users.HashWithCost(u.pw, bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		list = append(list, users.User{Name: u.name, Hash: h, Admin: u.admin})
	}
	if err := users.Save(path, list); err != nil {
		t.Fatal(err)
	}
	us, err := users.NewStore(path)
	if err != nil {
		t.Fatal(err)
	}
	auth := config.DefaultAuth()
	auth.FailLimit, auth.FailDelay = 3, 0
	srv, err := New(Options{JS: js, Config: st, Users: us, Limiter: users.NewLimiter(auth), Log: testutil.Logger(t),
		Sessions: func(context.Context) ([]bus.SessionInfo, error) { return nil, nil },
		Queue:    func(context.Context) ([]QueueItem, error) { return nil, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return srv, hs
}

func newClient(t *testing.T) *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

var csrfField = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)

// get fetches path and returns the status, the body and the form's CSRF
// token when the page has one.
func get(t *testing.T, c *http.Client, base, path string) (int, string, string) {
	t.Helper()
	resp, err := c.Get(base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	tok := ""
	if m := csrfField.FindStringSubmatch(string(b)); m != nil {
		tok = m[1]
	}
	return resp.StatusCode, string(b), tok
}

func post(t *testing.T, c *http.Client, base, path string, form url.Values) (int, string) {
	t.Helper()
	resp, err := c.PostForm(base+path, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func logIn(t *testing.T, c *http.Client, base, user, pw string) (int, string) {
	t.Helper()
	_, _, tok := get(t, c, base, "/login")
	if tok == "" {
		t.Fatal("the login page has no CSRF token")
	}
	return post(t, c, base, "/login", url.Values{"csrf": {tok}, "user": {user}, "password": {pw}})
}

func TestSecurity(t *testing.T) {
	_, hs := startConsole(t, "[[domain]]\nname = \"remote.test\"\ntype = \"remote\"\n")
	c := newClient(t)

	// No page without a login; no action either.
	for _, p := range []string{"/", "/sessions", "/domains", "/history", "/queue"} {
		if code, _, _ := get(t, c, hs.URL, p); code != http.StatusSeeOther {
			t.Errorf("GET %s without a login: %d, want a redirect to /login", p, code)
		}
	}
	if code, _ := post(t, c, hs.URL, "/domains/set", url.Values{"domain": {"remote.test"}, "field": {"hold"}, "on": {"true"}}); code != http.StatusUnauthorized {
		t.Errorf("POST without a login: %d, want 401", code)
	}
	// A made-up session id is no login.
	u, _ := url.Parse(hs.URL)
	c.Jar.SetCookies(u, []*http.Cookie{{Name: cookieLogin, Value: strings.Repeat("ab", 32)}})
	if code, _, _ := get(t, c, hs.URL, "/domains"); code != http.StatusSeeOther {
		t.Errorf("GET with a forged session cookie: %d, want a redirect to /login", code)
	}
	// The login form needs its token.
	if code, _ := post(t, c, hs.URL, "/login", url.Values{"user": {"root"}, "password": {"rootpw"}}); code != http.StatusForbidden {
		t.Errorf("login without the form's CSRF token: %d, want 403", code)
	}
	// A wrong password and a non-admin are refused alike.
	if code, body := logIn(t, c, hs.URL, "root", "wrong"); code != http.StatusUnauthorized || !strings.Contains(body, "Wrong user name or password") {
		t.Errorf("wrong password: %d %q", code, body)
	}
	if code, _ := logIn(t, c, hs.URL, "bob", "bobpw"); code != http.StatusUnauthorized {
		t.Errorf("a user not marked admin: %d, want 401", code)
	}
	if code, _, _ := get(t, c, hs.URL, "/"); code != http.StatusSeeOther {
		t.Error("a refused login gave a session")
	}
	// The third failure from this address bans it: even the right
	// password is refused now.
	if code, _ := logIn(t, c, hs.URL, "nobody", "x"); code != http.StatusTooManyRequests {
		t.Errorf("third failure: %d, want 429", code)
	}
	if code, body := logIn(t, c, hs.URL, "root", "rootpw"); code != http.StatusTooManyRequests || !strings.Contains(body, "Too many failed logins") {
		t.Errorf("right password while banned: %d", code)
	}
}

func TestCSRF(t *testing.T) {
	srv, hs := startConsole(t, "[[domain]]\nname = \"remote.test\"\ntype = \"remote\"\n")
	c := newClient(t)
	if code, _ := logIn(t, c, hs.URL, "root", "rootpw"); code != http.StatusSeeOther {
		t.Fatalf("login: %d", code)
	}
	code, body, tok := get(t, c, hs.URL, "/domains")
	if code != 200 || tok == "" || !strings.Contains(body, "remote.test") {
		t.Fatalf("domains page: %d, token %q: %s", code, tok, body)
	}
	form := url.Values{"domain": {"remote.test"}, "field": {"hold"}, "on": {"true"}}
	if code, _ := post(t, c, hs.URL, "/domains/set", form); code != http.StatusForbidden {
		t.Errorf("POST without the CSRF token: %d, want 403", code)
	}
	form.Set("csrf", strings.Repeat("0", len(tok)))
	if code, _ := post(t, c, hs.URL, "/domains/set", form); code != http.StatusForbidden {
		t.Errorf("POST with a wrong CSRF token: %d, want 403", code)
	}
	cfg, _, err := srv.opt.Config.Effective(testutil.Context(t))
	if err != nil || cfg.Domains[0].Hold {
		t.Fatalf("a refused form changed the configuration: %+v %v", cfg.Domains, err)
	}
	// With the token the change is made, by root.
	form.Set("csrf", tok)
	if code, _ := post(t, c, hs.URL, "/domains/set", form); code != http.StatusSeeOther {
		t.Errorf("POST with the token: %d", code)
	}
	h, err := srv.opt.Config.History(testutil.Context(t), "domain.remote.test")
	if err != nil || len(h) != 1 || h[0].Who != "root (admin console)" || !strings.Contains(h[0].Value, "hold = true") {
		t.Fatalf("history: %+v %v", h, err)
	}
	// The session cookie is HttpOnly and SameSite=Strict.
	resp, _ := c.Get(hs.URL + "/login")
	resp.Body.Close()
	for _, ck := range resp.Cookies() {
		if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode {
			t.Errorf("cookie %s: HttpOnly %v SameSite %v", ck.Name, ck.HttpOnly, ck.SameSite)
		}
	}
	// Logging out ends the session.
	_, _, tok = get(t, c, hs.URL, "/")
	post(t, c, hs.URL, "/logout", url.Values{"csrf": {tok}})
	if code, _, _ := get(t, c, hs.URL, "/"); code != http.StatusSeeOther {
		t.Errorf("after logout: %d, want a redirect", code)
	}
}

func TestRevisions(t *testing.T) {
	e := func(rev uint64, key, v string, unset bool) liveconfig.Entry {
		return liveconfig.Entry{Key: key, Revision: rev, Change: liveconfig.Change{Value: v, Unset: unset}}
	}
	got := Revisions([]liveconfig.Entry{e(1, "a", "1", false), e(2, "b", "x", false), e(3, "a", "2", false), e(4, "a", "", true), e(5, "a", "3", false)})
	want := []string{"5 a file current", "4 a 2 ", "3 a 1 ", "2 b file current", "1 a file "}
	for i, r := range got {
		before := r.Before
		if r.BeforeFile {
			before = "file"
		}
		s := fmt.Sprintf("%d %s %s %s", r.Revision, r.Key, before, map[bool]string{true: "current"}[r.Current])
		if s != want[i] {
			t.Errorf("row %d: %q, want %q", i, s, want[i])
		}
	}
}

// FuzzDomainValue: whatever a domain holds, its live value reads back as
// the same block.
func FuzzDomainValue(f *testing.F) {
	f.Add("mx.example.test:25", "user", "/etc/pw", true, false, true)
	f.Add("", "", "", false, true, false)
	f.Add("a\"b\\c\n", "ü", "{x = 1}", true, true, true)
	f.Fuzz(func(t *testing.T, host, user, pwfile string, tls, hold, paused bool) {
		d := config.Domain{Type: "remote", SmartHost: host, SmartHostUser: user, SmartHostPasswordFile: pwfile, RequireTLS: tls, Hold: hold, Paused: paused}
		v, err := DomainValue(d)
		if err != nil {
			return // not valid UTF-8: TOML cannot hold it
		}
		pv, err := liveconfig.ParseValue(v)
		if err != nil {
			t.Fatalf("%q does not parse: %v", v, err)
		}
		m, ok := pv.(map[string]any)
		if !ok {
			t.Fatalf("%q parsed as %T", v, pv)
		}
		str := func(k string) string { s, _ := m[k].(string); return s }
		flag := func(k string) bool { b, _ := m[k].(bool); return b }
		if str("type") != "remote" || str("smart_host") != host || str("smart_host_user") != user || str("smart_host_password_file") != pwfile ||
			flag("require_tls") != tls || flag("hold") != hold || flag("paused") != paused {
			t.Fatalf("%+v → %q → %v", d, v, m)
		}
	})
}

// Over TLS every cookie is Secure.
func TestSecureCookieOverTLS(t *testing.T) {
	srv, _ := startConsole(t, "")
	srv.opt.TLS = true
	hs := httptest.NewTLSServer(srv.Handler())
	t.Cleanup(hs.Close)
	c := hs.Client()
	c.Jar, _ = cookiejar.New(nil)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Get(hs.URL + "/login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if len(resp.Cookies()) == 0 {
		t.Fatal("no cookie")
	}
	for _, ck := range resp.Cookies() {
		if !ck.Secure || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode {
			t.Errorf("cookie %s over TLS: Secure %v HttpOnly %v SameSite %v", ck.Name, ck.Secure, ck.HttpOnly, ck.SameSite)
		}
	}
	if code, _ := logIn(t, c, hs.URL, "root", "rootpw"); code != http.StatusSeeOther {
		t.Fatalf("login over TLS: %d", code)
	}
	if code, body, _ := get(t, c, hs.URL, "/"); code != 200 || !strings.Contains(body, "Dashboard") {
		t.Errorf("dashboard over TLS: %d", code)
	}
}
