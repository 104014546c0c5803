package config

import (
	"errors"
	"testing"
)

// The inbound check settings: defaults, inheritance, and a clear error
// naming the key for a bad value.
func TestAuthCheckSettings(t *testing.T) {
	c, err := Parse("hostname = \"mx.example.test\"\n[[site]]\nname = \"in\"\nlisten = [\"127.0.0.1:0\"]\n[[site]]\nname = \"sub\"\nkind = \"submission\"\nlisten = [\"127.0.0.1:0\"]\n")
	if err != nil {
		t.Fatal(err)
	}
	in, sub := c.Sites[0], c.Sites[1]
	if !in.AuthChecks || sub.AuthChecks || in.SPFFail != ActionTag || in.DMARCReject != ActionTag || in.DMARCQuarantine != ActionTag {
		t.Fatalf("defaults: mta %+v, submission checks %v", in.SiteKeys, sub.AuthChecks)
	}
	if id := SiteAuthServID(in); id != "mx.example.test" {
		t.Errorf("authserv-id %q, want the host name", id)
	}
	c, err = Parse("[ingress]\ndmarc_reject = \"quarantine\"\nauthserv_id = \"auth.example.test\"\n[[site]]\nname = \"in\"\nlisten = [\"127.0.0.1:0\"]\nspf_fail = \"reject\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if s := c.Sites[0]; s.DMARCReject != ActionQuarantine || s.SPFFail != ActionReject || SiteAuthServID(s) != "auth.example.test" {
		t.Errorf("inherited/overridden: %+v", s.SiteKeys)
	}
	for text, key := range map[string]string{
		"[ingress]\nspf_fail = \"quarantine\"\n":              "ingress.spf_fail",
		"[ingress]\ndmarc_reject = \"drop\"\n":                "ingress.dmarc_reject",
		"[ingress]\ndmarc_quarantine = \"\"\n":                "ingress.dmarc_quarantine",
		"[ingress]\nauthserv_id = \"a b\"\n":                  "ingress.authserv_id",
		"[[site]]\nname = \"x\"\nspf_fail = \"never\"\n":      "site[0].spf_fail",
		"[[site]]\nname = \"x\"\nauthserv_id = \"id;evil\"\n": "site[0].authserv_id",
	} {
		_, err := Parse(text)
		var ke *KeyError
		if !errors.As(err, &ke) || ke.Key != key {
			t.Errorf("%q: %v, want an error for %s", text, err, key)
		}
	}
}
