package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func write(t *testing.T, s string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mailroot.toml")
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultsAreValid(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if c.Ingress.Listen[0] != "127.0.0.1:2525" || c.LocalDomains[0] != "localhost" || c.NATS.Sync != "always" {
		t.Errorf("defaults %+v", c)
	}
}

// The sample file documents every key with its default: it must load and
// equal the defaults (except the host name it sets).
func TestSampleFileMatchesDefaults(t *testing.T) {
	c, err := Load(filepath.Join("..", "..", "deploy", "mailroot.toml"))
	if err != nil {
		t.Fatal(err)
	}
	d := Default()
	d.Hostname, d.Source = c.Hostname, c.Source
	if c.Hostname != "mail.example.test" {
		t.Errorf("hostname %q", c.Hostname)
	}
	if got, want := strings.ReplaceAll(sprint(c), " ", ""), strings.ReplaceAll(sprint(d), " ", ""); got != want {
		t.Errorf("sample file differs from defaults:\n%s\n%s", got, want)
	}
}

func sprint(c Config) string { return fmt.Sprintf("%+v", c) }

func TestErrorsNameTheKey(t *testing.T) {
	tests := []struct{ file, key string }{
		{"bogus = 1\n", "bogus"},
		{"[ingress]\nlisten_on = [\"x\"]\n", "ingress.listen_on"},
		{"[delivery]\nretry = [\"soon\"]\n", "delivery.retry"},
		{"[delivery]\nretry = [\"100ms\"]\n", "delivery.retry"},
		{"[delivery]\nport = 0\n", "delivery.port"},
		{"[delivery]\nsmart_host = \"nocolon\"\n", "delivery.smart_host"},
		{"[ingress]\nrelay_networks = [\"10.0.0.0/33\"]\n", "ingress.relay_networks"},
		{"[ingress]\nmax_message_size = \"big\"\n", "ingress.max_message_size"},
		{"[nats]\nsync = \"sometimes\"\n", "nats.sync"},
		{"log_level = \"loud\"\n", "log_level"},
		{"local_domains = [\"a b\"]\n", "local_domains"},
		{"[delivery]\nretry_jitter = 0.9\n", "delivery.retry_jitter"},
		{"[delivery]\ndelay_notice = \"-1h\"\n", "delivery.delay_notice"},
		{"[delivery]\nlocal_expire = \"0s\"\n", "delivery.local_expire"},
		{"[delivery]\nndr_copy_to = \"not an address\"\n", "delivery.ndr_copy_to"},
		{"[delivery]\nack_wait = \"1s\"\n", "delivery.ack_wait"},
		{"[delivery]\nconnection_cache_time = \"-1s\"\n", "delivery.connection_cache_time"},
		{"[delivery]\nconnection_reuse_count = 0\n", "delivery.connection_reuse_count"},
	}
	for _, tt := range tests {
		_, err := Load(write(t, tt.file))
		if err == nil || !strings.Contains(err.Error(), tt.key) {
			t.Errorf("%q: %v, want an error naming %s", tt.file, err, tt.key)
		}
	}
	var ke *KeyError
	if _, err := Load(write(t, "bogus = 1\n")); !errors.As(err, &ke) || ke.Key != "bogus" {
		t.Errorf("unknown key error %v is not a KeyError for bogus", err)
	}
}

// Every host:port key is checked with the configuration: a port that
// cannot be bound or dialled, or a host that is no host, is a KeyError
// naming the key, not a failure at start or at the first delivery.
func TestAddressesValidated(t *testing.T) {
	good := []string{
		"[ingress]\nlisten = [\"127.0.0.1:25\", \":587\", \"[::1]:2525\", \"localhost:2525\", \"127.0.0.1:0\"]\n",
		"[nats]\nlisten = \"127.0.0.1:4222\"\n",
		"[nats]\nlisten = \":4222\"\n",
		"[nats]\nurl = \"nats://u:p@nats1.test:4222, tls://[::1]:4223,nats2.test,nats3.test:4224\"\n",
		"[delivery]\nsmart_host = \"relay.example.net:25\"\n",
		"[delivery]\nsmart_host = \"[192.0.2.1]:2526\"\n",
		"[delivery]\nsmart_host = \"[2001:db8::1]:25\"\n",
		"[delivery]\ndns_server = \"127.0.0.1:5353\"\n",
		"[delivery]\ndns_server = \"[::1]:53\"\n",
		"[delivery]\ntls_rpt = true\ntls_rpt_contact = \"tlsrpt@example.test\"\ntls_rpt_org = \"Example\"\n",
		"[[domain]]\nname = \"p.test\"\ntype = \"remote\"\nsmart_host = \"mx.p.test.:25\"\n",
		"[metrics]\nlisten = \"127.0.0.1:0\"\n",
		"[metrics]\nlisten = \":9425\"\n",
		"[metrics]\nlisten = \"\"\n",
		// Another host's port 2525 is not the SMTP site's.
		"[metrics]\nlisten = \"127.0.0.2:2525\"\n",
	}
	for _, file := range good {
		if _, err := Load(write(t, file)); err != nil {
			t.Errorf("%q: %v", file, err)
		}
	}
	bad := []struct{ file, key, msg string }{
		{"[ingress]\nlisten = [\"127.0.0.1:99999\"]\n", "ingress.listen", `port "99999" is not a number from 1 to 65535`},
		{"[ingress]\nlisten = [\"127.0.0.1:-1\"]\n", "ingress.listen", `port "-1"`},
		{"[ingress]\nlisten = [\"127.0.0.1:smtp\"]\n", "ingress.listen", `port "smtp"`},
		{"[ingress]\nlisten = [\"127.0.0.1:\"]\n", "ingress.listen", `port ""`},
		{"[ingress]\nlisten = [\"::1:25\"]\n", "ingress.listen", "is not host:port"},
		{"[ingress]\nlisten = [\"bad host:25\"]\n", "ingress.listen", `host "bad host"`},
		{"[ingress]\nlisten = [\"-x.test:25\"]\n", "ingress.listen", `host "-x.test"`},
		{"[nats]\nlisten = \"127.0.0.1:99999\"\n", "nats.listen", `port "99999"`},
		{"[nats]\nlisten = \"127.0.0.1:0\"\n", "nats.listen", `port "0"`},
		{"[nats]\nlisten = \"4222\"\n", "nats.listen", "is not host:port"},
		{"[nats]\nurl = \"nats://127.0.0.1:4222,nats://127.0.0.1:99999\"\n", "nats.url", `server 2 of the list: port "99999"`},
		{"[nats]\nurl = \"nats://u:secret@h.test:x\"\n", "nats.url", "server 1 of the list is not a URL"},
		{"[nats]\nurl = \"nats://:4222\"\n", "nats.url", "needs a host"},
		{"[delivery]\nsmart_host = \"relay.test:0\"\n", "delivery.smart_host", `port "0"`},
		{"[delivery]\nsmart_host = \"relay.test:65536\"\n", "delivery.smart_host", `port "65536"`},
		{"[delivery]\nsmart_host = \":25\"\n", "delivery.smart_host", "needs a host"},
		{"[delivery]\ndns_server = \"127.0.0.1:70000\"\n", "delivery.dns_server", `port "70000"`},
		{"[delivery]\ndns_server = \"ns.test:53\"\n", "delivery.dns_server", `host "ns.test" is not an IP address`},
		{"[delivery]\ndns_server = \":53\"\n", "delivery.dns_server", "needs a host"},
		{"[delivery]\ntls_rpt_contact = \"postmaster\"\n", "delivery.tls_rpt_contact", "no domain"},
		{"[delivery]\ntls_rpt_contact = \"Post Master <pm@x.test>\"\n", "delivery.tls_rpt_contact", "special character"},
		{"[[domain]]\nname = \"p.test\"\ntype = \"remote\"\nsmart_host = \"mx.p.test:99999\"\n", "domain[0].smart_host", `port "99999"`},
		{"[metrics]\nlisten = \"9425\"\n", "metrics.listen", "is not host:port"},
		{"[metrics]\nlisten = \"127.0.0.1:99999\"\n", "metrics.listen", `port "99999"`},
		{"[metrics]\nlisten = \"127.0.0.1:2525\"\n", "metrics.listen", `takes the port of the listen address of site "default"`},
		{"[metrics]\nlisten = \":2525\"\n", "metrics.listen", `takes the port of the listen address of site "default"`},
		{"[nats]\nlisten = \"127.0.0.1:4222\"\n[metrics]\nlisten = \"127.0.0.1:4222\"\n", "metrics.listen", "takes the port of nats.listen"},
		{"[admin]\nlisten = \"8025\"\n", "admin.listen", "is not host:port"},
		{"[admin]\nlisten = \"0.0.0.0:8025\"\n", "admin.listen", "outside loopback: the console needs TLS"},
		{"[admin]\nlisten = \"[::]:8025\"\ntls_cert = \"c.pem\"\n", "admin.tls_cert", "go together"},
	}
	for _, tt := range bad {
		_, err := Load(write(t, tt.file))
		var ke *KeyError
		if !errors.As(err, &ke) || ke.Key != tt.key || !strings.Contains(ke.Msg, tt.msg) {
			t.Errorf("%q: %v, want a KeyError for %s saying %s", tt.file, err, tt.key, tt.msg)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%q: the error shows the password: %v", tt.file, err)
		}
	}
}

func TestValuesApply(t *testing.T) {
	c, err := Load(write(t, `
hostname = "mx.test"
local_domains = ["Example.TEST."]
[delivery]
retry = ["1s", "2s"]
expire = "10s"
`))
	if err != nil {
		t.Fatal(err)
	}
	if !c.IsLocal("example.test") || !c.IsLocal("EXAMPLE.test.") || c.IsLocal("other.test") {
		t.Errorf("local domains %v", c.LocalDomains)
	}
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 7: 2 * time.Second} {
		if got := c.Delivery.RetryDelay(n); got != want {
			t.Errorf("RetryDelay(%d) = %v, want %v", n, got, want)
		}
	}
}

