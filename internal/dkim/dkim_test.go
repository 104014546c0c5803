package dkim

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/mailroot/mailroot/internal/testutil"
)

const msg = "From: Alice <alice@Example.TEST>\r\nTo: bob@remote.test\r\nSubject: hello\r\n" +
	"Date: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\nHello Bob.\r\n.dot line\r\n"

// verify checks every signature of m against the keys published in d.
func verify(t *testing.T, d *testutil.DNS, m string) []*dkim.Verification {
	t.Helper()
	vs, err := dkim.VerifyWithOptions(strings.NewReader(m), &dkim.VerifyOptions{LookupTXT: d.LookupTXT})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	return vs
}

// A key made by Generate, published as Zone prints it in a real DNS
// server, signs mail of its From: domain that go-msgauth verifies; the
// same message with one body byte changed, or with a second Subject
// added on the way (over-signing), fails. Both algorithms at once give
// one signature each.
func TestGenerateSignVerify(t *testing.T) {
	dir := t.TempDir()
	rsaKey, err := Generate(dir, "example.test", "", "")
	if err == nil || !strings.Contains(err.Error(), "selector") {
		t.Fatalf("empty selector: %v", err)
	}
	rsaKey, err = Generate(dir, "Example.TEST", "s1", RSA)
	if err != nil {
		t.Fatal(err)
	}
	edKey, err := Generate(dir, "example.test", "s2", Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []*Key{rsaKey, edKey} {
		fi, err := os.Stat(k.Path)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v mode %v, want 0600", k.Path, err, fi.Mode())
		}
	}
	if _, err := Generate(dir, "example.test", "s1", Ed25519); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("overwrite: %v", err)
	}
	d := testutil.StartDNS(t, rsaKey.Zone(), edKey.Zone())

	s := NewSigner(dir, testutil.Logger(t))
	sigs, domain, err := s.Sign(strings.NewReader(msg))
	if err != nil || domain != "example.test" {
		t.Fatalf("sign: %v (domain %q)", err, domain)
	}
	signed := sigs + msg
	vs := verify(t, d, signed)
	if len(vs) != 2 {
		t.Fatalf("%d signatures, want 2 (rsa and ed25519)", len(vs))
	}
	for _, v := range vs {
		if v.Err != nil || v.Domain != "example.test" {
			t.Errorf("signature by %s: %v", v.Domain, v.Err)
		}
	}
	for name, bad := range map[string]string{
		"body byte changed": strings.Replace(signed, "Hello Bob", "Hello Bib", 1),
		"Subject added":     strings.Replace(signed, "\r\n\r\nHello", "\r\nSubject: buy now\r\n\r\nHello", 1),
		"From added":        strings.Replace(signed, "\r\n\r\nHello", "\r\nFrom: mallory@evil.test\r\n\r\nHello", 1),
	} {
		for _, v := range verify(t, d, bad) {
			if v.Err == nil {
				t.Errorf("%s: a signature still verifies", name)
			}
		}
	}
}

