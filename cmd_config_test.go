package main

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/mailroot/mailroot/internal/config"
)

// loadLikeActors loads path with the loader of the actors' commands.
func loadLikeActors(t *testing.T, path string) config.Config {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	cf := addCommonFlags(fs)
	if err := fs.Parse([]string{"-config", path}); err != nil {
		t.Fatal(err)
	}
	cfg, err := cf.load()
	if err != nil {
		t.Fatalf("load %s: %v\n%s", path, err, readFile(t, path))
	}
	cfg.Source = "" // the text differs; what it says is compared
	return cfg
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, path, text string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestConfigCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	dir := t.TempDir()

	t.Run("show -n prints the keys the file sets", func(t *testing.T) {
		path := writeFile(t, filepath.Join(dir, "two.toml"), "[delivery]\nconcurrency = 5\n\n[nats]\npassword = \"hunter2\"\n")
		out, errOut, code := runMailroot(t, bin, nil, "config", "show", "-n", "-config", path)
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, errOut)
		}
		var got map[string]any
		if _, err := toml.Decode(out, &got); err != nil {
			t.Fatalf("output is not TOML: %v\n%s", err, out)
		}
		want := map[string]any{
			"delivery": map[string]any{"concurrency": int64(5)},
			"nats":     map[string]any{"password": masked},
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("config show -n printed\n%s\nwant exactly delivery.concurrency = 5 and nats.password masked", out)
		}
		if strings.Contains(out, "hunter2") {
			t.Errorf("the password is shown:\n%s", out)
		}
	})

	t.Run("show -n of no file prints nothing", func(t *testing.T) {
		out, errOut, code := runMailroot(t, bin, nil, "config", "show", "-n")
		if code != 0 || strings.TrimSpace(out) != "" {
			t.Errorf("exit %d, printed %q\n%s", code, out, errOut)
		}
	})

	t.Run("show round-trips", func(t *testing.T) {
		env := []string{"MAILROOT_HOSTNAME=env.test", "MAILROOT_NATS_REPLICAS=3"}
		for _, kv := range env {
			k, v, _ := strings.Cut(kv, "=")
			t.Setenv(k, v) // for loadLikeActors, as the binary gets them
		}
		t.Setenv("MAILROOT_NATS_URL", "")
		t.Setenv("MAILROOT_NATS_LISTEN", "")
		t.Setenv("MAILROOT_DATA_DIR", "")
		path := writeFile(t, filepath.Join(dir, "full.toml"), `data_dir = "/var/spool/mailroot"
local_domains = ["Example.TEST"]
log_format = "json"
[[domain]]
name = "alias.test"
type = "alias"
[[domain]]
name = "remote.test"
type = "remote"
smart_host = "[192.0.2.1]:2525"
hold = true
[ingress]
listen = ["127.0.0.1:2526"]
max_message_size = 1048576
bare_newline_normalize = ["10.0.0.0/8"]
[delivery]
retry = ["1m", "90s", "2h30m"]
retry_jitter = 0.25
ndr_copy_to = "postmaster@example.test"
[nats]
url = "nats://app:pw@nats1:4222,nats://app:pw@nats2:4222"
password = "hunter2"
token = "tok"
reserve = "64MiB"
sync = "2m"
[[site]]
kind = "submission"
listen = ["127.0.0.1:5870"]
max_recipients = 7
[[site]]
name = "odmr"
kind = "odmr"
listen = ["127.0.0.1:3660"]
local_domains = ["example.test"]
`)
		want := loadLikeActors(t, path)
		want.NATS.Password, want.NATS.Token = masked, masked
		want.NATS.URL = "nats://app:" + masked + "@nats1:4222,nats://app:" + masked + "@nats2:4222"

		for _, n := range []bool{false, true} {
			args := []string{"config", "show", "-config", path}
			if n {
				args = append(args, "-n")
			}
			out, errOut, code := runMailroot(t, bin, env, args...)
			if code != 0 {
				t.Fatalf("mailroot %v: exit %d\n%s", args, code, errOut)
			}
			for _, secret := range []string{"hunter2", "tok\"", ":pw@"} {
				if strings.Contains(out, secret) {
					t.Errorf("mailroot %v shows the secret %s:\n%s", args, secret, out)
				}
			}
			shown := writeFile(t, filepath.Join(dir, "shown.toml"), out)
			if got := loadLikeActors(t, shown); !reflect.DeepEqual(got, want) {
				t.Errorf("mailroot %v loads to\n%+v\nwant\n%+v\noutput:\n%s", args, got, want, out)
			}
			// Shown again, the shown file is the same text.
			again, _, _ := runMailroot(t, bin, env, append(args[:2:2], "-config", shown)...)
			if !n && again != out {
				t.Errorf("config show of its own output differs:\n%s\nthen\n%s", out, again)
			}
		}
	})

	t.Run("check", func(t *testing.T) {
		good := writeFile(t, filepath.Join(dir, "good.toml"), "[delivery]\nconcurrency = 5\n")
		bad := writeFile(t, filepath.Join(dir, "bad.toml"), "[delivery]\nconcurrency = 5\nretry_jitter = 0.9\n")
		unknown := writeFile(t, filepath.Join(dir, "unknown.toml"), "[nats]\nreplica = 3\n")
		for _, args := range [][]string{{"-config", good}, {good}} {
			out, errOut, code := runMailroot(t, bin, nil, append([]string{"config", "check"}, args...)...)
			if code != 0 || out != "config OK: "+good+"\n" {
				t.Errorf("config check %v: exit %d, %q\n%s", args, code, out, errOut)
			}
		}
		for file, key := range map[string]string{bad: "delivery.retry_jitter", unknown: "nats.replica"} {
			out, errOut, code := runMailroot(t, bin, nil, "config", "check", "-config", file)
			if code != 2 || !strings.Contains(errOut, key) || strings.Contains(out, "OK") {
				t.Errorf("config check %s: exit %d, stdout %q, stderr %q; want 2 naming %s", file, code, out, errOut, key)
			}
		}
		if _, _, code := runMailroot(t, bin, nil, "config"); code != 2 {
			t.Errorf("mailroot config: exit %d, want 2", code)
		}
	})
}