func TestDomains(t *testing.T) {
	c, err := Load(write(t, `
local_domains = ["a.test"]
default_domain = "a.test"
[[domain]]
name = "B.test"
drop_dir = "/srv/b-mail"
[[domain]]
name = "alias.test"
type = "alias"
[[domain]]
name = "partner.test"
type = "remote"
smart_host = "[192.0.2.7]:25"
hold = true
`))
	if err != nil {
		t.Fatal(err)
	}
	if !c.IsLocal("b.test") || c.IsLocal("alias.test") || c.IsLocal("partner.test") {
		t.Errorf("IsLocal wrong for [[domain]] blocks")
	}
	if c.DropDirFor("B.TEST") != "/srv/b-mail" || c.DropDirFor("a.test") != filepath.Join(c.DropDir(), "a.test") {
		t.Errorf("drop dirs %q %q", c.DropDirFor("b.test"), c.DropDirFor("a.test"))
	}
	if d, ok := c.Domain("partner.test"); !ok || !d.Hold || d.SmartHost != "[192.0.2.7]:25" {
		t.Errorf("remote domain %+v", d)
	}
	if c.DefaultDomainName() != "a.test" {
		t.Errorf("default domain %q", c.DefaultDomainName())
	}
	for _, bad := range []struct{ file, key string }{
		{"[[domain]]\nname = \"x.test\"\ntype = \"weird\"\n", "domain[0].type"},
		{"[[domain]]\nname = \"x.test\"\nhold = true\n", "domain[0]"},
		{"[[domain]]\nname = \"x.test\"\n[[domain]]\nname = \"X.test\"\n", "domain[1].name"},
		{"default_domain = \"elsewhere.test\"\n", "default_domain"},
	} {
		if _, err := Load(write(t, bad.file)); err == nil || !strings.Contains(err.Error(), bad.key) {
			t.Errorf("%q: %v, want error naming %s", bad.file, err, bad.key)
		}
	}
}

