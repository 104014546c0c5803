package ingress

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	dto "github.com/prometheus/client_model/go"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/metrics"
	"github.com/mailroot/mailroot/internal/testutil"
	"github.com/mailroot/mailroot/internal/w3c"
)

// waitLog polls the site's log of today until it parses strictly with n
// entries (a flush may end mid-line while the sessions run), and returns
// them and the raw file.
func waitLog(t *testing.T, dir string, n int) ([]w3c.Record, []byte) {
	t.Helper()
	name := filepath.Join(dir, w3c.FileName(time.Now()))
	var recs []w3c.Record
	var raw []byte
	var err error
	testutil.WaitFor(t, 20*time.Second, fmt.Sprintf("%d lines in %s", n, name), func() bool {
		if raw, err = os.ReadFile(name); err != nil {
			return false
		}
		recs, err = w3c.Parse(bytes.NewReader(raw))
		return err == nil && len(recs) >= n
	})
	if len(recs) != n {
		t.Fatalf("%d lines, want %d:\n%s", len(recs), n, raw)
	}
	return recs, raw
}

// metricValue is the value of family name (a histogram's count) whose
// labels include want ("k=v").
func metricValue(t *testing.T, m *metrics.Metrics, name string, want ...string) float64 {
	t.Helper()
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, s := range f.GetMetric() {
			for _, w := range want {
				k, v, _ := strings.Cut(w, "=")
				if !hasLabel(s, k, v) {
					continue next
				}
			}
			switch {
			case s.Counter != nil:
				return s.Counter.GetValue()
			case s.Histogram != nil:
				return float64(s.Histogram.GetSampleCount())
			case s.Gauge != nil:
				return s.Gauge.GetValue()
			}
		}
	}
	return -1
}

func hasLabel(s *dto.Metric, k, v string) bool {
	for _, l := range s.GetLabel() {
		if l.GetName() == k && l.GetValue() == v {
			return true
		}
	}
	return false
}

