package config

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

func TestNoSiteBlocksMeansIngressIsTheSite(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	sites := c.EffectiveSites()
	if len(sites) != 1 {
		t.Fatalf("%d sites, want 1", len(sites))
	}
	s := sites[0]
	if s.Name != "default" || s.Kind != KindMTA || s.Listen[0] != "127.0.0.1:2525" || s.Auth != AuthOptional || !s.StartTLS || !s.ETRN || s.ATRN {
		t.Errorf("default site %+v", s)
	}
	if c.UsersPath() != "mailroot-data/users" || c.TLSDir() != "mailroot-data/tls" {
		t.Errorf("users %q tls %q", c.UsersPath(), c.TLSDir())
	}
}

func TestSiteKindsInheritAndOverride(t *testing.T) {
	p := write(t, `
local_domains = ["example.test", "other.test"]
[ingress]
max_message_size = 2000000
timeout = "2m"
[[site]]
kind = "mta"
listen = ["127.0.0.1:2525", "[::1]:2525"]
[[site]]
kind = "submission"
listen = ["127.0.0.1:2587"]
hostname = "submit.example.test"
max_message_size = 5000000
local_domains = ["other.test"]
[[site]]
kind = "smtps"
listen = ["127.0.0.1:2465"]
[[site]]
name = "dialup"
kind = "odmr"
listen = ["127.0.0.1:2366"]
auth = "required"
`)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	s := c.EffectiveSites()
	if len(s) != 4 {
		t.Fatalf("%d sites", len(s))
	}
	want := []struct {
		name, auth    string
		implicit      bool
		etrn, atrn    bool
		size          int64
		host          string
		listenCount   int
		localDomains  int
		timeoutMinute int
	}{
		{"mta", AuthOptional, false, true, false, 2000000, c.Hostname, 2, 0, 2},
		{"submission", AuthRequired, false, false, false, 5000000, "submit.example.test", 1, 1, 2},
		{"smtps", AuthRequired, true, false, false, 2000000, c.Hostname, 1, 0, 2},
		{"dialup", AuthRequired, false, false, true, 2000000, c.Hostname, 1, 0, 2},
	}
	for i, w := range want {
		g := s[i]
		if g.Name != w.name || g.Auth != w.auth || g.ImplicitTLS != w.implicit || g.ETRN != w.etrn || g.ATRN != w.atrn ||
			g.MaxMessageSize != w.size || g.Hostname != w.host || len(g.Listen) != w.listenCount ||
			len(g.LocalDomains) != w.localDomains || g.Timeout.D() != time.Duration(w.timeoutMinute)*time.Minute {
			t.Errorf("site %d = %+v, want %+v", i, g, w)
		}
	}
}

