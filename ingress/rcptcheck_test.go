package ingress

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/metrics"
	"github.com/mailroot/mailroot/internal/testutil"
)

// rcptReplies opens a transaction and returns the reply to RCPT TO each
// address, "code text".
func rcptReplies(t *testing.T, addr string, rcpts ...string) map[string]string {
	t.Helper()
	rc := rawDial(t, addr)
	rc.cmd("EHLO client.test")
	if code, text := rc.cmd("MAIL FROM:<a@remote.test>"); code != 250 {
		t.Fatalf("MAIL: %s", text)
	}
	out := map[string]string{}
	for _, r := range rcpts {
		_, text := rc.cmd("RCPT TO:<" + r + ">")
		out[r] = text
	}
	rc.cmd("QUIT")
	return out
}

func unknown(addr string) string {
	return "550 5.1.1 <" + addr + ">: Recipient address rejected: User unknown"
}

// Off by default: any local part of a local domain is accepted (IIS).
func TestRecipientsOffAcceptsAny(t *testing.T) {
	f := start(t, nil, nil)
	got := rcptReplies(t, f.addr, "nobody@local.test")
	if r := got["nobody@local.test"]; !strings.HasPrefix(r, "250 2.1.5") {
		t.Errorf("RCPT: %q, want 250 with validation off", r)
	}
	if f.svc.rcpts.Load() != nil {
		t.Error("recipient validation on without a list")
	}
}

// The global file, a domain's own file and the users file each make
// recipients valid; unknown ones of a checked domain get 550 5.1.1; alias
// domains are checked after their rewrite; other domains are not checked.
func TestRecipientValidation(t *testing.T) {
	dir := t.TempDir()
	global := filepath.Join(dir, "recipients")
	writeFile(t, global, "# valid recipients\nalice@local.test\n\n@catchall.test   # any local part\nodd#name@local.test\ngrace@own.test\n")
	own := filepath.Join(dir, "own")
	writeFile(t, own, "carol@own.test\n")
	f := start(t, func(c *config.Config) {
		c.LocalDomains = []string{"local.test", "catchall.test"}
		c.Domains = []config.Domain{
			{Name: "alias.test", Type: config.DomainAlias},
			{Name: "own.test", Type: config.DomainLocal, RecipientsFile: own},
		}
		c.DefaultDomain = "local.test"
		c.Ingress.RecipientsFile = global
		c.Ingress.RecipientsUsers = true
		withUsers(t, c, testUser(t, "erin@local.test", nil, nil), testUser(t, "plainname", nil, nil))
	}, nil)
	want := map[string]string{
		"alice@local.test":      "250 2.1.5",
		"ALICE@Local.TEST":      "250 2.1.5",
		"odd#name@local.test":   "250 2.1.5",
		"bob@local.test":        unknown("bob@local.test"),
		"anyone@catchall.test":  "250 2.1.5",
		"alice@alias.test":      "250 2.1.5", // alice@local.test
		"bob@alias.test":        unknown("bob@alias.test"),
		"Postmaster@local.test": "250 2.1.5",
		"carol@own.test":        "250 2.1.5",
		"grace@own.test":        "250 2.1.5", // the global file counts for every local domain
		"alice@own.test":        unknown("alice@own.test"),
		"dave@own.test":         unknown("dave@own.test"),
		"erin@local.test":       "250 2.1.5", // a user
		"plainname@local.test":  unknown("plainname@local.test"),
		"someone@remote.test":   "250 2.1.5", // relayed (127.0.0.1 is in relay_networks), not checked
	}
	var rcpts []string
	for r := range want {
		rcpts = append(rcpts, r)
	}
	got := rcptReplies(t, f.addr, rcpts...)
	for r, w := range want {
		if !strings.HasPrefix(got[r], w) {
			t.Errorf("RCPT TO:<%s>: %q, want %q", r, got[r], w)
		}
	}
	// Mail goes to the known recipients only; with none, nothing is
	// stored.
	rc := rawDial(t, f.addr)
	rc.cmd("EHLO client.test")
	rc.cmd("MAIL FROM:<a@remote.test>")
	rc.cmd("RCPT TO:<bob@local.test>")
	if code, text := rc.cmd("DATA"); code != 502 {
		t.Errorf("DATA with no valid recipient: %q", text)
	}
	rc.cmd("RCPT TO:<alice@alias.test>")
	rc.cmd("RCPT TO:<bob@alias.test>")
	if code, text := rc.cmd("DATA"); code != 354 {
		t.Fatalf("DATA: %q", text)
	}
	if code, text := rc.cmd("Subject: x\r\n\r\nb\r\n."); code != 250 {
		t.Fatalf("end of DATA: %q", text)
	}
	if n := subjectCount(t, f.js, bus.SubjIn); n != 1 {
		t.Fatalf("%d messages on mail.in, want 1", n)
	}
	env, _ := decodeLast(t, f)
	if len(env.Rcpts) != 1 || env.Rcpts[0].Addr != "alice@local.test" {
		t.Errorf("recipients %+v, want alice@local.test alone", env.Rcpts)
	}
}

