package ingress

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
)

type fixture struct {
	svc  *Service
	js   jetstream.JetStream
	addr string
	nats *testutil.NATS
}

func start(t testing.TB, edit func(*config.Config), natsOpts func(*server.Options)) *fixture {
	t.Helper()
	return startLogged(t, edit, natsOpts, testutil.Logger(t))
}

func startLogged(t testing.TB, edit func(*config.Config), natsOpts func(*server.Options), log *slog.Logger, svcEdit ...func(*Service)) *fixture {
	t.Helper()
	n := testutil.StartNATSWith(t, t.TempDir(), natsOpts)
	_, js := n.Connect(t)
	cfg := config.Default()
	cfg.Hostname = "mx.local.test"
	cfg.DataDir = t.TempDir()
	cfg.LocalDomains = []string{"local.test"}
	cfg.Ingress.Listen = []string{"127.0.0.1:0"}
	cfg.Ingress.AuthChecks = false // on in checks_test.go, which has a DNS server for them
	if edit != nil {
		edit(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	svc, err := New(cfg, log, js)
	if err != nil {
		t.Fatal(err)
	}
	svc.StoreTimeout = 3 * time.Second
	for _, e := range svcEdit {
		e(svc)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = svc.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	// Run creates the stream; wait for it so publishes cannot race it.
	select {
	case <-svc.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("ingress not ready")
	}
	return &fixture{svc: svc, js: js, addr: svc.Addrs()[0], nats: n}
}

func dial(t testing.TB, addr string) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	return c
}

func code(err error) int {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// send runs one transaction and returns the DATA reply.
func send(t testing.TB, c *smtp.Client, from string, to []string, body string) (*smtp.DataResponse, error) {
	t.Helper()
	if err := c.Mail(from, nil); err != nil {
		return nil, err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return nil, err
		}
	}
	w, err := c.Data()
	if err != nil {
		return nil, err
	}
	if _, err := w.Write([]byte(body)); err != nil {
		return nil, err
	}
	return w.CloseWithResponse()
}

func lastIn(t testing.TB, js jetstream.JetStream) *jetstream.RawStreamMsg {
	t.Helper()
	s, err := js.Stream(context.Background(), bus.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(context.Background(), bus.SubjIn)
	if err != nil {
		t.Fatalf("no message on mail.in: %v", err)
	}
	return m
}

func TestEHLOAdvertises(t *testing.T) {
	f := start(t, nil, nil)
	c := dial(t, f.addr)
	for _, ext := range []string{"PIPELINING", "8BITMIME", "SIZE", "ENHANCEDSTATUSCODES"} {
		if ok, _ := c.Extension(ext); !ok {
			t.Errorf("EHLO does not advertise %s", ext)
		}
	}
	if _, p := c.Extension("SIZE"); p != "10485760" {
		t.Errorf("SIZE = %q, want the configured maximum", p)
	}
}

func TestAcceptedMailIsStoredBefore250(t *testing.T) {
	f := start(t, nil, nil)
	c := dial(t, f.addr)
	body := "From: a@remote.test\r\nTo: b@local.test\r\nSubject: hi\r\n\r\nhello\r\n"
	resp, err := send(t, c, "a@remote.test", []string{"b@local.test"}, body)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(resp.StatusText, "2.0.0 OK queued as ") {
		t.Fatalf("reply %q", resp.StatusText)
	}
	qid := strings.TrimPrefix(resp.StatusText, "2.0.0 OK queued as ")
	m := lastIn(t, f.js)
	env, err := envelope.Decode(m.Header)
	if err != nil {
		t.Fatal(err)
	}
	if env.QueueID != qid || m.Header.Get(envelope.HdrMsgID) != qid {
		t.Errorf("queue id %q / msg id %q, want %q", env.QueueID, m.Header.Get(envelope.HdrMsgID), qid)
	}
	if env.From != "a@remote.test" || len(env.Rcpts) != 1 || env.Rcpts[0].Addr != "b@local.test" {
		t.Errorf("envelope %+v", env)
	}
	if env.ClientIP != "127.0.0.1" || env.Helo != "client.test" || env.Source != "smtp" {
		t.Errorf("client info %q %q %q", env.ClientIP, env.Helo, env.Source)
	}
	if !bytes.HasPrefix(m.Data, []byte("Received: from client.test ([127.0.0.1])\r\n\tby mx.local.test (Mailroot) with ESMTP id "+qid)) {
		t.Errorf("no Received: header first:\n%s", m.Data)
	}
	if !bytes.HasSuffix(m.Data, []byte(body)) {
		t.Errorf("body not kept byte for byte:\n%q", m.Data)
	}
	if env.ExpiresAt.Sub(env.ReceivedAt) != 48*time.Hour {
		t.Errorf("expiry %v after receipt, want 48h", env.ExpiresAt.Sub(env.ReceivedAt))
	}
}

func TestRelayControl(t *testing.T) {
	f := start(t, func(c *config.Config) { c.Ingress.RelayNetworks = []string{"192.0.2.0/24"} }, nil)
	c := dial(t, f.addr)
	if err := c.Mail("a@remote.test", nil); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		rcpt string
		code int
	}{
		{"user@local.test", 0},
		{"User@LOCAL.TEST.", 501},
		{"victim@elsewhere.test", 550},
		{"user%victim@elsewhere.test@local.test", 550},
		{"user%elsewhere.test@local.test", 550},
		{`"victim@elsewhere.test"@local.test`, 550},
		{"victim@[192.0.2.1]", 550},
	}
	for _, tt := range tests {
		err := c.Rcpt(tt.rcpt, nil)
		if code(err) != tt.code {
			t.Errorf("RCPT %s: %v, want code %d", tt.rcpt, err, tt.code)
		}
		if tt.code == 550 {
			var se *smtp.SMTPError
			if errors.As(err, &se) && (se.EnhancedCode != smtp.EnhancedCode{5, 7, 1} || !strings.HasPrefix(se.Message, "Unable to relay for ")) {
				t.Errorf("RCPT %s: %v, want 5.7.1 Unable to relay", tt.rcpt, err)
			}
		}
	}
}

func TestRelayNetworkMayRelay(t *testing.T) {
	f := start(t, nil, nil) // default relay_networks include 127.0.0.0/8
	c := dial(t, f.addr)
	resp, err := send(t, c, "a@local.test", []string{"x@elsewhere.test"}, "Subject: out\r\n\r\nbody\r\n")
	if err != nil {
		t.Fatalf("relay from 127.0.0.1: %v %v", resp, err)
	}
}

func TestTooBig(t *testing.T) {
	f := start(t, func(c *config.Config) { c.Ingress.MaxMessageSize = 1000 }, nil)
	c := dial(t, f.addr)
	if err := c.Mail("a@remote.test", &smtp.MailOptions{Size: 5000}); code(err) != 552 {
		t.Errorf("MAIL SIZE=5000: %v, want 552", err)
	}
	_, err := send(t, c, "a@remote.test", []string{"b@local.test"}, "Subject: big\r\n\r\n"+strings.Repeat(strings.Repeat("x", 98)+"\r\n", 20))
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 552 || (se.EnhancedCode != smtp.EnhancedCode{5, 3, 4}) {
		t.Fatalf("oversize DATA: %v, want 552 5.3.4", err)
	}
}

func TestLargeBodyGoesToObjectStore(t *testing.T) {
	f := start(t, nil, nil)
	c := dial(t, f.addr)
	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("y", 998)+"\r\n", 300)
	resp, err := send(t, c, "a@remote.test", []string{"b@local.test"}, big)
	if err != nil {
		t.Fatalf("%v %v", resp, err)
	}
	m := lastIn(t, f.js)
	env, err := envelope.Decode(m.Header)
	if err != nil {
		t.Fatal(err)
	}
	if env.Body != envelope.BodyObject || len(m.Data) != 0 {
		t.Fatalf("body %q with %d bytes inline, want obj and none", env.Body, len(m.Data))
	}
	obs, err := f.js.ObjectStore(context.Background(), bus.BucketBodies)
	if err != nil {
		t.Fatal(err)
	}
	got, err := obs.GetBytes(context.Background(), env.QueueID)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(got, []byte(big)) || !bytes.HasPrefix(got, []byte("Received: ")) || int64(len(got)) != env.BodySize {
		t.Errorf("stored body of %d bytes (size header %d) is not Received: + the message", len(got), env.BodySize)
	}
}

func TestStoreFullIs452(t *testing.T) {
	f := start(t, nil, func(o *server.Options) { o.JetStreamMaxStore = 1 << 20 })
	c := dial(t, f.addr)
	chunk := "Subject: fill\r\n\r\n" + strings.Repeat(strings.Repeat("z", 998)+"\r\n", 60)
	var last error
	for i := 0; i < 40; i++ {
		_, last = send(t, c, "a@remote.test", []string{"b@local.test"}, chunk)
		if last != nil {
			break
		}
	}
	var se *smtp.SMTPError
	if !errors.As(last, &se) || se.Code != 452 || (se.EnhancedCode != smtp.EnhancedCode{4, 3, 1}) {
		t.Fatalf("filling the store ended with %v, want 452 4.3.1", last)
	}
}

func TestNATSDownIs451(t *testing.T) {
	f := start(t, nil, nil)
	c := dial(t, f.addr)
	f.nats.Server.Shutdown()
	_, err := send(t, c, "a@remote.test", []string{"b@local.test"}, "Subject: x\r\n\r\nbody\r\n")
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 451 || (se.EnhancedCode != smtp.EnhancedCode{4, 3, 0}) {
		t.Fatalf("with NATS down: %v, want 451 4.3.0", err)
	}
}

func TestMaxConnections(t *testing.T) {
	f := start(t, func(c *config.Config) { c.Ingress.MaxConnections = 1 }, nil)
	_ = dial(t, f.addr)
	c2, err := smtp.Dial(f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := c2.Hello("second.test"); code(err) != 421 {
		t.Fatalf("second connection: %v, want 421", err)
	}
}

func TestBadAddresses(t *testing.T) {
	f := start(t, nil, nil)
	c := dial(t, f.addr)
	if err := c.Mail("a@remote.test", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("no-domain@", nil); code(err) != 501 {
		t.Errorf("RCPT no-domain@: %v, want 501", err)
	}
}
