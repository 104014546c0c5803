package delivery

import (
	"encoding/base64"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/testutil"
)

// The smart host's password is in no log line, at any level (down to the
// trace level), neither when the login works nor when it is refused:
// not as text, nor as the base64 of an AUTH PLAIN or LOGIN exchange.
func TestSmartHostPasswordNeverLogged(t *testing.T) {
	for _, tc := range []struct {
		name, password string
		ok             bool
	}{
		{"accepted", "secret", true}, // the test smart host's password for relay
		{"refused", "Wr0ng-Pa55-7xq", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sink, cert, port := smartHost(t, false)
			h := newHarness(t)
			h.trust(cert)
			pw := filepath.Join(t.TempDir(), "pw")
			if err := os.WriteFile(pw, []byte(tc.password+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			h.cfg.Delivery.SmartHost = "127.0.0.1:" + strconv.Itoa(port)
			h.cfg.Delivery.SmartHostUser, h.cfg.Delivery.SmartHostPasswordFile = "relay", pw
			h.cfg.LogLevel = "trace"
			logs := &testutil.Logs{}
			h.start(func(s *Service) {
				s.log = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug - 4})).With("svc", "delivery")
			})
			env := newEnv("far.test", "x@far.test")
			h.publishOut(env, sampleBody)
			if tc.ok {
				testutil.WaitFor(t, wait, "delivery", func() bool { return sink.Count() == 1 })
				h.waitEmpty()
			} else {
				h.waitLast(bus.Defer(bus.Token("far.test"), env.QueueID))
				testutil.WaitFor(t, wait, "the refused login's log line", func() bool { return logs.Count("smart host login failed") == 1 })
			}
			out := logs.String()
			if out == "" {
				t.Fatal("nothing logged: the test proves nothing")
			}
			for _, secret := range []string{
				tc.password,
				base64.StdEncoding.EncodeToString([]byte("\x00relay\x00" + tc.password)),
				base64.StdEncoding.EncodeToString([]byte(tc.password)),
			} {
				if strings.Contains(out, secret) {
					t.Errorf("the password (%q) is in the log:\n%s", secret, out)
				}
			}
		})
	}
}

// 500 messages to one remote, with connection reuse: every one arrives,
// over at most one connection per delivery slot (4 here), where one
// connection per message (connection_cache_time = "0s",
// TestConnectionReuseOff) would be 500.
func TestConnectionReuse500(t *testing.T) {
	if testing.Short() {
		t.Skip("500 messages")
	}
	h := newHarness(t, "reuse.test. MX 10 mx.reuse.test.", "mx.reuse.test. A 127.0.0.1")
	h.cfg.Delivery.ConnectionReuseCount = 1000
	h.start(nil)
	const n = 500
	for i := range n {
		env, body := numbered("reuse.test", i)
		h.publishOut(env, body)
	}
	h.waitMails(n)
	h.waitEmpty()
	c := h.sink.Connections()
	t.Logf("%d messages over %d connections (%d delivery slots)", n, c, h.cfg.Delivery.Concurrency)
	if c > h.cfg.Delivery.Concurrency {
		t.Errorf("%d connections for %d messages, want at most %d", c, n, h.cfg.Delivery.Concurrency)
	}
	if got := h.sink.Count(); got != n {
		t.Errorf("%d messages arrived, want %d", got, n)
	}
}