func TestSiteErrorsNameTheKey(t *testing.T) {
	tests := []struct{ file, key string }{
		{"[[site]]\nkind = \"pop3\"\nlisten=[\"127.0.0.1:1\"]\n", "site[0].kind"},
		{"[[site]]\nlisten = [\"nocolon\"]\n", "site[0].listen"},
		{"[[site]]\nlisten = [\"127.0.0.1:99999\"]\n", "site[0].listen"},
		{"[[site]]\nlisten = [\"127.0.0.1:1\"]\n[[site]]\nkind = \"submission\"\nlisten = [\"127.0.0.1:submission\"]\n", "site[1].listen"},
		{"[[site]]\nlisten = [\"no host:25\"]\n", "site[0].listen"},
		{"[[site]]\nlisten = [\"127.0.0.1:1\"]\nauth = \"maybe\"\n", "site[0].auth"},
		{"[[site]]\nlisten = [\"127.0.0.1:1\"]\n[[site]]\nlisten = [\"127.0.0.1:1\"]\nkind=\"submission\"\n", "site[1].listen"},
		{"[[site]]\nlisten = [\"127.0.0.1:1\"]\n[[site]]\nlisten = [\"127.0.0.1:2\"]\n", "site[1].name"},
		{"[[site]]\nlisten = [\"127.0.0.1:1\"]\nlocal_domains = [\"elsewhere.test\"]\n", "site[0].local_domains"},
		{"[[site]]\nlisten = [\"127.0.0.1:1\"]\nrelay_networks = [\"10.0.0.0/33\"]\n", "site[0].relay_networks"},
		{"[[site]]\nlisten = [\"127.0.0.1:1\"]\nmax_line_length = 80\n", "site[0].max_line_length"},
		{"[[site]]\nlisten = [\"127.0.0.1:1\"]\nauth = \"off\"\natrn = true\n", "site[0].atrn"},
		{"[[site]]\nlisten = [\"127.0.0.1:1\"]\nbogus = 1\n", "site.bogus"},
		{"[[site]]\nlisten = [\"127.0.0.1:1\"]\ntls_cert = \"x.pem\"\n", "site[0].tls_cert"},
		{"[ingress]\nbare_newline = \"fix\"\n", "ingress.bare_newline"},
		{"[ingress]\nmax_connections_per_ip = 0\n", "ingress.max_connections_per_ip"},
		{"[auth]\nfail_limit = 0\n", "auth.fail_limit"},
		{"[[site]]\nlisten = [\"127.0.0.1:1\"]\nlog_dir = \"/dev/null/logs\"\n", "site[0].log_dir"},
		{"[ingress]\nlog_dir = \"/tmp/a\\nb\"\n", "ingress.log_dir"},
	}
	for _, tt := range tests {
		_, err := Load(write(t, tt.file))
		var ke *KeyError
		if !errors.As(err, &ke) || ke.Key != tt.key {
			t.Errorf("%q: %v, want an error about %s", tt.file, err, tt.key)
		}
	}
}

// Every SiteKeys field, found by reflection so that a key added later is
// covered with no change here, is inherited by a [[site]] block that
// leaves it out (unless the block's kind presets it), overridden by one
// that sets it, and taken from [ingress] by the one site made of
// [ingress]; no block changes [ingress]'s own value. The values are made
// up, not valid, so this is decoding only (Load's step before Validate).
func TestEverySiteKeyIsInheritedAndOverridable(t *testing.T) {
	// The SiteKeys fields each kind sets over [ingress]'s (SiteOf).
	presets := map[string][]string{
		KindMTA:        {"Listen"},
		KindSubmission: {"Listen", "Auth", "ETRN", "DNSBL"},
		KindSMTPS:      {"Listen", "Auth", "ETRN", "DNSBL"},
		KindODMR:       {"Listen", "Auth", "ETRN", "ATRN", "DNSBL"},
	}
	decode := func(t *testing.T, file map[string]any) Config {
		t.Helper()
		var b strings.Builder
		if err := toml.NewEncoder(&b).Encode(file); err != nil {
			t.Fatal(err)
		}
		c := Default()
		if err := c.decodeFile(write(t, b.String())); err != nil {
			t.Fatalf("%v in\n%s", err, b.String())
		}
		return c
	}
	typ := reflect.TypeFor[SiteKeys]()
	def := reflect.ValueOf(Default().Ingress.SiteKeys)
	for i := range typ.NumField() {
		f := typ.Field(i)
		key := f.Tag.Get("toml")
		if key == "" || f.Anonymous {
			t.Fatalf("SiteKeys.%s needs a toml key", f.Name)
		}
		t.Run(key, func(t *testing.T) {
			inherited := madeUp(t, def.Field(i), key+"-ingress")
			own := madeUp(t, def.Field(i), key+"-site")
			get := func(k SiteKeys) any { return reflect.ValueOf(k).Field(i).Interface() }
			check := func(what string, got, want any) {
				t.Helper()
				if !reflect.DeepEqual(got, want) {
					t.Errorf("%s: %s = %#v, want %#v", what, key, got, want)
				}
			}
			ingress := map[string]any{key: inherited}

			c := decode(t, map[string]any{"ingress": ingress})
			check("no [[site]]", get(c.EffectiveSites()[0].SiteKeys), inherited)

			for kind, preset := range presets {
				c := decode(t, map[string]any{"ingress": ingress, "site": []map[string]any{{"kind": kind}}})
				want := inherited
				if slices.Contains(preset, f.Name) {
					want = get(Default().SiteOf(kind).SiteKeys)
				}
				check("kind "+kind+", left out", get(c.Sites[0].SiteKeys), want)
				check("kind "+kind+", left out: [ingress]", get(c.Ingress.SiteKeys), inherited)

				c = decode(t, map[string]any{"ingress": ingress, "site": []map[string]any{{"kind": kind, key: own}}})
				check("kind "+kind+", set", get(c.Sites[0].SiteKeys), own)
				check("kind "+kind+", set: [ingress]", get(c.Ingress.SiteKeys), inherited)
			}
		})
	}

	// The keys of Site alone are still unknown in [ingress].
	st := reflect.TypeFor[Site]()
	for i := range st.NumField() {
		if f := st.Field(i); !f.Anonymous {
			key := f.Tag.Get("toml")
			var b strings.Builder
			if err := toml.NewEncoder(&b).Encode(map[string]any{"ingress": map[string]any{key: madeUp(t, reflect.Zero(f.Type), key)}}); err != nil {
				t.Fatal(err)
			}
			c := Default()
			var ke *KeyError
			if err := c.decodeFile(write(t, b.String())); !errors.As(err, &ke) || ke.Key != "ingress."+key || ke.Msg != "unknown key" {
				t.Errorf("ingress.%s: %v, want an unknown key", key, err)
			}
		}
	}
}