// A domain's own file checks that domain only; users alone check every
// local domain.
func TestRecipientValidationScope(t *testing.T) {
	own := filepath.Join(t.TempDir(), "own")
	writeFile(t, own, "carol@own.test\n")
	f := start(t, func(c *config.Config) {
		c.Domains = []config.Domain{{Name: "own.test", Type: config.DomainLocal, RecipientsFile: own}}
	}, nil)
	got := rcptReplies(t, f.addr, "dave@own.test", "anyone@local.test", "carol@own.test")
	if got["dave@own.test"] != unknown("dave@own.test") || !strings.HasPrefix(got["anyone@local.test"], "250") || !strings.HasPrefix(got["carol@own.test"], "250") {
		t.Errorf("replies %q", got)
	}

	f = startLogged(t, func(c *config.Config) {
		c.Ingress.RecipientsUsers = true
		withUsers(t, c, testUser(t, "erin@local.test", nil, nil))
	}, nil, testutil.Logger(t), withMetrics)
	got = rcptReplies(t, f.addr, "erin@local.test", "frank@local.test")
	if !strings.HasPrefix(got["erin@local.test"], "250") || got["frank@local.test"] != unknown("frank@local.test") {
		t.Errorf("replies %q", got)
	}
	if n := refusedCount(t, f, "default", metrics.RefusedUnknownRcpt); n != 1 {
		t.Errorf("refusals{unknown_recipient} = %v, want 1", n)
	}
}

// A changed file takes effect without a restart; a bad one keeps the last
// good list and its error, with the line number, is logged once.
func TestRecipientsFileReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "recipients")
	writeFile(t, path, "alice@local.test\n")
	var logs testutil.Logs
	f := startLogged(t, func(c *config.Config) { c.Ingress.RecipientsFile = path }, nil, logs.Logger(t),
		func(s *Service) { s.RecipientsPoll = 20 * time.Millisecond })
	if got := rcptReplies(t, f.addr, "bob@local.test")["bob@local.test"]; got != unknown("bob@local.test") {
		t.Fatalf("bob before the reload: %q", got)
	}
	writeFile(t, path, "alice@local.test\nbob@local.test\n")
	testutil.WaitFor(t, 10*time.Second, "bob valid after the reload", func() bool {
		return strings.HasPrefix(rcptReplies(t, f.addr, "bob@local.test")["bob@local.test"], "250")
	})
	if logs.Count("recipients file reloaded") == 0 {
		t.Error("reload not logged")
	}

	writeFile(t, path, "carol@local.test\n# fine\nnot an address\n")
	testutil.WaitFor(t, 10*time.Second, "the bad file logged", func() bool {
		rcptReplies(t, f.addr, "carol@local.test")
		return logs.Count("recipients file refused") > 0
	})
	if !strings.Contains(logs.String(), "line 3") {
		t.Errorf("the error does not name line 3:\n%s", logs.String())
	}
	got := rcptReplies(t, f.addr, "bob@local.test", "carol@local.test")
	if !strings.HasPrefix(got["bob@local.test"], "250") || got["carol@local.test"] != unknown("carol@local.test") {
		t.Errorf("after a bad file: %q, want the last good list", got)
	}
	rcptReplies(t, f.addr, "bob@local.test")
	if n := logs.Count("recipients file refused"); n != 1 {
		t.Errorf("the bad file logged %d times, want once", n)
	}

	// Removed: still the last good list.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "the missing file logged", func() bool {
		rcptReplies(t, f.addr, "alice@local.test")
		return logs.Count("recipients file unreadable") > 0
	})
	if got := rcptReplies(t, f.addr, "bob@local.test")["bob@local.test"]; !strings.HasPrefix(got, "250") {
		t.Errorf("after removal: %q", got)
	}
}

// A file that does not parse at start is an error naming file and line.
func TestRecipientsFileBadAtStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "recipients")
	writeFile(t, path, "alice@local.test\nbob@@local.test\n")
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.Ingress.RecipientsFile = path
	_, err := newRcptCheck(cfg, nil, testutil.Discard())
	if !errors.Is(err, errRecipients) || !strings.Contains(err.Error(), "line 2") || !strings.Contains(err.Error(), path) {
		t.Errorf("err %v, want one naming %s line 2", err, path)
	}
	cfg.Ingress.RecipientsFile = filepath.Join(t.TempDir(), "missing")
	if _, err := newRcptCheck(cfg, nil, testutil.Discard()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestParseRecipients(t *testing.T) {
	set, err := parseRecipients(strings.NewReader("# c\n  Alice@Example.TEST  \n@Sub.Example.test # all\na#b@example.test\n\n\"q.u\"@example.test\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"alice@example.test", "@sub.example.test", "a#b@example.test", `"q.u"@example.test`} {
		if !set[k] {
			t.Errorf("%s missing from %v", k, set)
		}
	}
	for _, bad := range []string{"alice\n", "a b@x.test\n", "@\n", "@x..test\n", "a@x.test.\n", "@x.test.\n", "a@\n", "a@b@x.test\n", "\"q u\"@x.test\n", strings.Repeat("a", 5000) + "@x.test\n"} {
		if _, err := parseRecipients(strings.NewReader("ok@x.test\n" + bad)); !errors.Is(err, errRecipients) || !strings.Contains(err.Error(), "line 2") {
			t.Errorf("%.40q: %v, want an error on line 2", bad, err)
		}
	}
}

func FuzzParseRecipients(f *testing.F) {
	for _, s := range []string{"alice@example.test\n", "@example.test\n", "# c\n\n", "a#b@x.test # c\n", "\"q u\"@x.test\n", "bad\n", "@x..y\n", "ü@bücher.test\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		set, err := parseRecipients(strings.NewReader(s))
		if err != nil {
			if !errors.Is(err, errRecipients) || !strings.Contains(err.Error(), "line ") {
				t.Fatalf("error %v names no line", err)
			}
			return
		}
		// Every entry is a catch-all or an address, lower case, and a
		// file of the entries parses to the same set.
		var b strings.Builder
		for k := range set {
			if k != strings.ToLower(k) && !strings.HasPrefix(k, "@") {
				t.Fatalf("entry %q not lower case", k)
			}
			b.WriteString(k + "\n")
		}
		again, err := parseRecipients(strings.NewReader(b.String()))
		if err != nil || len(again) != len(set) {
			t.Fatalf("entries %q do not parse again: %v", b.String(), err)
		}
	})
}
