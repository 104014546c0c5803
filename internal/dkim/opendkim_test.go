package dkim

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/mailroot/mailroot/internal/testutil"
)

// opendkim finds the opendkim binary (Debian package opendkim), or skips
// the test, unless MAILROOT_REQUIRE_OPENDKIM is set (CI), which fails it.
func opendkim(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("opendkim")
	if err == nil {
		return path
	}
	for _, p := range []string{"/usr/sbin/opendkim", "/sbin/opendkim"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("MAILROOT_REQUIRE_OPENDKIM") != "" {
		t.Fatal("opendkim not installed, and MAILROOT_REQUIRE_OPENDKIM is set (CI): apt-get install opendkim")
	}
	t.Skip("opendkim not installed (apt-get install opendkim): the independent DKIM check is skipped")
	return ""
}

var verdict = regexp.MustCompile(`hname='Authentication-Results' hvalue='[^']*\bdkim=([a-z]+)`)

// verifyWithOpenDKIM runs OpenDKIM's test mode on msg, with the public
// key of k given as a file (TestPublicKeys) instead of DNS, and returns
// its DKIM verdict ("pass", "fail", ...).
func verifyWithOpenDKIM(t *testing.T, bin string, k *Key, msg []byte) string {
	t.Helper()
	dir := t.TempDir()
	name, parts := k.Record()
	keys := filepath.Join(dir, "keys")
	if err := os.WriteFile(keys, []byte(strings.TrimSuffix(name, ".")+" "+strings.Join(parts, "")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "opendkim.conf")
	if err := os.WriteFile(conf, []byte("Mode v\nSyslog no\nTestPublicKeys "+keys+"\nAlwaysAddARHeader yes\nAuthservID test\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "msg.eml")
	// The test mode reads a file with Unix line ends, as an MTA's queue
	// file; it puts the CRLFs back for the body hash.
	if err := os.WriteFile(file, bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "-x", conf, "-vvv", "-t", file).CombinedOutput()
	if err != nil {
		t.Fatalf("opendkim -t: %v\n%s", err, out)
	}
	// The Authentication-Results field it would add, printed with -vvv:
	// "dkim=pass (2048-bit key) header.d=...".
	m := verdict.FindSubmatch(out)
	if m == nil {
		t.Fatalf("opendkim gave no DKIM verdict:\n%s", out)
	}
	return string(m[1])
}

// Mail signed by Mailroot verifies with OpenDKIM, an implementation that
// shares no code with go-msgauth, for both key types; a message changed
// after signing does not.
func TestOpenDKIMVerifies(t *testing.T) {
	bin := opendkim(t)
	dir := t.TempDir()
	msg := []byte("From: Alice <alice@example.test>\r\nTo: bob@elsewhere.test\r\nSubject: independent check\r\n" +
		"Date: Wed, 02 Dec 2026 06:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\n" +
		"Hello,\r\n\r\n  a line with  spaces  \r\n.a leading dot\r\n\r\n\r\n")
	for _, alg := range []string{RSA, Ed25519} {
		t.Run(alg, func(t *testing.T) {
			k, err := Generate(dir, "example.test", "s-"+alg, alg)
			if err != nil {
				t.Fatal(err)
			}
			s := NewSigner(t.TempDir(), testutil.Logger(t), k)
			sigs, domain, err := s.Sign(bytes.NewReader(msg))
			if err != nil || domain != "example.test" || sigs == "" {
				t.Fatalf("Sign: %q %q %v", sigs, domain, err)
			}
			signed := append([]byte(sigs), msg...)
			if v := verifyWithOpenDKIM(t, bin, k, signed); v != "pass" {
				t.Fatalf("OpenDKIM: %s\nmessage:\n%s", v, signed)
			}
			tampered := bytes.Replace(signed, []byte("Hello,"), []byte("Hullo,"), 1)
			if v := verifyWithOpenDKIM(t, bin, k, tampered); v != "fail" {
				t.Fatalf("OpenDKIM says %q of a changed body, want fail", v)
			}
		})
	}
}
