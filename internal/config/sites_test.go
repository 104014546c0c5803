package config

import (
	"errors"
	"testing"
	"time"
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
	}
	for _, tt := range tests {
		_, err := Load(write(t, tt.file))
		var ke *KeyError
		if !errors.As(err, &ke) || ke.Key != tt.key {
			t.Errorf("%q: %v, want an error about %s", tt.file, err, tt.key)
		}
	}
}
