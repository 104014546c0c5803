package ingress

import (
	"encoding/base64"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
	"github.com/mailroot/mailroot/internal/users"
)

func TestAuthSuccessAndFailure(t *testing.T) {
	logs := &testutil.Logs{}
	addr := startSubmission(t, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))

	t.Run("PLAIN", func(t *testing.T) {
		c := dialStartTLS(t, addr)
		if err := authPlain(c, "alice@local.test", testPassword); err != nil {
			t.Fatal(err)
		}
		if _, err := send(t, c, "alice@local.test", []string{"x@elsewhere.test"}, "Subject: relay\r\n\r\nbody\r\n"); err != nil {
			t.Errorf("authenticated relay: %v", err)
		}
	})
	t.Run("LOGIN", func(t *testing.T) {
		c := dialStartTLS(t, addr)
		if err := c.Auth(sasl.NewLoginClient("alice@local.test", testPassword)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("LOGIN with initial response", func(t *testing.T) {
		rc := rawDial(t, addr)
		rc.cmd("EHLO client.test")
		rc.cmd("STARTTLS")
		tc := tlsUpgrade(t, rc)
		tc.cmd("EHLO client.test")
		b64 := base64.StdEncoding.EncodeToString
		if code, text := tc.cmd("AUTH LOGIN " + b64([]byte("alice@local.test"))); code != 334 || text != "334 "+b64([]byte("Password:")) {
			t.Fatalf("AUTH LOGIN <user>: %s", text)
		}
		if code, text := tc.cmd(b64([]byte(testPassword))); code != 235 {
			t.Fatalf("password: %s", text)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		c := dialStartTLS(t, addr)
		if err := authPlain(c, "alice@local.test", "wrong-password-xyz"); enhanced(err) != "535 5.7.8" {
			t.Errorf("wrong password: %v, want 535 5.7.8", err)
		}
		if err := c.Mail("alice@local.test", nil); enhanced(err) != "530 5.7.0" {
			t.Errorf("MAIL after a failed AUTH on submission: %v, want 530 5.7.0", err)
		}
	})
	t.Run("not offered without TLS", func(t *testing.T) {
		rc := rawDial(t, addr)
		rc.cmd("EHLO client.test")
		ir := base64.StdEncoding.EncodeToString([]byte("\x00alice@local.test\x00" + testPassword))
		if code, text := rc.cmd("AUTH PLAIN " + ir); code != 530 {
			t.Errorf("AUTH in plain text: %s, want 530 (STARTTLS first)", text)
		}
	})
	t.Run("unknown mechanism", func(t *testing.T) {
		c := dialStartTLS(t, addr)
		if err := c.Auth(sasl.NewAnonymousClient("x")); enhanced(err) != "504 5.5.4" {
			t.Errorf("ANONYMOUS: %v", err)
		}
	})
	if strings.Contains(logs.String(), testPassword) || strings.Contains(logs.String(), "wrong-password-xyz") {
		t.Error("a password appears in the log")
	}
	if !strings.Contains(logs.String(), `msg="authentication failed"`) || !strings.Contains(logs.String(), "user=alice@local.test") {
		t.Errorf("failed login not logged with the user:\n%s", logs.String())
	}
}

// Failed logins from one address slow down (back-off) and then ban the
// address from AUTH; other addresses are not affected.
func TestAuthRateLimit(t *testing.T) {
	f := start(t, func(c *config.Config) {
		withUsers(t, c, testUser(t, "alice@local.test", nil, nil))
		c.Auth.FailLimit = 3
		c.Auth.FailDelay = config.Duration(150 * time.Millisecond)
		c.Auth.Ban = config.Duration(time.Hour)
	}, nil)
	c := dialStartTLS(t, f.addr)
	var took []time.Duration
	for i := 1; i <= 2; i++ {
		t0 := time.Now()
		err := authPlain(c, "alice@local.test", "guess")
		took = append(took, time.Since(t0))
		if enhanced(err) != "535 5.7.8" {
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	if took[0] < 150*time.Millisecond || took[1] < 300*time.Millisecond {
		t.Errorf("no back-off: replies took %v", took)
	}
	if err := authPlain(c, "alice@local.test", "guess"); enhanced(err) != "421 4.7.0" {
		t.Fatalf("third failure: %v, want 421 4.7.0 (banned)", err)
	}
	// Banned: even the right password is refused from this address.
	c2 := dialStartTLS(t, f.addr)
	if err := authPlain(c2, "alice@local.test", testPassword); enhanced(err) != "421 4.7.0" {
		t.Errorf("banned address: %v, want 421 4.7.0", err)
	}
	if !f.svc.limiter.Banned(netip.MustParseAddr("127.0.0.1")) || f.svc.limiter.Banned(netip.MustParseAddr("192.0.2.7")) {
		t.Error("ban is not per address")
	}
}

// sender_login_match: an authenticated user may only use its own
// addresses or domains in MAIL FROM.
func TestSenderAuthorization(t *testing.T) {
	f := start(t, func(c *config.Config) {
		withUsers(t, c,
			testUser(t, "alice@local.test", []string{"@team.local.test", "alias@other.test"}, nil),
			testUser(t, "relayapp", nil, nil))
		addSite(c, config.KindSubmission, "submission", func(s *config.Site) { s.SenderLoginMatch = true })
	}, nil)
	addr := f.svc.SiteAddrs("submission")[0]
	tests := []struct {
		user, from, want string
	}{
		{"alice@local.test", "alice@local.test", ""},
		{"alice@local.test", "Alice@local.test", "553 5.7.1"},
		{"alice@local.test", "anyone@TEAM.local.test", ""},
		{"alice@local.test", "alias@other.test", ""},
		{"alice@local.test", "bob@local.test", "553 5.7.1"},
		{"alice@local.test", "", ""},
		{"relayapp", "app@local.test", "553 5.7.1"},
	}
	for _, tt := range tests {
		c := dialStartTLS(t, addr)
		if err := authPlain(c, tt.user, testPassword); err != nil {
			t.Fatal(err)
		}
		if err := c.Mail(tt.from, nil); enhanced(err) != tt.want {
			t.Errorf("%s as <%s>: %v, want %q", tt.user, tt.from, err, tt.want)
		}
	}
}

// `mailroot user add` while ingress runs: the new user can log in without
// a restart.
func TestUsersFileReload(t *testing.T) {
	var path string
	f := start(t, func(c *config.Config) {
		path = withUsers(t, c)
		c.Auth.FailLimit = 1000
	}, nil)
	if err := users.Save(path, []users.User{testUser(t, "late@local.test", nil, nil)}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c := dialStartTLS(t, f.addr)
		err := authPlain(c, "late@local.test", testPassword)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("new user never accepted: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// A failed login costs one bcrypt comparison whether the user is unknown,
// known with a wrong password, or named with another identity: the time of
// the 535 does not tell which user names exist.
func TestAuthFailureCostsOneComparison(t *testing.T) {
	f := start(t, func(c *config.Config) {
		withUsers(t, c, testUser(t, "alice@local.test", nil, nil))
		c.Auth.FailLimit = 1000
	}, nil)
	for _, tt := range []struct{ what, identity, user, password string }{
		{"unknown user", "", "mallory@local.test", testPassword},
		{"wrong password", "", "alice@local.test", "guess"},
		{"other identity", "bob@local.test", "alice@local.test", testPassword},
	} {
		c := dialStartTLS(t, f.addr)
		before := f.svc.authOK.compares.Load()
		if err := c.Auth(sasl.NewPlainClient(tt.identity, tt.user, tt.password)); enhanced(err) != "535 5.7.8" {
			t.Errorf("%s: %v, want 535 5.7.8", tt.what, err)
		}
		if n := f.svc.authOK.compares.Load() - before; n != 1 {
			t.Errorf("%s: %d bcrypt comparisons, want 1 as for any failed login", tt.what, n)
		}
	}
}

// startSubmission starts ingress with a submission site and the user
// alice@local.test, logging to log, and returns the site's address.
func startSubmission(t *testing.T, log *slog.Logger) string {
	t.Helper()
	f := startLogged(t, func(c *config.Config) {
		withUsers(t, c, testUser(t, "alice@local.test", nil, nil))
		addSite(c, config.KindSubmission, "submission", nil)
	}, nil, log)
	return f.svc.SiteAddrs("submission")[0]
}
