package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/dkim"
	"github.com/mailroot/mailroot/internal/testutil"
)

// mailroot config set refuses a bad value naming the key, stores a good
// one with who and why, and history, rollback and export show the result.
func TestConfigSetHistoryRollback(t *testing.T) {
	t.Setenv("MAILROOT_NATS_URL", "")
	n := testutil.StartNATS(t)
	_, js := n.Connect(t)
	if _, err := bus.Setup(t.Context(), js, config.Default()); err != nil { // as a running Mailroot does
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "mailroot.toml")
	if err := os.WriteFile(file, []byte("hostname = \"mx.example.test\"\n[ingress]\nmax_recipients = 50\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MAILROOT_CONFIG", file)
	run := func(args ...string) (int, string, string) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		code := configCommand(append(args[:1:1], append([]string{"-nats", n.URL()}, args[1:]...)...), &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}

	if code, _, stderr := run("set", "ingress.relay_networks", `["10.0.0.0/33"]`); code != 2 || !strings.Contains(stderr, "ingress.relay_networks") {
		t.Fatalf("bad value: exit %d, %q; want 2 naming the key", code, stderr)
	}
	if code, _, stderr := run("set", "nats.sync", "2m"); code != 2 || !strings.Contains(stderr, "restart") {
		t.Fatalf("restart-only key: exit %d, %q", code, stderr)
	}
	code, stdout, stderr := run("set", "ingress.max_recipients", "7", "-why", "partner mailing")
	if code != 0 || !strings.Contains(stdout, "revision") {
		t.Fatalf("set: exit %d, %q %q", code, stdout, stderr)
	}
	first := regexp.MustCompile(`revision (\d+)`).FindStringSubmatch(stdout)[1]
	if code, _, stderr := run("set", "ingress.max_recipients", "9"); code != 0 {
		t.Fatalf("second set: %d %s", code, stderr)
	}
	code, stdout, _ = run("get", "ingress.max_recipients")
	if code != 0 || !strings.Contains(stdout, "ingress.max_recipients = 9") {
		t.Fatalf("get: %d %q", code, stdout)
	}
	code, stdout, _ = run("history", "ingress.max_recipients")
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if code != 0 || len(lines) != 2 || !strings.Contains(lines[0], "= 7 (partner mailing)") || !strings.Contains(lines[0], adminName("")) {
		t.Fatalf("history: %d %q", code, stdout)
	}
	if code, _, stderr := run("rollback", "ingress.max_recipients", first); code != 0 {
		t.Fatalf("rollback: %d %s", code, stderr)
	}
	code, stdout, _ = run("export")
	if code != 0 || !regexp.MustCompile(`(?m)^max_recipients = 7$`).MatchString(stdout) || !strings.Contains(stdout, `hostname = "mx.example.test"`) {
		t.Fatalf("export after the rollback: %d\n%s", code, stdout)
	}
	if code, _, stderr := run("get", "ingress.banner"); code != 1 || !strings.Contains(stderr, "not set live") {
		t.Fatalf("get of a key not set: %d %q", code, stderr)
	}

	// [[dkim]] blocks are live: a key file that is not a key is refused
	// at once, naming the key and the block; a real one is stored.
	keys := t.TempDir()
	if _, err := dkim.Generate(keys, "example.test", "s2", dkim.Ed25519); err != nil {
		t.Fatal(err)
	}
	block := func(path string) string {
		return `[{domain = "example.test", selector = "s2", key_file = "` + path + `"}]`
	}
	if code, _, stderr := run("set", "dkim", block(filepath.Join(keys, "missing.key"))); code != 2 || !strings.Contains(stderr, "dkim") || !strings.Contains(stderr, "dkim[0].key_file") {
		t.Fatalf("dkim block with a missing key file: exit %d, %q; want 2 naming dkim[0].key_file", code, stderr)
	}
	if code, stdout, stderr := run("set", "dkim", block(dkim.KeyPath(keys, "example.test", "s2"))); code != 0 || !strings.Contains(stdout, "revision") {
		t.Fatalf("dkim block: exit %d, %q %q", code, stdout, stderr)
	}
}
