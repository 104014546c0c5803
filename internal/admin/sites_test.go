package admin

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/mailroot/mailroot/internal/testutil"
)

const twoSites = `[[site]]
name = "inbound"
listen = ["127.0.0.1:0"]
relay_networks = ["127.0.0.1/32"]
[[site]]
name = "sub"
kind = "submission"
listen = ["127.0.0.1:0"]
`

// The sites page shows each site; pause and a setting change the site's
// live key through liveconfig's validation, as the admin; a bad value is
// refused naming the key, and nothing is stored. (That a running ingress
// answers 421 4.3.2 to a site paused on this page is
// TestConsoleUsersAndSitesOnANode at package main.)
func TestSitesPage(t *testing.T) {
	srv, hs := startConsole(t, twoSites)
	ctx := testutil.Context(t)
	c, ok := loggedIn(t, hs.URL, "root", "rootpw")
	if !ok {
		t.Fatal("root cannot log in")
	}
	code, body, _ := get(t, c, hs.URL, "/sites")
	if code != 200 || !strings.Contains(body, `id="site-inbound"`) || !strings.Contains(body, `id="site-sub"`) ||
		!strings.Contains(body, `value="127.0.0.1/32"`) || !strings.Contains(body, "site.sub.max_connections") || !strings.Contains(body, ">required<") {
		t.Fatalf("sites page: %d %s", code, body)
	}

	if msg := act(t, c, hs.URL, "/sites", "/sites/pause", url.Values{"site": {"inbound"}, "on": {"true"}}); !strings.Contains(msg, "site.inbound.paused = true (revision") {
		t.Fatalf("pause: %q", msg)
	}
	if msg := act(t, c, hs.URL, "/sites", "/sites/set", url.Values{"site": {"inbound"}, "field": {"relay_networks"}, "value": {"10.0.0.0/8, 192.0.2.1"}}); !strings.Contains(msg, `site.inbound.relay_networks = ["10.0.0.0/8", "192.0.2.1"]`) {
		t.Fatalf("relay networks: %q", msg)
	}
	if msg := act(t, c, hs.URL, "/sites", "/sites/set", url.Values{"site": {"sub"}, "field": {"timeout"}, "value": {"2m"}}); !strings.Contains(msg, `site.sub.timeout = "2m"`) {
		t.Fatalf("timeout: %q", msg)
	}
	cfg, entries, err := srv.opt.Config.Effective(ctx)
	if err != nil {
		t.Fatal(err)
	}
	in, sub := cfg.Sites[0], cfg.Sites[1]
	if !in.Paused || sub.Paused || strings.Join(in.RelayNetworks, ",") != "10.0.0.0/8,192.0.2.1" || sub.Timeout.D().String() != "2m0s" {
		t.Fatalf("effective sites: %+v / %+v", in.SiteKeys, sub.SiteKeys)
	}
	if e := entries["site.inbound.paused"]; e.Who != "root (admin console)" || e.Value != "true" {
		t.Errorf("the pause's revision: %+v", e)
	}
	_, body, _ = get(t, c, hs.URL, "/sites")
	if !strings.Contains(body, `class="state-paused"`) || !strings.Contains(body, "Paused: resume") {
		t.Error("the page does not show inbound paused")
	}

	// Bad values: refused naming the key, nothing stored.
	before, _ := srv.opt.Config.History(ctx, "")
	for _, tc := range []struct{ field, value, want string }{
		{"max_connections", "0", "site.inbound.max_connections = 0 refused"},
		{"max_connections", "many", "site.inbound.max_connections = many refused"},
		{"connect_deny", "not/a/rule", "site.inbound.connect_deny"},
		{"relay_networks", "10.0.0.0/99", "site.inbound.relay_networks"},
		{"timeout", "soon", "site.inbound.timeout"},
		{"max_recipients", "", "site.inbound.max_recipients refused: a number is needed"},
	} {
		msg := act(t, c, hs.URL, "/sites", "/sites/set", url.Values{"site": {"inbound"}, "field": {tc.field}, "value": {tc.value}})
		t.Logf("%s = %q: %s", tc.field, tc.value, msg)
		if !strings.Contains(msg, tc.want) || strings.Contains(msg, "(revision") {
			t.Errorf("%s = %q: %q, want %q", tc.field, tc.value, msg, tc.want)
		}
	}
	if after, _ := srv.opt.Config.History(ctx, ""); len(after) != len(before) {
		t.Errorf("refused values were stored: %d revisions, %d before", len(after), len(before))
	}
	// A form that names no site of the configuration, or a setting the
	// page does not edit, is a 400 naming it.
	_, _, tok := get(t, c, hs.URL, "/sites")
	for _, form := range []url.Values{
		{"site": {"nosuch"}, "field": {"max_connections"}, "value": {"5"}},
		{"site": {"inbound"}, "field": {"listen"}, "value": {"127.0.0.1:25"}},
	} {
		form.Set("csrf", tok)
		if code, body := post(t, c, hs.URL, "/sites/set", form); code != http.StatusBadRequest || !strings.Contains(body, form.Get(map[bool]string{true: "site", false: "field"}[form.Get("site") == "nosuch"])) {
			t.Errorf("%v: %d %q, want 400 naming it", form, code, body)
		}
	}
	if code, _ := post(t, c, hs.URL, "/sites/pause", url.Values{"site": {"sub"}, "on": {"true"}}); code != http.StatusForbidden {
		t.Errorf("pause without the CSRF token: %d, want 403", code)
	}

	// Resume.
	if msg := act(t, c, hs.URL, "/sites", "/sites/pause", url.Values{"site": {"inbound"}, "on": {"false"}}); !strings.Contains(msg, "site.inbound.paused = false") {
		t.Fatalf("resume: %q", msg)
	}
	if cfg, _, _ := srv.opt.Config.Effective(ctx); cfg.Sites[0].Paused {
		t.Error("still paused after resume")
	}
}

// Without [[site]] blocks the one site is "default", made of [ingress]:
// its keys are ingress.KEY.
func TestSitesPageDefaultSite(t *testing.T) {
	srv, hs := startConsole(t, "")
	c, ok := loggedIn(t, hs.URL, "root", "rootpw")
	if !ok {
		t.Fatal("root cannot log in")
	}
	if _, body, _ := get(t, c, hs.URL, "/sites"); !strings.Contains(body, `id="site-default"`) || !strings.Contains(body, "ingress.paused") {
		t.Fatalf("sites page: %s", body)
	}
	if msg := act(t, c, hs.URL, "/sites", "/sites/pause", url.Values{"site": {"default"}, "on": {"true"}}); !strings.Contains(msg, "ingress.paused = true") {
		t.Fatalf("pause: %q", msg)
	}
	if cfg, _, err := srv.opt.Config.Effective(testutil.Context(t)); err != nil || !cfg.EffectiveSites()[0].Paused {
		t.Fatalf("default site not paused: %v", err)
	}
}