// madeUp returns a value of v's type that differs from v and, through
// tag, from every other made-up value: a list one longer than v (so the
// lists of [ingress] and of a [[site]] block are as long, and a block
// decoded into [ingress]'s array would show).
func madeUp(t *testing.T, v reflect.Value, tag string) any {
	t.Helper()
	n := reflect.New(v.Type()).Elem()
	switch v.Kind() {
	case reflect.Bool:
		n.SetBool(!v.Bool())
	case reflect.Int, reflect.Int64:
		n.SetInt(v.Int() + int64(len(tag)) + 1)
	case reflect.String:
		n.SetString(v.String() + "-" + tag)
	case reflect.Slice:
		if v.Type().Elem().Kind() != reflect.String {
			t.Fatalf("no made-up value for a %v: add one here", v.Type())
		}
		n.Set(reflect.Append(reflect.AppendSlice(reflect.MakeSlice(v.Type(), 0, v.Len()+1), v), reflect.ValueOf(tag)))
	default:
		t.Fatalf("no made-up value for a %v: add one here (and see SiteKeys.clone)", v.Type())
	}
	return n.Interface()
}

// log_dir: each site logs into a folder of its own name under it, a
// relative log_dir is under data_dir, and unset is off.
func TestSiteLogDir(t *testing.T) {
	c := Default()
	c.DataDir = "/var/lib/mailroot"
	s := c.SiteOf(KindMTA)
	if d := c.SiteLogDir(s); d != "" {
		t.Errorf("unset log_dir: %q, want off", d)
	}
	s.LogDir = "LogFiles"
	if d := c.SiteLogDir(s); d != "/var/lib/mailroot/LogFiles/mta" {
		t.Errorf("relative log_dir: %q", d)
	}
	s.LogDir, s.Name = "/var/log/mailroot", "inbound"
	if d := c.SiteLogDir(s); d != "/var/log/mailroot/inbound" {
		t.Errorf("absolute log_dir: %q", d)
	}
	dir := t.TempDir()
	c.DataDir = dir
	s.LogDir = "not/yet/there"
	if err := c.validateSite("site[0]", s); err != nil {
		t.Errorf("a log_dir to be created: %v", err)
	}
}
