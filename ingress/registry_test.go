package ingress

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

func liveSessions(t *testing.T, js jetstream.JetStream) []bus.SessionInfo {
	t.Helper()
	ctx := context.Background()
	kv, err := js.KeyValue(ctx, bus.BucketSessions)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.ListKeysFiltered(ctx, bus.SessionKeyPrefix+">")
	if err != nil {
		t.Fatal(err)
	}
	var out []bus.SessionInfo
	for k := range keys.Keys() {
		e, err := kv.Get(ctx, k)
		if err != nil || len(e.Value()) == 0 {
			continue
		}
		var s bus.SessionInfo
		if err := json.Unmarshal(e.Value(), &s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

// Every live session is in the mta-sessions bucket with site, client,
// user, TLS, start and message count, and disappears when it ends.
func TestSessionsInKV(t *testing.T) {
	f := start(t, func(c *config.Config) {
		withUsers(t, c, testUser(t, "alice@local.test", nil, nil))
		addSite(c, config.KindSubmission, "submission", nil)
	}, nil)
	c := dialStartTLS(t, f.svc.SiteAddrs("submission")[0])
	if err := authPlain(c, "alice@local.test", testPassword); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if _, err := send(t, c, "alice@local.test", []string{"x@elsewhere.test"}, "Subject: s\r\n\r\nb\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	var s bus.SessionInfo
	testutil.WaitFor(t, 10*time.Second, "the session in the bucket", func() bool {
		l := liveSessions(t, f.js)
		if len(l) == 1 && l[0].Messages == 2 {
			s = l[0]
			return true
		}
		return false
	})
	if s.Site != "submission" || s.ClientIP != "127.0.0.1" || s.User != "alice@local.test" || !strings.HasPrefix(s.TLS, "TLS1.3") ||
		s.Helo != "client.test" || time.Since(s.Since) > time.Minute || s.Node == "" || s.Bytes == 0 {
		t.Errorf("session %+v", s)
	}
	_ = c.Quit()
	testutil.WaitFor(t, 10*time.Second, "the session gone from the bucket", func() bool { return len(liveSessions(t, f.js)) == 0 })
}

// A renewed certificate is picked up without a restart; a configured
// certificate is used instead of the self-signed one.
func TestTLSCertificateReload(t *testing.T) {
	dir := t.TempDir()
	// Two self-signed pairs for different names stand in for the old and
	// the renewed certificate.
	oldCert, oldKey, err := selfSigned(filepath.Join(dir, "a"), "old.local.test")
	if err != nil {
		t.Fatal(err)
	}
	newCert, newKey, err := selfSigned(filepath.Join(dir, "b"), "new.local.test")
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	copyFile(t, oldCert, certFile)
	copyFile(t, oldKey, keyFile)
	f := start(t, func(c *config.Config) { c.Ingress.TLSCert, c.Ingress.TLSKey = certFile, keyFile }, nil)
	name := func() string {
		c := dialStartTLS(t, f.addr)
		st, _ := c.TLSConnectionState()
		_ = c.Quit()
		return st.PeerCertificates[0].Subject.CommonName
	}
	if n := name(); n != "old.local.test" {
		t.Fatalf("certificate %q", n)
	}
	copyFile(t, newKey, keyFile)
	copyFile(t, newCert, certFile)
	testutil.WaitFor(t, 10*time.Second, "the renewed certificate", func() bool { return name() == "new.local.test" })
	if _, err := os.Stat(filepath.Join(f.svc.conf().TLSDir(), "selfsigned.crt")); err == nil {
		t.Error("a self-signed certificate was made although one is configured")
	}
}

// With no certificate configured one self-signed pair is made once in
// <data_dir>/tls and kept across restarts.
func TestSelfSignedKept(t *testing.T) {
	dir := t.TempDir()
	c1, k1, err := selfSigned(dir, "mx.local.test")
	if err != nil {
		t.Fatal(err)
	}
	b1, _ := os.ReadFile(c1)
	c2, k2, err := selfSigned(dir, "mx.local.test")
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := os.ReadFile(c2)
	if c1 != c2 || k1 != k2 || string(b1) != string(b2) {
		t.Error("the self-signed certificate was made again")
	}
	if fi, err := os.Stat(k1); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v", fi.Mode())
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	// Write then rename, as certificate renewal tools do.
	tmp := to + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, to); err != nil {
		t.Fatal(err)
	}
}