// Mail whose From: domain has no key, or that has no From:, is not
// signed; a directory with no keys signs nothing and reads no message.
func TestSignOnlyKeyedDomains(t *testing.T) {
	dir := t.TempDir()
	s := NewSigner(dir, testutil.Logger(t))
	if sigs, _, err := s.Sign(failingReader{}); sigs != "" || err != nil {
		t.Fatalf("no keys: %q %v", sigs, err)
	}
	if _, err := Generate(dir, "other.test", DefaultSelector, Ed25519); err != nil {
		t.Fatal(err)
	}
	s = NewSigner(dir, testutil.Logger(t))
	for name, m := range map[string]string{
		"another domain": msg,
		"no From":        "To: bob@remote.test\r\n\r\nhi\r\n",
		"no header end":  "From: x@other.test",
	} {
		sigs, _, err := s.Sign(strings.NewReader(m))
		if name == "no header end" {
			// No signature can be made: the caller is told why.
			if sigs != "" || err == nil || !strings.Contains(err.Error(), "empty line") {
				t.Errorf("%s: %q %v", name, sigs, err)
			}
			continue
		}
		if sigs != "" || err != nil {
			t.Errorf("%s: signed %q %v", name, sigs, err)
		}
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { panic("read with no keys") }

// A key made by opendkim-genkey (PKCS #1 "RSA PRIVATE KEY"), copied in as
// <selector>.key, is used; a file that is no key is an error naming it.
func TestLoadOpenDKIMKeyAndBadFiles(t *testing.T) {
	dir := t.TempDir()
	k, err := Generate(t.TempDir(), "example.test", "x", RSA)
	if err != nil {
		t.Fatal(err)
	}
	p1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k.Signer.(*rsa.PrivateKey))})
	if err := os.MkdirAll(filepath.Join(dir, "example.test"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(KeyPath(dir, "example.test", "mail"), p1, 0o600); err != nil {
		t.Fatal(err)
	}
	keys, err := Load(dir)
	if err != nil || len(keys) != 1 || keys[0].Selector != "mail" || keys[0].Algorithm != RSA {
		t.Fatalf("load: %v %+v", err, keys)
	}
	bad := KeyPath(dir, "example.test", "broken")
	if err := os.WriteFile(bad, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("bad key file: %v, want an error naming %s", err, bad)
	}
	// The Signer keeps the keys of its last good reading.
	s := NewSigner(dir, testutil.Discard())
	if sigs, _, _ := s.Sign(strings.NewReader(msg)); sigs != "" {
		t.Errorf("signed with a directory that never read well")
	}
}

// Whatever the message, Sign does not fail or panic on it, and what it
// signs verifies.
func FuzzSign(f *testing.F) {
	for _, s := range []string{msg, "From: a@example.test\r\n\r\n", "From: =?utf-8?q?x?= <a@example.test>, b@c.test\r\n\tfolded\r\n\r\nbody", "\r\n\r\n", "From:\r\n"} {
		f.Add(s)
	}
	dir := f.TempDir()
	k, err := Generate(dir, "example.test", "f", Ed25519)
	if err != nil {
		f.Fatal(err)
	}
	name, txt := k.Record()
	lookup := func(n string) ([]string, error) {
		if n == strings.TrimSuffix(name, ".") || n == name {
			return []string{strings.Join(txt, "")}, nil
		}
		return nil, os.ErrNotExist
	}
	s := NewSigner(dir, testutil.Discard())
	f.Fuzz(func(t *testing.T, m string) {
		sigs, _, err := s.Sign(strings.NewReader(m))
		if err != nil || sigs == "" {
			return
		}
		vs, err := dkim.VerifyWithOptions(bytes.NewReader([]byte(sigs+m)), &dkim.VerifyOptions{LookupTXT: lookup})
		if err != nil {
			return // a message go-msgauth cannot parse back
		}
		if len(vs) == 0 {
			t.Fatalf("signed %q, but no signature found", m)
		}
	})
}

// Keys given by hand ([[dkim]]) alone sign for their domain, with their
// own header list, two selectors at once for a rotation; other domains
// keep the keys of the directory.
func TestFixedKeys(t *testing.T) {
	dir := t.TempDir()
	found, err := Generate(dir, "example.test", "found", Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	other, err := Generate(dir, "other.test", "o", Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	keys := t.TempDir()
	var fixed []*Key
	for _, sel := range []string{"old", "new"} {
		g, err := Generate(keys, "example.test", sel, Ed25519)
		if err != nil {
			t.Fatal(err)
		}
		k, err := ReadKey(g.Path, "example.test", sel)
		if err != nil {
			t.Fatal(err)
		}
		k.Headers = []string{"From", "From", "Subject"}
		fixed = append(fixed, k)
	}
	d := testutil.StartDNS(t, found.Zone(), other.Zone(), fixed[0].Zone(), fixed[1].Zone())
	s := NewSigner(dir, testutil.Logger(t), fixed...)
	sigs, _, err := s.Sign(strings.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(sigs, "s=found") || !strings.Contains(sigs, "s=old") || !strings.Contains(sigs, "s=new") {
		t.Errorf("signatures %q: want the two fixed selectors only", sigs)
	}
	if strings.Contains(strings.ToLower(sigs), "message-id") {
		t.Errorf("signed headers beyond the block's list: %q", sigs)
	}
	vs := verify(t, d, sigs+msg)
	if len(vs) != 2 || vs[0].Err != nil || vs[1].Err != nil {
		t.Errorf("verification: %+v", vs)
	}
	om := strings.Replace(msg, "alice@Example.TEST", "alice@other.test", 1)
	if sigs, _, err := s.Sign(strings.NewReader(om)); err != nil || !strings.Contains(sigs, "s=o;") {
		t.Errorf("other domain: %q %v", sigs, err)
	}
}
