package main

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

func writeHeartbeat(t *testing.T, dir string, hb heartbeat) {
	t.Helper()
	b, err := json.Marshal(hb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(heartbeatPath(dir, hb.Role, strconv.Itoa(hb.PID)), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCheckHealth(t *testing.T) {
	sink := testutil.StartSink(t) // answers 220 like ingress
	closed := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		return addr
	}()
	now := time.Now()
	fresh := now.Add(-3 * time.Second)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	deadPID := dead.Process.Pid
	tests := []struct {
		name    string
		beats   []heartbeat
		listen  []string
		wantErr string // empty: healthy
	}{
		{"no heartbeat", nil, nil, "no heartbeat"},
		{"delivery connected", []heartbeat{{Role: "delivery", NATS: "connected", At: fresh}}, nil, ""},
		{"stale", []heartbeat{{Role: "router", NATS: "connected", At: now.Add(-time.Minute)}}, nil, "hung or gone"},
		{"reconnecting", []heartbeat{{Role: "router", NATS: "reconnecting", At: fresh}}, nil, "NATS connection is reconnecting"},
		{"ingress greets", []heartbeat{{Role: "ingress", NATS: "connected", At: fresh}}, []string{sink.Addr}, ""},
		{"ingress wildcard address", []heartbeat{{Role: "ingress", NATS: "connected", At: fresh}}, []string{"0.0.0.0:" + strconv.Itoa(sink.Port)}, ""},
		{"ingress not listening", []heartbeat{{Role: "ingress", NATS: "connected", At: fresh}}, []string{closed}, "smtp"},
		{"all not listening", []heartbeat{{Role: "all", NATS: "connected", At: fresh}}, []string{closed}, "smtp"},
		{"listener ignored for delivery", []heartbeat{{Role: "delivery", NATS: "connected", At: fresh}}, []string{closed}, ""},
		{"one of two bad", []heartbeat{{Role: "delivery", NATS: "connected", At: fresh}, {Role: "badmail", NATS: "closed", At: fresh}}, nil, "badmail"},
		{"left by a killed process", []heartbeat{{Role: "router", PID: deadPID, NATS: "connected", At: now.Add(-time.Hour)}}, nil, "no heartbeat"},
		{"killed one ignored", []heartbeat{{Role: "delivery", PID: deadPID, NATS: "connected", At: now.Add(-time.Hour)}, {Role: "delivery", NATS: "connected", At: fresh}}, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			live := 0
			for _, hb := range tc.beats {
				if hb.PID == 0 {
					hb.PID = os.Getpid()
					live++
				}
				writeHeartbeat(t, dir, hb)
			}
			cfg := config.Default()
			cfg.Ingress.Listen = tc.listen
			roles, err := checkHealth(dir, cfg, now)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unhealthy: %v", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("healthy (%v), want error containing %q", roles, tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("error %q, want it to contain %q", err, tc.wantErr)
			case tc.wantErr == "" && len(roles) != live:
				t.Fatalf("roles %v, want %d", roles, live)
			}
		})
	}
}

// The heartbeat follows the real NATS connection: connected while the
// server runs, not connected once it is gone, removed on stop.
func TestHeartbeatFollowsConnection(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("TMPDIR", dir)
	n := testutil.StartNATS(t)
	nc, err := nats.Connect(n.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	stop := startHeartbeat("router", nc, testutil.Logger(t))
	cfg := config.Default()
	if _, err := checkHealth(dir, cfg, time.Now()); err != nil {
		t.Fatalf("healthy process reported unhealthy: %v", err)
	}
	n.Server.Shutdown()
	testutil.WaitFor(t, 3*heartbeatEvery, "heartbeat to report the lost connection", func() bool {
		_, err := checkHealth(dir, cfg, time.Now())
		return err != nil && strings.Contains(err.Error(), "NATS connection is")
	})
	stop()
	if _, err := os.Stat(heartbeatPath(dir, "router", strconv.Itoa(os.Getpid()))); !os.IsNotExist(err) {
		t.Fatalf("heartbeat file left behind: %v", err)
	}
}
