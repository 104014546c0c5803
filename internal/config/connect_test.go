package config

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestConnectRulesMatch(t *testing.T) {
	r, err := ParseConnectRules([]string{"192.0.2.7", "198.51.100.0/24", "2001:db8::/32", ".example.net", "host.example.org", "EXACT.Example.COM."})
	if err != nil {
		t.Fatal(err)
	}
	addrs := []struct {
		ip   string
		want string
	}{
		{"192.0.2.7", "192.0.2.7"},
		{"192.0.2.8", ""},
		{"198.51.100.200", "198.51.100.0/24"},
		{"::ffff:198.51.100.1", "198.51.100.0/24"}, // v4-mapped is the v4 address
		{"2001:db8:1::5", "2001:db8::/32"},
		{"2001:db9::1", ""},
	}
	for _, tt := range addrs {
		got, ok := r.MatchAddr(netip.MustParseAddr(tt.ip))
		if got != tt.want || ok != (tt.want != "") {
			t.Errorf("MatchAddr(%s) = %q %v, want %q", tt.ip, got, ok, tt.want)
		}
	}
	names := []struct {
		name string
		want string
	}{
		{"example.net", ".example.net"},
		{"mx.example.net", ".example.net"},
		{"A.B.Example.NET.", ".example.net"},
		{"badexample.net", ""}, // not a subdomain
		{"host.example.org", "host.example.org"},
		{"sub.host.example.org", ""}, // exact entry
		{"exact.example.com", "exact.example.com"},
		{"", ""},
	}
	for _, tt := range names {
		got, ok := r.MatchName(tt.name)
		if got != tt.want || ok != (tt.want != "") {
			t.Errorf("MatchName(%q) = %q %v, want %q", tt.name, got, ok, tt.want)
		}
	}
	if _, ok := r.MatchAddr(netip.Addr{}); ok {
		t.Error("the zero address matched")
	}
}

func TestConnectRulesRefuseBadEntries(t *testing.T) {
	for _, e := range []string{"192.0.2.300", "10.0.0.0/33", "2001:db8::/129", "*.example.net", "exa mple.net", "..example.net", "", "a_b@c", "1.2.3"} {
		if _, err := ParseConnectRules([]string{e}); err == nil {
			t.Errorf("%q accepted", e)
		}
	}
}

// A bad entry, a bad DNSBL zone, a recipients file on a domain that is not
// local: each a KeyError naming the key.
func TestConnectKeysValidated(t *testing.T) {
	tests := []struct{ file, key string }{
		{"[ingress]\nconnect_deny = [\"10.0.0.0/40\"]\n", "ingress.connect_deny"},
		{"[[site]]\nkind = \"mta\"\nlisten = [\"127.0.0.1:0\"]\nconnect_allow = [\"*.example.net\"]\n", "site[0].connect_allow"},
		{"[ingress]\ndnsbl = [\"zen..example\"]\n", "ingress.dnsbl"},
		{"[[domain]]\nname = \"al.test\"\ntype = \"alias\"\nrecipients_file = \"/x\"\n", "domain[0].recipients_file"},
	}
	for _, tt := range tests {
		_, err := Load(write(t, tt.file))
		var ke *KeyError
		if !errors.As(err, &ke) || ke.Key != tt.key {
			t.Errorf("%q: %v, want a KeyError for %s", tt.file, err, tt.key)
		}
	}
}

// [ingress] dnsbl reaches mta sites only; a submission site sets its own.
func TestDNSBLInheritedByMTASitesOnly(t *testing.T) {
	c, err := Load(write(t, `
[ingress]
dnsbl = ["zen.example"]
connect_deny = [".bad.example"]
recipients_file = "/etc/mailroot/recipients"
[[site]]
kind = "mta"
listen = ["127.0.0.1:0"]
[[site]]
kind = "submission"
listen = ["127.0.0.1:0"]
[[site]]
kind = "submission"
name = "sub2"
listen = ["127.0.0.1:0"]
dnsbl = ["own.example"]
`))
	if err != nil {
		t.Fatal(err)
	}
	got := []string{}
	for _, s := range c.Sites {
		got = append(got, s.Name+"="+strings.Join(s.DNSBL, ",")+"/"+strings.Join(s.ConnectDeny, ","))
	}
	want := "mta=zen.example/.bad.example submission=/.bad.example sub2=own.example/.bad.example"
	if strings.Join(got, " ") != want {
		t.Errorf("sites %v, want %s", got, want)
	}
	if c.Ingress.RecipientsFile != "/etc/mailroot/recipients" {
		t.Errorf("recipients_file %q", c.Ingress.RecipientsFile)
	}
}

func FuzzParseConnectRules(f *testing.F) {
	for _, s := range []string{"192.0.2.7", "198.51.100.0/24", "2001:db8::/32", ".example.net", "example.net", "*.x", "::ffff:1.2.3.4", "1.2.3", ""} {
		f.Add(s, "mx.example.net", "192.0.2.7")
	}
	f.Fuzz(func(t *testing.T, entry, name, ip string) {
		r, err := ParseConnectRules([]string{entry})
		if err != nil {
			return
		}
		if r.Empty() {
			t.Fatalf("%q parsed to no rule", entry)
		}
		// A parsed list parses again to the same rules.
		var again []string
		for _, n := range r.Nets {
			again = append(again, n.Prefix.String())
		}
		again = append(again, r.Names...)
		r2, err := ParseConnectRules(again)
		if err != nil || len(r2.Nets) != len(r.Nets) || len(r2.Names) != len(r.Names) {
			t.Fatalf("%q: rules %v do not parse again: %v", entry, again, err)
		}
		if e, ok := r.MatchName(name); ok && e != r.Names[0] {
			t.Fatalf("matched %q, not an entry", e)
		}
		if a, err := netip.ParseAddr(ip); err == nil {
			_, _ = r.MatchAddr(a)
		}
	})
}
