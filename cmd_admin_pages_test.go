package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
	"github.com/mailroot/mailroot/internal/users"
	"github.com/mailroot/mailroot/node"
)

// startAdminNode writes conf to cfgPath and starts a node of it, with a
// users file holding the admin root (password pw), and the admin console
// on it (startAdmin). It returns the node's context (ended at cleanup),
// the configuration, the node and the console's URL.
func startAdminNode(t *testing.T, cfgPath, conf, pw string) (context.Context, config.Config, *node.Node, string) {
	t.Helper()
	if err := os.WriteFile(cfgPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	h, err := users.HashWithCost(pw, bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	if err := users.Save(cfg.UsersPath(), []users.User{{Name: "root", Hash: h, Admin: true}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := testutil.Logger(t)
	n, err := node.StartEmbedded(ctx, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Stop)
	<-n.Ingress.Ready()
	addr, _, err := startAdmin(ctx, cfg, n.Conn, log)
	if err != nil {
		t.Fatal(err)
	}
	return ctx, cfg, n, "http://" + addr
}

// The console's users and sites pages against a running node, over
// HTTP: a user added on the users page logs in with SMTP AUTH on the
// running ingress, and after a password change on the page only the new
// password does; a site paused on the sites page answers new connections
// 421 4.3.2 (the other site goes on serving) until it is resumed.
func TestConsoleUsersAndSitesOnANode(t *testing.T) {
	t.Setenv("MAILROOT_CONFIG", "")
	t.Setenv("MAILROOT_NATS_URL", "")
	t.Setenv("MAILROOT_DATA_DIR", "")
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "mailroot.toml")
	conf := fmt.Sprintf(`hostname = "mailroot.test"
data_dir = %q
local_domains = ["local.test"]
[metrics]
listen = ""
[admin]
listen = "127.0.0.1:0"
[auth]
fail_delay = "0s"
# The test polls AUTH until the users store rereads the file: each early
# try is a failed login, which must not ban the test's address.
fail_limit = 1000
[[site]]
name = "inbound"
listen = ["127.0.0.1:0"]
[[site]]
name = "sub"
kind = "submission"
listen = ["127.0.0.1:0"]
`, filepath.Join(dir, "data"))
	_, _, n, base := startAdminNode(t, cfgPath, conf, "root-secret")
	inbound, sub := n.Ingress.SiteAddrs("inbound")[0], n.Ingress.SiteAddrs("sub")[0]

	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	csrf := regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)
	// submit posts form on page's form and returns the message shown next.
	submit := func(page, path string, form url.Values) string {
		t.Helper()
		resp, err := c.Get(base + page)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		m := csrf.FindSubmatch(b)
		if m == nil {
			t.Fatalf("%s: no CSRF token (%d)", page, resp.StatusCode)
		}
		form.Set("csrf", string(m[1]))
		if resp, err = c.PostForm(base+path, form); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc, err := url.Parse(resp.Header.Get("Location"))
		if resp.StatusCode != http.StatusSeeOther || err != nil {
			t.Fatalf("POST %s: %d %q", path, resp.StatusCode, resp.Header.Get("Location"))
		}
		return loc.Query().Get("msg")
	}
	submit("/login", "/login", url.Values{"user": {"root"}, "password": {"root-secret"}})
	if resp, err := c.Get(base + "/users"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("not logged in: %v %v", resp, err)
	}

	auth := func(user, pw string) error {
		cl, err := smtp.DialStartTLS(sub, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			return err
		}
		defer cl.Close()
		return cl.Auth(sasl.NewPlainClient("", user, pw))
	}
	if msg := submit("/users", "/users/add", url.Values{"name": {"alice@local.test"}, "password": {"first-password"}}); msg != "User alice@local.test added." {
		t.Fatalf("add: %q", msg)
	}
	testutil.WaitFor(t, 10*time.Second, "SMTP AUTH takes the user added on the page", func() bool { return auth("alice@local.test", "first-password") == nil })
	if msg := submit("/users", "/users/passwd", url.Values{"name": {"alice@local.test"}, "password": {"second-password"}}); !strings.Contains(msg, "changed") {
		t.Fatalf("passwd: %q", msg)
	}
	testutil.WaitFor(t, 10*time.Second, "SMTP AUTH refuses the old password", func() bool {
		err := auth("alice@local.test", "first-password")
		return err != nil && strings.Contains(err.Error(), "535")
	})
	if err := auth("alice@local.test", "second-password"); err != nil {
		t.Errorf("the new password: %v", err)
	}

	greet := func(addr string) string {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err.Error()
		}
		defer conn.Close()
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, _ := bufio.NewReader(conn).ReadString('\n')
		return line
	}
	if msg := submit("/sites", "/sites/pause", url.Values{"site": {"inbound"}, "on": {"true"}}); !strings.Contains(msg, "site.inbound.paused = true") {
		t.Fatalf("pause: %q", msg)
	}
	testutil.WaitFor(t, 10*time.Second, "the paused site answers 421 4.3.2", func() bool { return strings.HasPrefix(greet(inbound), "421 4.3.2 ") })
	if g := greet(sub); !strings.HasPrefix(g, "220 ") {
		t.Errorf("the other site while inbound is paused: %q", g)
	}
	if msg := submit("/sites", "/sites/pause", url.Values{"site": {"inbound"}, "on": {"false"}}); !strings.Contains(msg, "site.inbound.paused = false") {
		t.Fatalf("resume: %q", msg)
	}
	testutil.WaitFor(t, 10*time.Second, "the resumed site greets again", func() bool { return strings.HasPrefix(greet(inbound), "220 ") })
}
