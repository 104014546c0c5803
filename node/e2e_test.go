package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
	"github.com/mailroot/mailroot/submit"
)

// world is the outside world of an end-to-end test: a DNS server and
// remote mail exchangers, each a go-smtp server on its own loopback
// address and the same port (delivery.port is one number).
type world struct {
	dns  *testutil.DNS
	port int
	mx   map[string]*testutil.Sink // by domain
}

func newWorld(t *testing.T) *world {
	t.Helper()
	main := testutil.StartSinkOn(t, "127.0.0.1:0")
	w := &world{port: main.Port, mx: map[string]*testutil.Sink{"remote.test": main}}
	w.dns = testutil.StartDNS(t,
		"remote.test. MX 10 mx.remote.test.",
		"mx.remote.test. A 127.0.0.1",
	)
	return w
}

// addMX adds domain with its own mail exchanger on 127.0.0.<n>.
func (w *world) addMX(t *testing.T, domain string, n int) *testutil.Sink {
	t.Helper()
	ip := fmt.Sprintf("127.0.0.%d", n)
	s := testutil.StartSinkOn(t, fmt.Sprintf("%s:%d", ip, w.port))
	w.dns.Add(t, domain+". MX 10 mx."+domain+".")
	w.dns.Add(t, "mx."+domain+". A "+ip)
	w.mx[domain] = s
	return s
}

func testConfig(t testing.TB, w *world, dataDir string) config.Config {
	t.Helper()
	cfg := config.Default()
	cfg.Hostname = "mailroot.test"
	cfg.DataDir = dataDir
	cfg.LocalDomains = []string{"local.test"}
	cfg.Ingress.Listen = []string{"127.0.0.1:0"}
	cfg.Ingress.RelayNetworks = []string{"127.0.0.1/32"}
	cfg.Delivery.Port = w.port
	cfg.Delivery.DNSServer = w.dns.Addr
	cfg.Delivery.Retry = []config.Duration{config.Duration(time.Second)}
	cfg.Delivery.ConnectTimeout = config.Duration(2 * time.Second)
	cfg.Pickup.Interval = config.Duration(50 * time.Millisecond)
	cfg.Pickup.StableFor = config.Duration(100 * time.Millisecond)
	cfg.Metrics.Listen = "127.0.0.1:0" // every node test serves its metrics, on a port of its own
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func startNode(t *testing.T, cfg config.Config, actors ...string) *Node {
	t.Helper()
	n, err := StartEmbedded(context.Background(), cfg, testutil.Logger(t), actors...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Stop)
	if n.Ingress != nil {
		select {
		case <-n.Ingress.Ready():
		case <-time.After(10 * time.Second):
			t.Fatal("ingress not ready")
		}
	}
	return n
}

// submit sends one message from 127.0.0.1 and returns the queue id.
func submitSMTP(t *testing.T, addr, from string, to []string, body string) string {
	t.Helper()
	qid, err := submitFrom(addr, "", from, to, body)
	if err != nil {
		t.Fatal(err)
	}
	return qid
}

func submitFrom(addr, localIP, from string, to []string, body string) (string, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	if localIP != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(localIP)}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		return "", err
	}
	if err := c.Mail(from, nil); err != nil {
		return "", err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return "", err
		}
	}
	wc, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := wc.Write([]byte(body)); err != nil {
		return "", err
	}
	resp, err := wc.CloseWithResponse()
	if err != nil {
		return "", err
	}
	_ = c.Quit()
	qid, ok := strings.CutPrefix(resp.StatusText, "2.0.0 OK queued as ")
	if !ok {
		return "", fmt.Errorf("unexpected reply %q", resp.StatusText)
	}
	return qid, nil
}

