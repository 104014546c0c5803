package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

// buildBinary builds mailroot once per test run.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "mailroot")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startProcess starts bin with args, its output captured. At test end it
// gets SIGTERM and grace to stop (a test error if it does not), and its
// output is logged if the test failed.
func startProcess(t *testing.T, name string, grace time.Duration, bin string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, args...)
	buf := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(grace):
			_ = cmd.Process.Kill()
			<-done
			t.Errorf("%s did not stop on SIGTERM within %v", name, grace)
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, buf.String())
		}
	})
	return cmd
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestConfigErrorsExit2(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	// Each bad file names its key; a listen port out of range is refused
	// with the configuration, not at bind.
	keys := map[string]string{
		"unknown.toml": "[delivery]\nconcurency = 5\n",
		"port.toml":    "[nats]\nlisten = \"127.0.0.1:99999\"\n",
	}
	for name, file := range keys {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(file), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		args []string
		key  string
	}{
		{[]string{"all", "-config", filepath.Join(dir, "unknown.toml")}, "delivery.concurency"},
		{[]string{"all", "-config", filepath.Join(dir, "port.toml")}, "nats.listen"},
		{[]string{"router"}, ""},
		{[]string{"router", "-metrics", "127.0.0.1:99999", "-nats", "nats://127.0.0.1:1"}, "metrics.listen"},
		{[]string{"frobnicate"}, ""},
	} {
		cmd := exec.Command(bin, tt.args...)
		cmd.Env = append(os.Environ(), "MAILROOT_NATS_URL=")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errorsAs(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("mailroot %v: %v, want exit status 2\n%s", tt.args, err, out)
		}
		if !bytes.Contains(out, []byte(tt.key)) {
			t.Errorf("mailroot %v: error does not name %s:\n%s", tt.args, tt.key, out)
		}
	}
}

func errorsAs(err error, target **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*target = e
	}
	return ok
}

// The actors as separate OS processes against one nats-server: mail sent
// over SMTP to the ingress process reaches the remote MX through the
// router and delivery processes, and local mail reaches Drop/.
func TestSeparateProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	n := testutil.StartNATS(t)
	sink := testutil.StartSink(t)
	dns := testutil.StartDNS(t, "remote.test. MX 10 mx.remote.test.", "mx.remote.test. A 127.0.0.1")
	dir := t.TempDir()
	smtpPort := freePort(t)
	cfgPath := filepath.Join(dir, "mailroot.toml")
	cfg := fmt.Sprintf(`hostname = "mailroot.test"
data_dir = %q
local_domains = ["local.test"]
[metrics]
listen = "127.0.0.1:0"
[ingress]
listen = ["127.0.0.1:%d"]
[delivery]
port = %d
dns_server = %q
retry = ["1s"]
[pickup]
interval = "100ms"
`, filepath.Join(dir, "data"), smtpPort, sink.Port, dns.Addr)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	// Each actor gets its metrics port on the command line (-metrics).
	metricsAddr := map[string]string{}
	for _, actor := range []string{"router", "delivery", "badmail", "pickupwatcher", "ingress"} {
		metricsAddr[actor] = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		startProcess(t, actor, 20*time.Second, bin, actor, "-config", cfgPath, "-nats", n.URL(), "-metrics", metricsAddr[actor])
	}
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	var c *smtp.Client
	testutil.WaitFor(t, 30*time.Second, "ingress process listening", func() bool {
		var err error
		c, err = smtp.Dial(addr)
		return err == nil
	})
	defer c.Close()
	body := "Subject: across processes\r\n\r\nhello\r\n"
	if err := c.SendMail("s@local.test", []string{"r@remote.test", "u@local.test"}, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 30*time.Second, "delivery to the remote MX", func() bool { return sink.Count() == 1 })
	// The delivery process counted it, on its own -metrics address.
	testutil.WaitFor(t, 20*time.Second, "delivered on the delivery process's metrics", func() bool {
		resp, err := http.Get("http://" + metricsAddr["delivery"] + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return regexp.MustCompile(`(?m)^mailroot_delivery_recipients_total\{result="delivered"\} [1-9]`).Match(b) &&
			bytes.Contains(b, []byte(`mailroot_nats_connection_state{state="connected"} 1`))
	})
	if m := sink.Mails()[0]; m.From != "s@local.test" || m.To[0] != "r@remote.test" || !bytes.HasSuffix(m.Data, []byte(body)) {
		t.Errorf("remote got from %q to %v:\n%s", m.From, m.To, m.Data)
	}
	testutil.WaitFor(t, 30*time.Second, "drop file", func() bool {
		entries, _ := os.ReadDir(filepath.Join(dir, "data", "Drop", "local.test"))
		return len(entries) == 1 && strings.HasSuffix(entries[0].Name(), ".eml")
	})

	// Installed as /usr/sbin/sendmail (a symlink), the binary is sendmail.
	link := filepath.Join(dir, "sendmail")
	if err := os.Symlink(bin, link); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(link, "-t", "-config", cfgPath, "-nats", n.URL())
	cmd.Stdin = strings.NewReader("To: cron@local.test\nSubject: from cron\n\noutput\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sendmail via symlink: %v\n%s", err, out)
	}
	testutil.WaitFor(t, 30*time.Second, "drop file from sendmail", func() bool {
		entries, _ := os.ReadDir(filepath.Join(dir, "data", "Drop", "local.test"))
		return len(entries) == 2
	})
}

// Every command is in the one table, and help lists them in its order.
func TestHelpListsEveryCommand(t *testing.T) {
	var buf bytes.Buffer
	usage(&buf)
	var names []string
	for _, line := range strings.Split(buf.String(), "\n") {
		if strings.HasPrefix(line, "  ") {
			names = append(names, strings.Fields(line)[0])
		}
	}
	want := []string{"all", "ingress", "router", "delivery", "badmail", "pickupwatcher", "nats", "sendmail", "user", "sessions", "events", "queue", "redrive", "mailq", "badmail", "dkim", "healthcheck", "version", "admin", "config"}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("help lists %v, want %v", names, want)
	}
	for _, name := range want {
		if c := findCommand(name); c == nil || c.run == nil {
			t.Errorf("command %s has no run function", name)
		}
	}
}

// MAILROOT_HOSTNAME reaches the [[site]] blocks that inherit the host
// name, not those that name their own.
func TestHostnameOverrideReachesSites(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mailroot.toml")
	if err := os.WriteFile(path, []byte("hostname = \"file.test\"\n[[site]]\nname = \"sub\"\nkind = \"submission\"\nlisten = [\"127.0.0.1:0\"]\n[[site]]\nname = \"own\"\nkind = \"mta\"\nhostname = \"own.test\"\nlisten = [\"127.0.0.1:0\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MAILROOT_HOSTNAME", "env.test")
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	applyEnv(&cfg)
	got := map[string]string{}
	for _, s := range cfg.Sites {
		got[s.Name] = s.Hostname
	}
	if cfg.Hostname != "env.test" || got["sub"] != "env.test" || got["own"] != "own.test" {
		t.Errorf("hostname %q, sites %v: want env.test everywhere but the site that names its own", cfg.Hostname, got)
	}
}
