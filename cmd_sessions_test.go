package main

import (
	"bytes"
	"context"
	"encoding/json"
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