// checkReceived checks that data is our Received: header followed by body,
// byte for byte.
func checkReceived(t *testing.T, data []byte, qid, body string) {
	t.Helper()
	if !bytes.HasPrefix(data, []byte("Received: from client.test ([127.0.0.1])\r\n\tby mailroot.test (Mailroot) with ESMTP id "+qid+"\r\n")) {
		t.Errorf("message does not start with our Received: header:\n%s", data)
	}
	if !bytes.HasSuffix(data, []byte(body)) {
		t.Errorf("message body is not byte-exact:\n%q\nwant suffix\n%q", data, body)
	}
	// Exactly our header plus the original: nothing else added.
	if len(data) < len(body) {
		return
	}
	prefix := string(data[:len(data)-len(body)])
	lines := strings.Split(strings.TrimSuffix(prefix, "\r\n"), "\r\n")
	for i, l := range lines {
		if i > 0 && !strings.HasPrefix(l, "\t") {
			t.Errorf("unexpected header line before the message: %q", l)
		}
	}
}

func waitEmptyQueue(t *testing.T, n *Node) {
	t.Helper()
	testutil.WaitFor(t, 20*time.Second, "queue empty", func() bool {
		s, err := n.JS.Stream(context.Background(), bus.StreamMail)
		if err != nil {
			return false
		}
		info, err := s.Info(context.Background())
		return err == nil && info.State.Msgs == 0
	})
}

