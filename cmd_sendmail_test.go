package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
	"github.com/mailroot/mailroot/node"
)

func TestParseSendmailArgs(t *testing.T) {
	tests := []struct {
		args    []string
		check   func(*sendmailOpts) bool
		wantErr string
	}{
		{[]string{"-t"}, func(o *sendmailOpts) bool { return o.headerRcpts && o.dotEnds }, ""},
		{[]string{"-oi", "-fapp@x.test", "a@y.test"}, func(o *sendmailOpts) bool {
			return !o.dotEnds && o.sender == "app@x.test" && slices.Equal(o.rcpts, []string{"a@y.test"})
		}, ""},
		{[]string{"-i", "-f", "app@x.test", "-F", "Cron Daemon", "a@y.test", "b@y.test"}, func(o *sendmailOpts) bool {
			return o.fullName == "Cron Daemon" && len(o.rcpts) == 2
		}, ""},
		// What cron and mail(1) pass.
		{[]string{"-FCronDaemon", "-i", "-B8BITMIME", "-oem", "-odi", "root"}, func(o *sendmailOpts) bool {
			return o.fullName == "CronDaemon" && slices.Equal(o.rcpts, []string{"root"})
		}, ""},
		{[]string{"-N", "failure,delay", "-R", "hdrs", "-V", "env1", "a@y.test"}, func(o *sendmailOpts) bool {
			return slices.Equal(o.notify, []string{"FAILURE", "DELAY"}) && o.ret == "HDRS" && o.envID == "env1"
		}, ""},
		{[]string{"--", "-odd@y.test"}, func(o *sendmailOpts) bool { return slices.Equal(o.rcpts, []string{"-odd@y.test"}) }, ""},
		{[]string{}, nil, "no recipients"},
		{[]string{"-bp"}, nil, "unsupported option -bp"},
		{[]string{"-f"}, nil, "needs a value"},
	}
	for _, tt := range tests {
		o, err := parseSendmailArgs(tt.args)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%v: error %v, want %q", tt.args, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !tt.check(o) {
			t.Errorf("%v: %+v, %v", tt.args, o, err)
		}
	}
}

func TestReadMessageDotEnds(t *testing.T) {
	in := "Subject: x\n\nbody\n.\nafter the dot\n"
	got, err := readMessage(strings.NewReader(in), true, 1<<20)
	if err != nil || string(got) != "Subject: x\n\nbody\n" {
		t.Errorf("with dot: %q %v", got, err)
	}
	got, err = readMessage(strings.NewReader(in), false, 1<<20)
	if err != nil || string(got) != in {
		t.Errorf("with -i: %q %v", got, err)
	}
	if _, err := readMessage(strings.NewReader(strings.Repeat("x", 200<<10)), false, 10); err == nil {
		t.Errorf("oversize input accepted")
	}
}

// sendmailNode runs Mailroot in-process with its NATS exposed on loopback,
// so sendmail can submit over NATS or SMTP; it returns a config file for
// sendmail and the node.
func sendmailNode(t *testing.T) (string, *node.Node, config.Config) {
	t.Helper()
	dir := t.TempDir()
	natsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := config.Default()
	cfg.Hostname = "mailroot.test"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.LocalDomains = []string{"localhost"}
	cfg.Ingress.Listen = []string{"127.0.0.1:0"}
	cfg.NATS.Listen = natsAddr
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	n, err := node.StartEmbedded(context.Background(), cfg, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Stop)
	<-n.Ingress.Ready()
	path := filepath.Join(dir, "sendmail.toml")
	file := fmt.Sprintf("hostname = \"client.test\"\ndata_dir = %q\nlocal_domains = [\"localhost\"]\n[ingress]\nlisten = [%q]\n", cfg.DataDir, n.Ingress.Addrs()[0])
	if err := os.WriteFile(path, []byte(file), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, n, cfg
}

func waitDrop(t *testing.T, cfg config.Config, want string) []byte {
	t.Helper()
	var found []byte
	testutil.WaitFor(t, 20*time.Second, "drop file containing "+want, func() bool {
		entries, _ := os.ReadDir(cfg.DropDirFor("localhost"))
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(cfg.DropDirFor("localhost"), e.Name()))
			if err == nil && bytes.Contains(b, []byte(want)) {
				found = b
				return true
			}
		}
		return false
	})
	return found
}

func TestSendmailDelivers(t *testing.T) {
	cfgPath, n, cfg := sendmailNode(t)
	natsURL := "nats://" + cfg.NATS.Listen
	for _, route := range []struct {
		name  string
		extra []string
	}{
		{"nats", []string{"-nats", natsURL}},
		{"smtp", nil}, // ingress.listen of the config file
	} {
		t.Run(route.name, func(t *testing.T) {
			marker := "body via " + route.name
			in := "To: a@localhost\nBcc: hidden@localhost\nSubject: hi\n\n" + marker + "\n"
			var stderr bytes.Buffer
			args := append([]string{"-t", "-F", "Cron Daemon", "-config", cfgPath}, route.extra...)
			if code := sendmail(args, strings.NewReader(in), &stderr); code != 0 {
				t.Fatalf("exit %d: %s", code, stderr.String())
			}
			got := waitDrop(t, cfg, marker)
			for _, want := range []string{"x-receiver: a@localhost\r\n", "x-receiver: hidden@localhost\r\n", "\r\nSubject: hi\r\n", "\r\nFrom: \"Cron Daemon\" <", "\r\n\r\n" + marker + "\r\n"} {
				if !bytes.Contains(got, []byte(want)) {
					t.Errorf("drop file lacks %q:\n%s", want, got)
				}
			}
			if bytes.Contains(bytes.ToLower(got), []byte("\r\nbcc:")) {
				t.Errorf("Bcc: header was not removed:\n%s", got)
			}
		})
	}
	_ = n
}

func TestSendmailExitCodes(t *testing.T) {
	cfgPath, _, _ := sendmailNode(t)
	dead := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	old := natsConnectTimeout
	natsConnectTimeout = 2 * time.Second
	t.Cleanup(func() { natsConnectTimeout = old })
	tests := []struct {
		name  string
		args  []string
		input string
		code  int
	}{
		{"bad option", []string{"-bs"}, "", exUsage}, // -bp is mailq: TestQueueCommands
		{"no recipient in headers", []string{"-t", "-config", cfgPath}, "Subject: none\n\nx\n", exDataErr},
		{"binary junk", []string{"-config", cfgPath, "a@localhost"}, "Subject: x\n\n\x00\x01\x02\n", exDataErr},
		{"bad recipient", []string{"-config", cfgPath, "not an address@@"}, "Subject: x\n\nx\n", exDataErr},
		{"smtp down", []string{"-config", cfgPath, "-smtp", dead, "a@localhost"}, "Subject: x\n\nx\n", exTempFail},
		{"nats down", []string{"-config", cfgPath, "-nats", "nats://" + dead, "a@localhost"}, "Subject: x\n\nx\n", exTempFail},
		{"bad config", []string{"-config", filepath.Join(t.TempDir(), "missing.toml"), "a@localhost"}, "x", exConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			code := sendmail(tt.args, strings.NewReader(tt.input), &stderr)
			if code != tt.code {
				t.Errorf("exit %d, want %d (%s)", code, tt.code, stderr.String())
			}
			if tt.code != 0 && (!strings.HasPrefix(stderr.String(), "sendmail: ") || strings.Count(stderr.String(), "\n") != 1) {
				t.Errorf("stderr is not one line starting with sendmail: %q", stderr.String())
			}
		})
	}
}
