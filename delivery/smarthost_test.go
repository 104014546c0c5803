package delivery

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
)

// smartHost is a submission server on 127.0.0.1 that takes the login
// relay/secret: STARTTLS, or TLS from the start (implicit), with a
// certificate for 127.0.0.1.
func smartHost(t *testing.T, implicit bool) (*testutil.Sink, tls.Certificate, int) {
	t.Helper()
	cert := testutil.SelfSigned(t, "127.0.0.1")
	sink := &testutil.Sink{Users: map[string]string{"relay": "secret"}}
	srv := smtp.NewServer(sink)
	srv.Domain = "smart.test"
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	var l net.Listener
	var err error
	if implicit {
		l, err = tls.Listen("tcp", "127.0.0.1:0", cfg)
	} else {
		srv.TLSConfig = cfg
		l, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return sink, cert, l.Addr().(*net.TCPAddr).Port
}

// logCount counts the log records whose message contains a text.
type logCount struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logCount) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCount) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.msgs = append(l.msgs, r.Message)
	l.mu.Unlock()
	return nil
}
func (l *logCount) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCount) WithGroup(string) slog.Handler      { return l }
func (l *logCount) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.Contains(m, s) {
			n++
		}
	}
	return n
}

// A smart host that needs a login gets it, over STARTTLS or implicit TLS
// (port 465, here a test port), with the password from its file; only
// when its certificate verifies, unless smart_host_insecure.
func TestSmartHostLogin(t *testing.T) {
	for _, tc := range []struct {
		name             string
		implicit, trust  bool
		insecure, wantOK bool
	}{
		{"STARTTLS, verified", false, true, false, true},
		{"implicit TLS, verified", true, true, false, true},
		{"unverified: no login", false, false, false, false},
		{"unverified, smart_host_insecure", false, false, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sink, cert, port := smartHost(t, tc.implicit)
			h := newHarness(t)
			if tc.trust {
				h.trust(cert)
			}
			pw := filepath.Join(t.TempDir(), "pw")
			if err := os.WriteFile(pw, []byte("secret\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			h.cfg.Delivery.SmartHost = "127.0.0.1:" + strconv.Itoa(port)
			h.cfg.Delivery.SmartHostUser, h.cfg.Delivery.SmartHostPasswordFile = "relay", pw
			h.cfg.Delivery.SmartHostInsecure = tc.insecure
			if err := h.cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			h.start(func(s *Service) {
				if tc.implicit {
					s.ImplicitTLSPort = port
				}
			})
			env := newEnv("far.test", "x@far.test")
			h.publishOut(env, sampleBody)
			if tc.wantOK {
				testutil.WaitFor(t, wait, "delivery", func() bool { return sink.Count() == 1 })
				if m := sink.Mails()[0]; m.User != "relay" || !bytes.Equal(m.Data, sampleBody) {
					t.Errorf("mail as %q: %q", m.User, m.Data)
				}
				h.waitEmpty()
				return
			}
			raw := h.waitLast(bus.Defer(bus.Token("far.test"), env.QueueID))
			next, err := envelope.Decode(raw.Header)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(next.LastError, "not logging in") || !strings.Contains(next.LastError, "could not be verified") {
				t.Errorf("last error %q", next.LastError)
			}
			if sink.Count() != 0 {
				t.Error("mail delivered without the login")
			}
		})
	}
}

// A refused login defers the mail with the smart host's reply, and is
// logged once for the burst, not once per message.
func TestSmartHostLoginRefused(t *testing.T) {
	sink, cert, port := smartHost(t, false)
	h := newHarness(t)
	h.trust(cert)
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("wrong"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.cfg.Delivery.SmartHost = "127.0.0.1:" + strconv.Itoa(port)
	h.cfg.Delivery.SmartHostUser, h.cfg.Delivery.SmartHostPasswordFile = "relay", pw
	if err := h.cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	logs := &logCount{}
	h.start(func(s *Service) { s.log = slog.New(logs) })
	var envs []*envelope.Envelope
	for range 3 {
		env := newEnv("far.test", "x@far.test")
		envs = append(envs, env)
		h.publishOut(env, sampleBody)
	}
	for _, env := range envs {
		raw := h.waitLast(bus.Defer(bus.Token("far.test"), env.QueueID))
		next, err := envelope.Decode(raw.Header)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(next.LastError, "535 5.7.8") || !strings.Contains(next.LastError, "login as relay refused") {
			t.Errorf("last error %q, want the smart host's 535", next.LastError)
		}
	}
	if n := logs.count("smart host login failed"); n != 1 {
		t.Errorf("login failure logged %d times for one burst, want 1", n)
	}
	if sink.Count() != 0 {
		t.Error("mail delivered")
	}
}