func TestEndToEnd(t *testing.T) {
	w := newWorld(t)
	retry := w.addMX(t, "retry.test", 3)
	reject := w.addMX(t, "reject.test", 4)
	cfg := testConfig(t, w, t.TempDir())
	n := startNode(t, cfg)
	addr := n.Ingress.Addrs()[0]

	t.Run("remote MX gets exact bytes and envelope", func(t *testing.T) {
		body := "From: Sender <sender@local.test>\r\nTo: rcpt@remote.test\r\nSubject: hello\r\n\r\nHello, remote.\r\n.leading dot\r\n"
		qid := submitSMTP(t, addr, "sender@local.test", []string{"rcpt@remote.test"}, body)
		sink := w.mx["remote.test"]
		testutil.WaitFor(t, 20*time.Second, "delivery to remote.test", func() bool { return sink.Count() == 1 })
		m := sink.Mails()[0]
		if m.From != "sender@local.test" || len(m.To) != 1 || m.To[0] != "rcpt@remote.test" {
			t.Errorf("envelope from %q to %v", m.From, m.To)
		}
		if m.Helo != "mailroot.test" {
			t.Errorf("EHLO name %q, want the configured hostname", m.Helo)
		}
		checkReceived(t, m.Data, qid, body)
	})

	t.Run("local domain lands in Drop byte for byte", func(t *testing.T) {
		body := "Subject: local\r\n\r\nline one\r\nline two\r\n"
		qid := submitSMTP(t, addr, "someone@remote.test", []string{"user@local.test"}, body)
		path := filepath.Join(cfg.DropDir(), "local.test", qid+".eml")
		var data []byte
		testutil.WaitFor(t, 20*time.Second, "drop file", func() bool {
			var err error
			data, err = os.ReadFile(path)
			return err == nil
		})
		// IIS envelope lines first (drop.envelope_lines is on by default).
		lines := "x-sender: someone@remote.test\r\nx-receiver: user@local.test\r\n"
		if !bytes.HasPrefix(data, []byte(lines)) {
			t.Errorf("drop file does not start with the envelope lines:\n%s", data)
		}
		checkReceived(t, bytes.TrimPrefix(data, []byte(lines)), qid, body)
		if bytes.HasSuffix(data, []byte("\r\n\r\n")) {
			t.Errorf("a blank line was added at the end")
		}
		entries, _ := os.ReadDir(filepath.Dir(path))
		for _, e := range entries {
			if !strings.HasSuffix(e.Name(), ".eml") {
				t.Errorf("stray file %s in Drop", e.Name())
			}
		}
	})

	t.Run("relay denied from outside relay_networks", func(t *testing.T) {
		_, err := submitFrom(addr, "127.0.0.2", "spammer@remote.test", []string{"victim@remote.test"}, "Subject: spam\r\n\r\nx\r\n")
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code != 550 || (se.EnhancedCode != smtp.EnhancedCode{5, 7, 1}) || se.Message != "Unable to relay for victim@remote.test" {
			t.Fatalf("relay attempt from 127.0.0.2: %v, want 550 5.7.1 Unable to relay for victim@remote.test", err)
		}
		// The same client may still send to a local domain.
		if _, err := submitFrom(addr, "127.0.0.2", "friend@remote.test", []string{"user@local.test"}, "Subject: hi\r\n\r\nx\r\n"); err != nil {
			t.Fatalf("local delivery from a non-relay client: %v", err)
		}
	})

	t.Run("451 twice then delivered on the third attempt", func(t *testing.T) {
		retry.DataFunc = func(n int, _ *testutil.Mail) error {
			if n <= 2 {
				return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again later"}
			}
			return nil
		}
		body := "Subject: retry\r\n\r\npersistence\r\n"
		start := time.Now()
		qid := submitSMTP(t, addr, "sender@local.test", []string{"rcpt@retry.test"}, body)
		testutil.WaitFor(t, 30*time.Second, "delivery after two 451s", func() bool { return retry.Count() == 1 })
		if got := retry.Transactions(); got != 3 {
			t.Errorf("%d transactions, want 3 (two 451, one 250)", got)
		}
		// Two retries at the 1 s ladder step: at least ~2 s (schedules have second resolution).
		if d := time.Since(start); d < 1800*time.Millisecond {
			t.Errorf("delivered after %v: the retries did not wait for the ladder", d)
		}
		checkReceived(t, retry.Mails()[0].Data, qid, body)
	})

	// (Mail with a sender gets a non-delivery report instead:
	// queuelife_test.go.)
	t.Run("550 for mail from the null sender lands in Badmail with the reason", func(t *testing.T) {
		reject.RcptFunc = func(to string) error {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		body := "Subject: doomed\r\n\r\nnobody home\r\n"
		qid := submitSMTP(t, addr, "", []string{"ghost@reject.test"}, body)
		var bad, bdr []byte
		testutil.WaitFor(t, 20*time.Second, "badmail files", func() bool {
			var err1, err2 error
			bad, err1 = os.ReadFile(filepath.Join(cfg.BadmailDir(), qid+".BAD"))
			bdr, err2 = os.ReadFile(filepath.Join(cfg.BadmailDir(), qid+".BDR"))
			return err1 == nil && err2 == nil
		})
		checkReceived(t, bad, qid, body)
		for _, want := range []string{"550", "5.1.1", "no such user", "ghost@reject.test"} {
			if !bytes.Contains(bdr, []byte(want)) {
				t.Errorf(".BDR does not mention %q:\n%s", want, bdr)
			}
		}
		if reject.Count() != 0 {
			t.Errorf("rejected mail was delivered")
		}
	})

	t.Run("picked-up file is delivered and removed", func(t *testing.T) {
		tmp := filepath.Join(cfg.DataDir, "pickup-tmp.eml")
		body := "x-sender: app@local.test\r\nx-receiver: picked@remote.test\r\nSubject: from a file\r\n\r\nwritten by a script\r\n"
		if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		final := filepath.Join(cfg.PickupDir(), "job1.eml")
		if err := os.Rename(tmp, final); err != nil {
			t.Fatal(err)
		}
		sink := w.mx["remote.test"]
		testutil.WaitFor(t, 20*time.Second, "picked-up mail delivered", func() bool {
			for _, m := range sink.Mails() {
				if len(m.To) == 1 && m.To[0] == "picked@remote.test" {
					return true
				}
			}
			return false
		})
		var got testutil.Mail
		for _, m := range sink.Mails() {
			if m.To[0] == "picked@remote.test" {
				got = m
			}
		}
		if got.From != "app@local.test" {
			t.Errorf("sender %q, want app@local.test", got.From)
		}
		lower := bytes.ToLower(got.Data)
		if bytes.Contains(lower, []byte("x-receiver:")) || bytes.Contains(lower, []byte("x-sender:")) ||
			!bytes.Contains(got.Data, []byte("\r\nSubject: from a file\r\n")) || !bytes.Contains(got.Data, []byte("\r\nMessage-ID: <")) ||
			!bytes.HasSuffix(got.Data, []byte("\r\n\r\nwritten by a script\r\n")) {
			t.Errorf("picked-up message:\n%s", got.Data)
		}
		testutil.WaitFor(t, 5*time.Second, "pickup file removed", func() bool {
			_, err := os.Stat(final)
			return os.IsNotExist(err)
		})
	})
	waitEmptyQueue(t, n)
}

// A 250 is a promise: mail accepted while nothing else runs, with the whole
// process then stopped hard, is delivered exactly once after a restart on
// the same data directory.
func TestDurableAcrossRestart(t *testing.T) {
	w := newWorld(t)
	dir := t.TempDir()
	cfg := testConfig(t, w, dir)
	sink := w.mx["remote.test"]

	n1, err := StartEmbedded(context.Background(), cfg, testutil.Logger(t), Ingress)
	if err != nil {
		t.Fatal(err)
	}
	<-n1.Ingress.Ready()
	const count = 20
	qids := map[string]bool{}
	for i := range count {
		qids[submitSMTP(t, n1.Ingress.Addrs()[0], "s@local.test", []string{fmt.Sprintf("r%d@remote.test", i)}, fmt.Sprintf("Subject: %d\r\n\r\nbody %d\r\n", i, i))] = true
	}
	n1.Kill()
	if sink.Count() != 0 {
		t.Fatalf("delivered before the restart")
	}

	n2 := startNode(t, cfg)
	testutil.WaitFor(t, 30*time.Second, "all delivered after restart", func() bool { return sink.Count() >= count })
	waitEmptyQueue(t, n2)
	seen := map[string]int{}
	for _, m := range sink.Mails() {
		for q := range qids {
			if bytes.Contains(m.Data, []byte(" id "+q+"\r\n")) {
				seen[q]++
			}
		}
	}
	for q := range qids {
		if seen[q] != 1 {
			t.Errorf("%s delivered %d times, want once", q, seen[q])
		}
	}
	if sink.Count() != count {
		t.Errorf("%d deliveries, want %d", sink.Count(), count)
	}
}

// One node per store: a second StartEmbedded on the same data_dir fails at
// once naming the holder (here this process, as flock locks belong to the
// open file), and the lock is given back when the node stops.
func TestOneNodePerStore(t *testing.T) {
	w := newWorld(t)
	cfg := testConfig(t, w, t.TempDir())
	n1 := startNode(t, cfg, Router)
	_, err := StartEmbedded(context.Background(), cfg, testutil.Logger(t), Router)
	if want := fmt.Sprintf("data_dir %s is in use by process %d", cfg.DataDir, os.Getpid()); err == nil || err.Error() != want {
		t.Fatalf("second node on the store: %v, want %q", err, want)
	}
	n1.Stop()
	startNode(t, cfg, Router)
}

// An application publishing straight onto NATS: the same idempotency key
// twice is one delivered message.
func TestSubmitOntoNATSArrivesOnce(t *testing.T) {
	w := newWorld(t)
	cfg := testConfig(t, w, t.TempDir())
	n := startNode(t, cfg)
	msg := &submit.Message{ID: "app-key-7", From: "app@local.test", To: []string{"user@remote.test"},
		Data: []byte("From: app@local.test\r\nTo: user@remote.test\r\nSubject: via NATS\r\n\r\nno SMTP involved\r\n")}
	q1, err := submit.Submit(t.Context(), n.JS, msg)
	if err != nil {
		t.Fatal(err)
	}
	q2, err := submit.Submit(t.Context(), n.JS, msg)
	if err != nil || q1 != q2 {
		t.Fatalf("second submit: %s %v (first %s)", q2, err, q1)
	}
	sink := w.mx["remote.test"]
	testutil.WaitFor(t, 20*time.Second, "delivery", func() bool { return sink.Count() >= 1 })
	waitEmptyQueue(t, n)
	if sink.Count() != 1 {
		t.Fatalf("%d deliveries, want 1", sink.Count())
	}
	if m := sink.Mails()[0]; m.From != "app@local.test" || !bytes.HasSuffix(m.Data, msg.Data) {
		t.Errorf("delivered from %q:\n%s", m.From, m.Data)
	}
}