// 20 sessions at once, 5 messages each and a relay refusal: the site's
// log has one line per command, every one with every field, in a file
// that a strict parser reads; DATA lines carry the queue id the client
// was given; the accept latency and the refusals are counted.
func TestTransactionLogUnderLoad(t *testing.T) {
	const sessions, perSession = 20, 5
	logDir := t.TempDir()
	m := metrics.New()
	f := startLogged(t, func(c *config.Config) { c.Ingress.LogDir, c.Ingress.RelayNetworks = logDir, nil }, nil, testutil.Logger(t), func(s *Service) { s.Metrics = m })
	_, port, _ := net.SplitHostPort(f.addr)

	body := "Subject: load\r\n\r\nSECRET-CONTENT-MARKER line one\r\nline two\r\n"
	var mu sync.Mutex
	qids := map[string]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	for i := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := smtp.Dial(f.addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if err := c.Hello("client.test"); err != nil {
				errs <- err
				return
			}
			for j := range perSession {
				if err := c.Mail(fmt.Sprintf("s%d@remote.test", i), nil); err != nil {
					errs <- err
					return
				}
				if j == 0 {
					if err := c.Rcpt("other@remote.test", nil); code(err) != 550 {
						errs <- fmt.Errorf("relay: %v, want 550", err)
						return
					}
				}
				if err := c.Rcpt(fmt.Sprintf("u%d@local.test", j), nil); err != nil {
					errs <- err
					return
				}
				w, err := c.Data()
				if err != nil {
					errs <- err
					return
				}
				_, _ = w.Write([]byte(body))
				resp, err := w.CloseWithResponse()
				if err != nil {
					errs <- err
					return
				}
				qid := resp.StatusText[strings.LastIndex(resp.StatusText, " ")+1:]
				mu.Lock()
				qids[qid] = true
				mu.Unlock()
			}
			if err := c.Quit(); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// EHLO, MAIL/RCPT/DATA per message, one refused RCPT, QUIT.
	perConn := 1 + 3*perSession + 1 + 1
	recs, raw := waitLog(t, filepath.Join(logDir, "default"), sessions*perConn)
	if bytes.Contains(raw, []byte("SECRET-CONTENT-MARKER")) {
		t.Fatal("message content in the transaction log")
	}
	byMethod := map[string]int{}
	today := time.Now().UTC().Format("2006-01-02")
	logged := map[string]bool{}
	for _, r := range recs {
		fl := r.Fields
		byMethod[fl["cs-method"]+" "+fl["sc-status"]]++
		if fl["date"] != today || fl["c-ip"] != "127.0.0.1" || fl["s-ip"] != "127.0.0.1" || fl["s-port"] != port ||
			fl["s-sitename"] != "default" || fl["s-computername"] != "mx.local.test" || fl["cs-username"] != "client.test" || fl["cs-version"] != "SMTP" {
			t.Fatalf("line %v", fl)
		}
		if r.Int("sc-bytes") <= 0 || r.Int("cs-bytes") <= 0 || r.Int("time-taken") < 0 {
			t.Errorf("byte counts or time of %v", fl)
		}
		switch fl["cs-method"] {
		case "DATA":
			logged[fl["cs-uri-query"]] = true
			if r.Int("cs-bytes") < int64(len("DATA\r\n")+len(body)) {
				t.Errorf("DATA cs-bytes %d: the message's bytes are counted", r.Int("cs-bytes"))
			}
		case "MAIL":
			if !strings.HasPrefix(fl["cs-uri-query"], "FROM:<s") {
				t.Errorf("MAIL query %q", fl["cs-uri-query"])
			}
		}
	}
	want := map[string]int{"EHLO 250": sessions, "MAIL 250": sessions * perSession, "RCPT 250": sessions * perSession,
		"RCPT 550": sessions, "DATA 250": sessions * perSession, "QUIT 221": sessions}
	for k, n := range want {
		if byMethod[k] != n {
			t.Errorf("%s: %d lines, want %d (all: %v)", k, byMethod[k], n, byMethod)
		}
	}
	if len(logged) != len(qids) {
		t.Errorf("%d queue ids in DATA lines, %d given to clients", len(logged), len(qids))
	}
	for q := range qids {
		if !logged[q] {
			t.Errorf("queue id %s not in the log", q)
		}
	}
	if v := metricValue(t, m, "mailroot_ingress_accept_duration_seconds", "site=default"); v != sessions*perSession {
		t.Errorf("accept latency observations %v, want %d", v, sessions*perSession)
	}
	if v := metricValue(t, m, "mailroot_ingress_refusals_total", "site=default", "reason=relay_denied"); v != sessions {
		t.Errorf("relay refusals %v, want %d", v, sessions)
	}
}

// AUTH lines carry the mechanism and never the credentials; a failed
// AUTH is logged with its 535 and counted; a command that is no command
// is logged too, with its reply; spaces in an argument are '+'.
func TestTransactionLogAUTH(t *testing.T) {
	logDir := t.TempDir()
	m := metrics.New()
	f := startLogged(t, func(c *config.Config) {
		withUsers(t, c, testUser(t, "alice", nil, nil))
		addSite(c, config.KindSubmission, "sub", func(s *config.Site) { s.AllowInsecureAuth = true; s.LogDir = logDir })
	}, nil, testutil.Logger(t), func(s *Service) { s.Metrics = m })
	addr := f.svc.SiteAddrs("sub")[0]
	rc := rawDial(t, addr)
	rc.cmd("EHLO client.test")
	good := base64.StdEncoding.EncodeToString([]byte("\x00alice\x00" + testPassword))
	bad := base64.StdEncoding.EncodeToString([]byte("\x00alice\x00wrong-password"))
	if c, _ := rc.cmd("AUTH PLAIN " + bad); c != 535 {
		t.Fatalf("bad AUTH: %d", c)
	}
	if c, _ := rc.cmd("AUTH PLAIN " + good); c != 235 {
		t.Fatalf("AUTH: %d", c)
	}
	if c, _ := rc.cmd("MAIL FROM:<alice@local.test> BODY=8BITMIME"); c != 250 {
		t.Fatalf("MAIL: %d", c)
	}
	if c, _ := rc.cmd("RCPT TO:<bob+news@local.test>"); c != 250 {
		t.Fatalf("RCPT: %d", c)
	}
	if c, _ := rc.cmd("DATA"); c != 354 {
		t.Fatalf("DATA: %d", c)
	}
	c, text := rc.cmd("Subject: x\r\n\r\nbody\r\n.")
	if c != 250 {
		t.Fatalf("end of data: %d %s", c, text)
	}
	qid := text[strings.LastIndex(text, " ")+1:]
	if c, _ := rc.cmd("XYZZY magic words"); c != 500 {
		t.Fatalf("XYZZY: %d", c)
	}
	rc.cmd("QUIT")

	recs, raw := waitLog(t, filepath.Join(logDir, "sub"), 8)
	if testing.Verbose() {
		t.Logf("the log:\n%s", raw)
	}
	for _, secret := range []string{good, bad, testPassword, "wrong-password"} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Fatalf("credentials %q in the log:\n%s", secret, raw)
		}
	}
	var got []string
	for _, r := range recs {
		got = append(got, r.Fields["cs-method"]+" "+r.Fields["cs-uri-query"]+" "+r.Fields["sc-status"])
	}
	want := []string{"EHLO client.test 250", "AUTH PLAIN 535", "AUTH PLAIN 235", "MAIL FROM:<alice@local.test> BODY=8BITMIME 250",
		"RCPT TO:<bob+news@local.test> 250", "DATA " + qid + " 250", "XYZZY magic words 500", "QUIT  221"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("lines:\n%s\nwant:\n%s\n\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"), raw)
	}
	if !bytes.Contains(raw, []byte(" MAIL FROM:<alice@local.test>+BODY=8BITMIME 250 ")) || !bytes.Contains(raw, []byte(" RCPT TO:<bob%2Bnews@local.test> 250 ")) {
		t.Errorf("MAIL argument not written with '+' for its space:\n%s", raw)
	}
	if v := metricValue(t, m, "mailroot_ingress_refusals_total", "site=sub", "reason=auth_failed"); v != 1 {
		t.Errorf("auth_failed refusals %v, want 1", v)
	}
	if _, err := os.Stat(filepath.Join(logDir, "default")); err == nil {
		t.Error("the default site, without log_dir, has a log")
	}
}

