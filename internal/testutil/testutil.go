// Package testutil starts the real parts Mailroot's tests run against: an
// embedded JetStream nats-server on a temp dir, a miekg/dns server on
// 127.0.0.1 fed by a zone map, and a go-smtp server playing the remote MX.
// Nothing here is a fake broker or a fake SMTP peer.
package testutil

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Logger returns a logger writing to the test log (debug level when
// MAILROOT_TEST_LOG=debug, warnings otherwise).
func Logger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("MAILROOT_TEST_LOG") == "debug" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: level}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

// Discard is a logger that drops everything (benchmarks).
func Discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// NATS is a running embedded test server.
type NATS struct {
	Server *server.Server
	Dir    string
}

// StartNATS starts a JetStream server on 127.0.0.1 with a random port and a
// t.TempDir store; it is shut down in t.Cleanup.
func StartNATS(t testing.TB) *NATS {
	t.Helper()
	return StartNATSDir(t, t.TempDir())
}

// StartNATSDir is StartNATS on a given store directory (for restart tests).
func StartNATSDir(t testing.TB, dir string) *NATS {
	t.Helper()
	return StartNATSWith(t, dir, nil)
}

// StartNATSWith is StartNATSDir with a hook to change the server options
// (e.g. JetStreamMaxStore for store-full tests).
func StartNATSWith(t testing.TB, dir string, edit func(*server.Options)) *NATS {
	t.Helper()
	opts := &server.Options{
		Host:      "127.0.0.1",
		Port:      -1,
		JetStream: true,
		StoreDir:  dir,
		NoLog:     true,
		NoSigs:    true,
	}
	if edit != nil {
		edit(opts)
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return &NATS{Server: ns, Dir: dir}
}

// URL is the client URL of the server.
func (n *NATS) URL() string { return n.Server.ClientURL() }

// Connect returns a client connection and JetStream context, closed in t.Cleanup.
func (n *NATS) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(n.URL())
	if err != nil {
		t.Fatalf("nats connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return nc, js
}

// WaitFor polls cond every 20 ms until it is true or timeout passes, then
// fails the test with what.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Context returns a context cancelled at test end.
func Context(t testing.TB) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx
}

// Logs records what the code under test logs, for tests that assert on
// a log line (one warning, not one per scan) or wait for one when it is
// the only sign of an outcome (a failed attempt). It is safe for
// concurrent writers.
type Logs struct {
	mu sync.Mutex
	b  strings.Builder
}

// Logger returns a logger that writes to the test log as Logger does and
// records every line, debug level up, in l.
func (l *Logs) Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewMultiHandler(
		Logger(t).Handler(),
		slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}),
	))
}

// Write implements io.Writer.
func (l *Logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything recorded.
func (l *Logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Count returns how many recorded lines contain s.
func (l *Logs) Count(s string) int {
	n := 0
	for line := range strings.Lines(l.String()) {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}
