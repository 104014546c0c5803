package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/liveconfig"
	"github.com/mailroot/mailroot/internal/testutil"
)

// chromiumPath finds a Chromium to drive; the test skips without one,
// unless MAILROOT_REQUIRE_CHROMIUM is set (CI), where it fails.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "/usr/bin/chromium"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("MAILROOT_REQUIRE_CHROMIUM") != "" {
		t.Fatal("MAILROOT_REQUIRE_CHROMIUM is set but no chromium is installed (Debian package chromium)")
	}
	t.Skip("SKIP: no Chromium (Debian package chromium) on this machine: the admin console's browser test did not run")
	return ""
}

// submitFrom sends one message over SMTP from the local address ip.
func submitFrom(addr, ip, from, to, body string) error {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return err
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	return c.SendMail(from, []string{to}, strings.NewReader(body))
}

// The admin console in a real headless Chromium against a running node:
// log in (a wrong password refused), see a session and disconnect it,
// put remote.test on hold on the domains page and see the next message
// for it held by the running ingress and router, release it with the
// ETRN button and see it delivered, roll the hold back from the history
// page. Each page is saved as a screenshot in the test's directory (and
// in MAILROOT_SCREENSHOTS when set, to refresh docs/screenshots/).
func TestAdminConsoleInBrowser(t *testing.T) {
	chrome := chromiumPath(t)
	t.Setenv("MAILROOT_CONFIG", "")
	t.Setenv("MAILROOT_NATS_URL", "")
	t.Setenv("MAILROOT_DATA_DIR", "")
	dir := t.TempDir()
	sink := testutil.StartSink(t)
	var fixed atomic.Bool // the remote accepts other.test again
	sink.RcptFunc = func(to string) error {
		if strings.HasSuffix(to, "@other.test") && !fixed.Load() {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "try later"}
		}
		return nil
	}
	dns := testutil.StartDNS(t, "remote.test. MX 10 mx.remote.test.", "other.test. MX 10 mx.remote.test.", "mx.remote.test. A 127.0.0.1")
	cfgPath := filepath.Join(dir, "mailroot.toml")
	conf := fmt.Sprintf(`hostname = "mailroot.test"
data_dir = %q
local_domains = ["local.test"]
[ingress]
listen = ["127.0.0.1:0"]
relay_networks = ["127.0.0.1/32"]
[delivery]
port = %d
dns_server = %q
retry = ["1h"]
connect_timeout = "2s"
[metrics]
listen = ""
[admin]
listen = "127.0.0.1:0"
[[domain]]
name = "remote.test"
type = "remote"
`, filepath.Join(dir, "data"), sink.Port, dns.Addr)
	ctx, cfg, n, base := startAdminNode(t, cfgPath, conf, "s3cret")
	smtpAddr := n.Ingress.Addrs()[0]

	// One message deferred by the remote, for the queue page.
	if err := submitFrom(smtpAddr, "127.0.0.1", "a@local.test", "d@other.test", "Subject: later\r\n\r\nlater\r\n"); err != nil {
		t.Fatal(err)
	}

	actx, acancel := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome), chromedp.NoSandbox, chromedp.WindowSize(1000, 760))...)
	t.Cleanup(acancel)
	bctx, bcancel := chromedp.NewContext(actx)
	t.Cleanup(bcancel)
	if err := chromedp.Do(bctx); err != nil { // starts the browser
		t.Fatal(err)
	}
	step := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, scancel := context.WithTimeout(bctx, 15*time.Second)
		defer scancel()
		if err := chromedp.Do(sctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	text := func(sel string) string {
		t.Helper()
		sctx, scancel := context.WithTimeout(bctx, 15*time.Second)
		defer scancel()
		s, err := chromedp.Run(sctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	shots := []string{}
	shot := func(name string) {
		t.Helper()
		sctx, scancel := context.WithTimeout(bctx, 15*time.Second)
		defer scancel()
		png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		for _, d := range []string{dir, os.Getenv("MAILROOT_SCREENSHOTS")} {
			if d != "" {
				if err := os.WriteFile(filepath.Join(d, name+".png"), png, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		shots = append(shots, name)
	}
	reload := func(path string) {
		t.Helper()
		step("open "+path, chromedp.Navigate(base+path), chromedp.WaitVisible(chromedp.CSS("main")))
	}

	// Log in: a wrong password is refused, the right one opens the
	// dashboard.
	step("login page", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#login")))
	shot("login")
	step("wrong password", chromedp.SendKeys(chromedp.CSS("#user"), "root"), chromedp.SendKeys(chromedp.CSS("#password"), "wrong"),
		chromedp.Click(chromedp.CSS("#login")), chromedp.WaitVisible(chromedp.CSS("#error")))
	if s := text("#error"); !strings.Contains(s, "Wrong user name or password") {
		t.Fatalf("wrong password: %q", s)
	}
	step("log in", chromedp.SendKeys(chromedp.CSS("#user"), "root"), chromedp.SendKeys(chromedp.CSS("#password"), "s3cret"),
		chromedp.Click(chromedp.CSS("#login")), chromedp.WaitVisible(chromedp.CSS("#chart")))
	testutil.WaitFor(t, 30*time.Second, "the dashboard shows the deferred message", func() bool {
		reload("/")
		return text("#state-deferred") == "1"
	})
	if s := text("#totals"); !strings.Contains(s, "received 1") || !strings.Contains(s, "deferred 1") {
		t.Errorf("dashboard totals: %q", s)
	}
	shot("dashboard")

	// Sessions: an open SMTP session is listed and disconnected.
	c, err := smtp.Dial(smtpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "the session on the sessions page", func() bool {
		reload("/sessions")
		sctx, scancel := context.WithTimeout(bctx, 5*time.Second)
		defer scancel()
		nodes, err := chromedp.Run(sctx, chromedp.Nodes(chromedp.CSS("#sessions button"), chromedp.AtLeast(0)))
		return err == nil && len(nodes) == 1
	})
	shot("sessions")
	step("disconnect", chromedp.Click(chromedp.CSS("#sessions button")), chromedp.WaitVisible(chromedp.CSS("#msg")))
	if s := text("#msg"); !strings.Contains(s, "closed") {
		t.Fatalf("disconnect: %q", s)
	}
	if err := c.Noop(); err == nil {
		t.Error("the disconnected session still answers")
	}

	// Domains: hold remote.test; the running ingress accepts mail for it
	// from outside relay_networks (a held domain is ours) and the router
	// holds it.
	holdBtn := `tr[id="domain-remote.test"] button[name=hold]`
	reload("/domains")
	if s := text(holdBtn); s != "Hold: off" {
		t.Fatalf("hold button: %q", s)
	}
	step("hold on", chromedp.Click(chromedp.CSS(holdBtn)), chromedp.WaitVisible(chromedp.CSS("#msg")))
	if s := text("#msg"); !strings.Contains(s, "remote.test: hold on") {
		t.Fatalf("hold: %q", s)
	}
	testutil.WaitFor(t, 10*time.Second, "the running ingress takes mail for the held domain", func() bool {
		return submitFrom(smtpAddr, "127.0.0.9", "x@outside.test", "b@remote.test", "Subject: held\r\n\r\nheld\r\n") == nil
	})
	testutil.WaitFor(t, 10*time.Second, "the router holds it", func() bool {
		k, err := bus.HeldCount(ctx, n.JS, bus.Token("remote.test"))
		return err == nil && k == 1
	})
	if sink.Count() != 0 {
		t.Fatal("held mail was delivered")
	}
	reload("/domains")
	if s := text(`tr[id="domain-remote.test"] .held`); s != "1" {
		t.Errorf("held count on the page: %q", s)
	}
	shot("domains")

	// ETRN release from the page: the held message is delivered.
	step("release", chromedp.Click(chromedp.CSS(`tr[id="domain-remote.test"] button[name=release]`)), chromedp.WaitVisible(chromedp.CSS("#msg")))
	if s := text("#msg"); !strings.Contains(s, "ETRN release of remote.test started: 1 pending") {
		t.Fatalf("release: %q", s)
	}
	testutil.WaitFor(t, 20*time.Second, "the released message at the remote", func() bool { return sink.Count() == 1 })

	// History: roll domain.remote.test back to the file's seed revision.
	reload("/history")
	shot("history")
	step("rollback", chromedp.Click(chromedp.CSS(`#history button[name=rollback]`)), chromedp.WaitVisible(chromedp.CSS("#msg")))
	if s := text("#msg"); !strings.Contains(s, "domain.remote.test rolled back to revision") {
		t.Fatalf("rollback: %q", s)
	}
	st, err := liveconfig.Open(ctx, n.JS, 1, cfg.Source)
	if err != nil {
		t.Fatal(err)
	}
	if eff, _, err := st.Effective(ctx); err != nil || eff.Domains[0].Hold {
		t.Fatalf("after the rollback: %+v %v", eff.Domains, err)
	}
	hist, err := st.History(ctx, "domain.remote.test")
	if err != nil || len(hist) != 3 {
		t.Fatalf("history of domain.remote.test: %+v %v", hist, err)
	}
	if e := hist[2]; e.Who != "root (admin console)" || !strings.Contains(e.Why, "rollback to revision") {
		t.Errorf("the rollback's revision: %+v", e)
	}
	testutil.WaitFor(t, 10*time.Second, "the running ingress refuses relay for remote.test again", func() bool {
		err := submitFrom(smtpAddr, "127.0.0.9", "x@outside.test", "b@remote.test", "Subject: x\r\n\r\nx\r\n")
		return err != nil && strings.Contains(err.Error(), "Unable to relay")
	})

	reload("/queue")
	if s := text("#queue"); !strings.Contains(s, "d@other.test") || !strings.Contains(s, "deferred") {
		t.Errorf("queue page: %q", s)
	}
	shot("queue")
	// A filtered view is a link; its row links to the message's page:
	// envelope, headers, history, the same buttons.
	reload("/queue?state=deferred&q=other.test")
	step("message page", chromedp.Click(chromedp.CSS(`#queue td a`)), chromedp.WaitVisible(chromedp.CSS("#headers")))
	if s := text("#headers"); !strings.Contains(s, "Subject: later") || strings.Contains(text("main"), "\nlater\n") {
		t.Errorf("message headers: %q", s)
	}
	if s := text("#events"); !strings.Contains(s, "received") || !strings.Contains(s, "deferred") {
		t.Errorf("message history: %q", s)
	}
	if s := text("#rcpts"); !strings.Contains(s, "d@other.test") || !strings.Contains(s, "queued: deferred") {
		t.Errorf("message recipients: %q", s)
	}
	shot("message")
	reload("/queue")
	// The remote is fixed: Flush on the queue page delivers it at once
	// (its next retry is an hour away).
	fixed.Store(true)
	step("flush", chromedp.Click(chromedp.CSS(`#queue button[value=flush]`)), chromedp.WaitVisible(chromedp.CSS("#msg")))
	if s := text("#msg"); !strings.Contains(s, "now") {
		t.Errorf("flush: %q", s)
	}
	testutil.WaitFor(t, 30*time.Second, "the flushed message delivered", func() bool {
		for _, m := range sink.Mails() {
			if slices.Contains(m.To, "d@other.test") {
				return true
			}
		}
		return false
	})

	// Badmail: null-sender mail to a domain that does not exist lands
	// there; the page shows it with its reason, and Delete removes it.
	if err := submitFrom(smtpAddr, "127.0.0.1", "", "x@nowhere.test", "Subject: lost\r\n\r\nnobody home\r\n"); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 30*time.Second, "the Badmail page lists the entry", func() bool {
		reload("/badmail")
		return strings.Contains(text("main"), "x@nowhere.test")
	})
	shot("badmail")
	step("badmail delete", chromedp.Click(chromedp.CSS(`#badmail button[value=delete]`)), chromedp.WaitVisible(chromedp.CSS("#msg")))
	if s := text("#msg"); !strings.Contains(s, "deleted") {
		t.Errorf("badmail delete: %q", s)
	}
	if list, err := listBadmail(cfg.BadmailDir()); err != nil || len(list) != 0 {
		t.Errorf("Badmail after the delete: %v %v", list, err)
	}
	reload("/")
	shot("dashboard") // again, with the hour's deliveries
	for _, p := range []string{"users", "sites"} {
		reload("/" + p)
		shot(p)
	}
	// On a phone's screen the pages fit its width: nothing wider than
	// the viewport but the tables' own scrolling boxes.
	step("phone", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile, chromedp.EmulateScale(2)))
	for _, p := range []string{"domains", "users", "sites"} {
		reload("/" + p)
		sctx, scancel := context.WithTimeout(bctx, 10*time.Second)
		wide, err := chromedp.Run(sctx, chromedp.Evaluate[bool]("document.documentElement.scrollWidth > window.innerWidth"))
		scancel()
		if err != nil || wide {
			t.Errorf("%s page on a 390 px screen: wider than the screen %v (%v)", p, wide, err)
		}
		shot(p + "-phone")
	}
	for _, p := range []string{"/", "/queue", "/history"} {
		name := map[string]string{"/": "dashboard", "/queue": "queue", "/history": "history"}[p]
		reload(p)
		sctx, scancel := context.WithTimeout(bctx, 10*time.Second)
		wide, err := chromedp.Run(sctx, chromedp.Evaluate[bool]("document.documentElement.scrollWidth > window.innerWidth"))
		scancel()
		if err != nil || wide {
			t.Errorf("%s page on a 390 px screen: wider than the screen %v (%v)", name, wide, err)
		}
		shot(name + "-phone")
	}

	// Every action is an event naming the admin.
	var actions []string
	if err := bus.ReadEvents(ctx, n.JS, bus.EventFilter{}, false, func(e bus.Event) error {
		if e.Admin == "root (admin console)" {
			actions = append(actions, e.Type+" "+e.Reason)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{"admin disconnected session", "config hold on", "admin ETRN release of remote.test", "config rollback to revision", "admin flushed", "deleted "}
	if len(actions) != len(want) {
		t.Fatalf("admin events %q, want %q", actions, want)
	}
	for i, w := range want {
		if !strings.HasPrefix(actions[i], w) {
			t.Errorf("admin event %d: %q, want %q…", i, actions[i], w)
		}
	}
	t.Logf("screenshots %v in %s", shots, dir)
}

// `mailroot admin` refuses to serve outside loopback without TLS, naming
// the key, and wants an address.
func TestAdminCommandRefusesPlainHTTPOutsideLoopback(t *testing.T) {
	t.Setenv("MAILROOT_CONFIG", "")
	t.Setenv("MAILROOT_NATS_URL", "")
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-listen", "0.0.0.0:8025"}, "admin.listen"},
		{[]string{"-listen", "[::]:0"}, "needs TLS"},
		{[]string{"-listen", "8025"}, "not host:port"},
	} {
		var out, errb strings.Builder
		if code := adminCommand(append(tc.args, "-data", dir), &out, &errb); code != 2 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("admin %v: exit %d, %q; want 2 and %q", tc.args, code, errb.String(), tc.want)
		}
	}
}

// `mailroot all` serves the console on admin.listen.
func TestAllServesAdminConsole(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	port, aport := freePort(t), freePort(t)
	cfg := writeAllConfig(t, filepath.Join(dir, "mailroot.toml"), filepath.Join(dir, "data"), port, fmt.Sprintf("[admin]\nlisten = \"127.0.0.1:%d\"\n", aport))
	startProcess(t, "mailroot all", 30*time.Second, bin, "all", "-config", cfg)
	url := fmt.Sprintf("http://127.0.0.1:%d/login", aport)
	var body string
	testutil.WaitFor(t, 30*time.Second, "the console on "+url, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return resp.StatusCode == http.StatusOK
	})
	if !strings.Contains(body, `name="password"`) || !strings.Contains(body, `name="csrf"`) {
		t.Fatalf("login page: %s", body)
	}
}