// Refusals are counted by their reason: over the connection limit, MAIL
// without the AUTH a site requires, and too many bad commands.
func TestRefusalsByReason(t *testing.T) {
	m := metrics.New()
	f := startLogged(t, func(c *config.Config) {
		withUsers(t, c, testUser(t, "alice", nil, nil))
		addSite(c, config.KindMTA, "mx", func(s *config.Site) { s.MaxConnections, s.MaxBadCommands = 1, 2 })
		addSite(c, config.KindSubmission, "sub", func(s *config.Site) { s.AllowInsecureAuth = true })
	}, nil, testutil.Logger(t), func(s *Service) { s.Metrics = m })

	mx := f.svc.SiteAddrs("mx")[0]
	first := rawDial(t, mx)
	c, err := net.Dial("tcp", mx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line := make([]byte, 512)
	n, _ := c.Read(line)
	if !strings.HasPrefix(string(line[:n]), "421 4.7.0") {
		t.Fatalf("second connection over max_connections = 1: %q", line[:n])
	}
	first.cmd("EHLO client.test")
	first.cmd("FROB")
	if code, _ := first.cmd("FROB"); code != 500 {
		t.Fatalf("second bad command: %d", code)
	}
	if code, text := first.reply(); code != 421 {
		t.Fatalf("after max_bad_commands: %d %s, want 421", code, text)
	}

	sub := rawDial(t, f.svc.SiteAddrs("sub")[0])
	sub.cmd("EHLO client.test")
	if code, _ := sub.cmd("MAIL FROM:<alice@local.test>"); code != 530 {
		t.Fatalf("MAIL without AUTH: %d", code)
	}
	for reason, want := range map[string]float64{
		"site=mx|reason=connection_limit": 1, "site=mx|reason=too_many_errors": 1,
		"site=sub|reason=auth_required": 1, "site=sub|reason=relay_denied": 0, "site=mx|reason=other": 0,
	} {
		if got := metricValue(t, m, "mailroot_ingress_refusals_total", strings.Split(reason, "|")...); got != want {
			t.Errorf("%s: %v, want %v", reason, got, want)
		}
	}
}

// With the service's clock crossing midnight UTC in a session, the
// commands before it are in the old day's file and those after in the
// new one, each file starting with its directives.
func TestTransactionLogRotatesAtMidnight(t *testing.T) {
	logDir := t.TempDir()
	var mu sync.Mutex
	now := time.Date(2026, 12, 31, 23, 59, 59, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	f := startLogged(t, func(c *config.Config) { c.Ingress.LogDir = logDir }, nil, testutil.Logger(t), func(s *Service) { s.Now = clock })
	rc := rawDial(t, f.addr)
	rc.cmd("EHLO client.test")
	mu.Lock()
	now = now.Add(2 * time.Second)
	mu.Unlock()
	rc.cmd("NOOP")
	rc.cmd("QUIT")
	dir := filepath.Join(logDir, "default")
	for name, want := range map[string][]string{"ex261231.log": {"EHLO"}, "ex270101.log": {"NOOP", "QUIT"}} {
		var recs []w3c.Record
		testutil.WaitFor(t, 20*time.Second, name, func() bool {
			raw, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				return false
			}
			recs, err = w3c.Parse(bytes.NewReader(raw))
			return err == nil && len(recs) == len(want)
		})
		for i, r := range recs {
			if r.Fields["cs-method"] != want[i] || r.Time.Format("060102") != name[2:8] {
				t.Errorf("%s line %d: %v, want %s of that day", name, i, r.Fields, want[i])
			}
		}
	}
}

// A transaction log on a full disk: mail is accepted all the same, and
// the failure is logged once however many lines are lost.
func TestTransactionLogFullDiskNeverFailsMail(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	logDir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(logDir, "default"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/full", filepath.Join(logDir, "default", w3c.FileName(time.Now()))); err != nil {
		t.Fatal(err)
	}
	var logs testutil.Logs
	f := startLogged(t, func(c *config.Config) { c.Ingress.LogDir = logDir }, nil, logs.Logger(t))
	for i := range 3 {
		c := dial(t, f.addr)
		if _, err := send(t, c, "s@remote.test", []string{"u@local.test"}, "Subject: full\r\n\r\nbody\r\n"); err != nil {
			t.Fatalf("message %d with the log's disk full: %v", i, err)
		}
		_ = c.Quit()
		testutil.WaitFor(t, 20*time.Second, "the write error", func() bool { return logs.Count("transaction log write failed") == 1 })
	}
	if n := logs.Count("transaction log write failed"); n != 1 {
		t.Errorf("write error logged %d times, want once", n)
	}
	if n := subjectCount(t, f.js, "mail.in"); n != 3 {
		t.Errorf("%d messages on mail.in, want 3", n)
	}
}

// A connection turned away before any command has its line too: CONNECT,
// the reply code, the reason (over max_connections, and a connect_deny
// rule's 554 greeting).
func TestTransactionLogRefusedConnections(t *testing.T) {
	logDir := t.TempDir()
	f := startLogged(t, func(c *config.Config) {
		addSite(c, config.KindMTA, "mx", func(s *config.Site) { s.MaxConnections, s.LogDir = 1, logDir })
		addSite(c, config.KindMTA, "deny", func(s *config.Site) { s.ConnectDeny, s.LogDir = []string{"127.0.0.0/8"}, logDir })
	}, nil, testutil.Logger(t))
	first := rawDial(t, f.svc.SiteAddrs("mx")[0])
	for _, addr := range []string{f.svc.SiteAddrs("mx")[0], f.svc.SiteAddrs("deny")[0]} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _ = c.Read(make([]byte, 512))
		c.Close()
	}
	first.cmd("QUIT")
	// Each site logs under log_dir/<site>/.
	recs, raw := waitLog(t, filepath.Join(logDir, "mx"), 2)
	deny, rawDeny := waitLog(t, filepath.Join(logDir, "deny"), 1)
	recs, raw = append(recs, deny...), append(raw, rawDeny...)
	got := map[string]string{}
	for _, r := range recs {
		got[r.Fields["s-sitename"]+" "+r.Fields["cs-method"]] = r.Fields["sc-status"] + " " + r.Fields["cs-uri-query"]
	}
	for k, want := range map[string]string{"mx CONNECT": "421 connection_limit", "deny CONNECT": "554 connect_deny", "mx QUIT": "221 "} {
		if got[k] != want {
			t.Errorf("%s: %q, want %q\n%s", k, got[k], want, raw)
		}
	}
}
