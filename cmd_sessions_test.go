package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

// mailroot sessions reads the mta-sessions bucket of every ingress.
func TestSessionsCommand(t *testing.T) {
	t.Setenv("MAILROOT_NATS_URL", "")
	t.Setenv("MAILROOT_CONFIG", "")
	n := testutil.StartNATS(t)
	_, js := n.Connect(t)
	ctx := context.Background()
	if _, err := bus.EnsureSessions(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	since := time.Now().Add(-90 * time.Second)
	for key, s := range map[string]bus.SessionInfo{
		"session.mx1-1.a": {Node: "mx1-1", Site: "submission", ClientIP: "192.0.2.10", Helo: "laptop", User: "alice@example.test", TLS: "TLS1.3 TLS_AES_128_GCM_SHA256", Since: since, Messages: 3},
		"session.mx2-7.b": {Node: "mx2-7", Site: "mta", ClientIP: "198.51.100.2", ClientName: "mx.other.example", Since: since.Add(time.Minute)},
	} {
		b, _ := json.Marshal(s)
		if _, err := bus.PutTTL(ctx, js, bus.BucketSessions, key, b, time.Minute, 0); err != nil {
			t.Fatal(err)
		}
	}
	// A closed session's tombstone is not listed.
	if _, err := bus.PutTTL(ctx, js, bus.BucketSessions, "session.mx1-1.c", nil, time.Minute, 0); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.NATS.URL = n.URL()
	list, err := listSessions(ctx, cfg)
	if err != nil || len(list) != 2 || list[0].Site != "submission" {
		t.Fatalf("sessions %+v %v", list, err)
	}
	var out bytes.Buffer
	printSessions(&out, list, since.Add(90*time.Second))
	for _, want := range []string{"submission  192.0.2.10", "alice@example.test", "TLS1.3", "1m30s", "mx.other.example", "2 sessions"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	var stdout, stderr bytes.Buffer
	if code := sessionsCommand([]string{"-nats", n.URL(), "-json"}, &stdout, &stderr); code != 0 || strings.Count(stdout.String(), "\n") != 2 {
		t.Errorf("-json: %d %q %s", code, stdout.String(), stderr.String())
	}
	if code := sessionsCommand(nil, &stdout, &stderr); code != 2 {
		t.Errorf("without a NATS URL: %d, want 2", code)
	}
}

// mailroot sessions disconnect closes a live session on the ingress that
// holds it; an unknown id exits 1.
func TestSessionsDisconnect(t *testing.T) {
	n, cfg, _ := queueNode(t, t.TempDir(), nil)
	data := []string{"-data", cfg.DataDir}
	c, err := net.DialTimeout("tcp", n.Ingress.Addrs()[0], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	lc := cfg
	if err := useLocalServer(&lc); err != nil { // as the command finds it
		t.Fatal(err)
	}
	var id string
	testutil.WaitFor(t, 10*time.Second, "the session listed", func() bool {
		list, _ := listSessions(ctx, lc)
		if len(list) == 1 {
			id = list[0].ID
		}
		return id != ""
	})
	var stdout, stderr bytes.Buffer
	if code := sessionsCommand(append([]string{"disconnect", "nosuch"}, data...), &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "no such session") {
		t.Fatalf("unknown id: %d %q", code, stderr.String())
	}
	stderr.Reset()
	if code := sessionsCommand(append([]string{"disconnect", id}, data...), &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "closed") {
		t.Fatalf("disconnect %s: %d %q %q", id, code, stdout.String(), stderr.String())
	}
	// The client sees its connection closed (not a read timeout).
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.ReadString('\n'); err == nil || os.IsTimeout(err) {
		t.Fatalf("the connection is still open: %v", err)
	}
}