// A smart host login needs a smart host and a password source; for the
// global smart host the environment can hold the password.
func TestSmartHostLoginKeys(t *testing.T) {
	base := func() Config { c := Default(); c.DataDir = t.TempDir(); return c }
	for _, tc := range []struct {
		name string
		edit func(*Config)
		env  string
		key  string
	}{
		{"user without smart host", func(c *Config) { c.Delivery.SmartHostUser = "u" }, "", "delivery.smart_host_user"},
		{"user without password", func(c *Config) { c.Delivery.SmartHost = "relay.test:587"; c.Delivery.SmartHostUser = "u" }, "", "delivery.smart_host_user"},
		{"password from the environment", func(c *Config) { c.Delivery.SmartHost = "relay.test:587"; c.Delivery.SmartHostUser = "u" }, "pw", ""},
		{"password file without user", func(c *Config) { c.Delivery.SmartHost = "relay.test:587"; c.Delivery.SmartHostPasswordFile = "/x" }, "", "delivery.smart_host_password_file"},
		{"domain user needs its own file", func(c *Config) {
			c.Domains = []Domain{{Name: "d.test", Type: DomainRemote, SmartHost: "relay.test:587", SmartHostUser: "u"}}
		}, "pw", "domain[0].smart_host_user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(SmartHostPasswordEnv, tc.env)
			c := base()
			tc.edit(&c)
			err := c.Validate()
			if tc.key == "" {
				if err != nil {
					t.Fatalf("valid: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.key) {
				t.Errorf("error %v, want one naming %s", err, tc.key)
			}
		})
	}
}

// The metrics listener is on by default, on loopback, and on a port that
// no other default of Mailroot takes (the SMTP site, the NATS client port
// nats.listen is usually given).
func TestMetricsListenDefault(t *testing.T) {
	c := Default()
	if c.Metrics.Listen != "127.0.0.1:9425" {
		t.Fatalf("metrics.listen default %q, want 127.0.0.1:9425", c.Metrics.Listen)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(c.Metrics.Listen)
	taken := []string{"4222", "6222", "8222"} // nats-server's client, cluster and monitoring defaults
	for _, s := range c.EffectiveSites() {
		for _, a := range s.Listen {
			_, p, _ := net.SplitHostPort(a)
			taken = append(taken, p)
		}
	}
	for _, p := range taken {
		if p == port {
			t.Errorf("metrics.listen default port %s is taken by another default", port)
		}
	}
}

// [[dkim]] blocks name their key, once per domain and selector, and a
// header list signs From.
func TestDKIMBlocks(t *testing.T) {
	for _, tc := range []struct {
		blocks []DKIM
		key    string
	}{
		{[]DKIM{{Domain: "d.test", Selector: "s", KeyFile: "/k"}}, ""},
		{[]DKIM{{Selector: "s", KeyFile: "/k"}}, "dkim[0].domain"},
		{[]DKIM{{Domain: "d.test", KeyFile: "/k"}}, "dkim[0].selector"},
		{[]DKIM{{Domain: "d.test", Selector: "s"}}, "dkim[0].key_file"},
		{[]DKIM{{Domain: "d.test", Selector: "s", KeyFile: "/k"}, {Domain: "D.test", Selector: "S", KeyFile: "/j"}}, "dkim[1].selector"},
		{[]DKIM{{Domain: "d.test", Selector: "s", KeyFile: "/k", Headers: []string{"Subject"}}}, "dkim[0].headers"},
	} {
		c := Default()
		c.DataDir = t.TempDir()
		c.DKIM = tc.blocks
		err := c.Validate()
		if tc.key == "" && err != nil || tc.key != "" && (err == nil || !strings.Contains(err.Error(), tc.key)) {
			t.Errorf("%+v: %v, want %q", tc.blocks, err, tc.key)
		}
	}
}
