package ingress

import (
	"encoding/base64"
	"log/slog"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"

	"github.com/mailroot/mailroot/internal/testutil"
)

// At the trace level ingress logs the SMTP transcript, and at no level
// does an AUTH secret or the message content reach the log.
func TestTranscriptRedactsSecrets(t *testing.T) {
	logs := &testutil.Logs{}
	addr := startSubmission(t, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.Level(-100)})))
	const bodySecret = "body-secret-7f3a"

	c := dialStartTLS(t, addr) // PLAIN with an initial response
	if err := authPlain(c, "alice@local.test", testPassword); err != nil {
		t.Fatal(err)
	}
	if _, err := send(t, c, "alice@local.test", []string{"x@elsewhere.test"}, "Subject: s\r\n\r\n"+bodySecret+"\r\n"); err != nil {
		t.Fatal(err)
	}
	c = dialStartTLS(t, addr) // LOGIN: username and password as SASL lines
	if err := c.Auth(sasl.NewLoginClient("alice@local.test", testPassword)); err != nil {
		t.Fatal(err)
	}
	c = dialStartTLS(t, addr) // a wrong password is a secret too
	_ = authPlain(c, "alice@local.test", "wrong-secret-9c1e")

	b64 := base64.StdEncoding.EncodeToString
	got := logs.String()
	for _, secret := range []string{
		testPassword, b64([]byte(testPassword)), "wrong-secret-9c1e",
		b64([]byte("\x00alice@local.test\x00" + testPassword)), bodySecret,
	} {
		if strings.Contains(got, secret) {
			t.Errorf("the log holds the secret %q", secret)
		}
	}
	for _, want := range []string{`"C: EHLO client.test"`, `"C: AUTH PLAIN ***"`, `"C: ***"`, `"S: 235 2.7.0 `, `"S: 354 `} {
		if !strings.Contains(got, want) {
			t.Errorf("transcript lacks %s", want)
		}
	}
	if t.Failed() {
		t.Log(got)
	}
}
