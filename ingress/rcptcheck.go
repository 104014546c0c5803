package ingress

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/metrics"
	"github.com/mailroot/mailroot/internal/users"
)

// Recipient validation (off by default: IIS accepted any local part of a
// local domain and wrote a Drop file for it). With ingress.recipients_file,
// ingress.recipients_users or a [[domain]]'s recipients_file, RCPT TO an
// address of a checked local domain that no list names gets
//
//	550 5.1.1 <addr>: Recipient address rejected: User unknown
//
// at RCPT time. The global file and recipients_users check every local
// domain; a domain's own file checks that domain. An address is valid
// when a list names it, or its domain as "@domain" (a catch-all), or an
// AUTH user is named by it (recipients_users); postmaster is always valid
// (RFC 5321 §4.5.1). An alias domain's address is checked after the
// rewrite to the default domain (config.Unalias, as the router applies
// it). Addresses compare without case.
//
// A recipients file is re-read when its size or modification time
// changes, checked at most once per RecipientsPoll; a file that does not
// parse keeps the last good list and the error (with its line number) is
// logged once. At start a file must parse.

// defaultRecipientsPoll is how often a recipients file is checked for
// changes, at most.
const defaultRecipientsPoll = 2 * time.Second

// rcptCheck is the recipient validation of the service; nil when off.
type rcptCheck struct {
	cfg     config.Config
	global  *rcptFile            // ingress.recipients_file
	domains map[string]*rcptFile // [[domain]] recipients_file, by domain
	users   *users.Store         // recipients_users
}

// newRcptCheck loads the recipients files of cfg; nil when recipient
// validation is off.
func newRcptCheck(cfg config.Config, store *users.Store, log *slog.Logger) (*rcptCheck, error) {
	rc := &rcptCheck{cfg: cfg, domains: map[string]*rcptFile{}}
	var err error
	if p := cfg.Ingress.RecipientsFile; p != "" {
		if rc.global, err = loadRcptFile(p, log); err != nil {
			return nil, fmt.Errorf("ingress.recipients_file: %w", err)
		}
	}
	for _, d := range cfg.Domains {
		if d.RecipientsFile == "" {
			continue
		}
		if rc.domains[d.Name], err = loadRcptFile(d.RecipientsFile, log); err != nil {
			return nil, fmt.Errorf("domain %s: recipients_file: %w", d.Name, err)
		}
	}
	if cfg.Ingress.RecipientsUsers {
		rc.users = store
	}
	if rc.global == nil && rc.users == nil && len(rc.domains) == 0 {
		return nil, nil
	}
	return rc, nil
}

// known reports whether addr (an alias domain's already rewritten) may
// receive mail: true for a domain that is not checked.
func (rc *rcptCheck) known(addr string, poll time.Duration) bool {
	local, dom, err := envelope.Split(addr)
	if err != nil {
		return false
	}
	domain := envelope.NormalizeDomain(dom)
	own := rc.domains[domain]
	if !rc.cfg.IsLocal(domain) || (own == nil && rc.global == nil && rc.users == nil) {
		return true
	}
	local = strings.ToLower(local)
	if local == "postmaster" {
		return true
	}
	key := local + "@" + domain
	for _, f := range []*rcptFile{own, rc.global} {
		if f != nil && f.has(key, "@"+domain, poll) {
			return true
		}
	}
	if rc.users != nil {
		for _, name := range []string{addr, key} {
			if _, ok := rc.users.Lookup(name); ok {
				return true
			}
		}
	}
	return false
}

// checkRcpt refuses a recipient no list names (the address as the
// client gave it in the reply, the rewritten one checked).
func (ss *session) checkRcpt(addr, given string) *reply {
	rc := ss.s.rcpts.Load()
	if rc == nil || rc.known(addr, ss.s.RecipientsPoll) {
		return nil
	}
	ss.log.Info("unknown recipient refused", "rcpt", given)
	ss.site.m.Refused(metrics.RefusedUnknownRcpt)
	return rep(550, "5.1.1", "<"+given+">: Recipient address rejected: User unknown")
}

// rcptFile is one recipients file, kept in memory and re-read when it
// changes on disk.
type rcptFile struct {
	path string
	log  *slog.Logger

	mu      sync.Mutex
	set     map[string]bool
	mod     time.Time
	size    int64
	checked time.Time
	bad     string // the modification of the file last refused ("" none)
}

func loadRcptFile(path string, log *slog.Logger) (*rcptFile, error) {
	f := &rcptFile{path: path, log: log}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if f.set, err = readRecipients(path); err != nil {
		return nil, err
	}
	f.mod, f.size, f.checked = fi.ModTime(), fi.Size(), time.Now()
	return f, nil
}

// has reports whether the file names addr or its catch-all, after
// re-reading the file if it changed and poll has passed since the last
// look.
func (f *rcptFile) has(addr, catchAll string, poll time.Duration) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reload(time.Now(), poll)
	return f.set[addr] || f.set[catchAll]
}

func (f *rcptFile) reload(now time.Time, poll time.Duration) {
	if poll <= 0 {
		poll = defaultRecipientsPoll
	}
	if now.Sub(f.checked) < poll {
		return
	}
	f.checked = now
	fi, err := os.Stat(f.path)
	if err != nil {
		if f.bad != "missing" {
			f.log.Error("recipients file unreadable, keeping the last good list", "file", f.path, "err", err)
			f.bad = "missing"
		}
		return
	}
	if fi.ModTime().Equal(f.mod) && fi.Size() == f.size {
		return
	}
	stamp := fmt.Sprintf("%d/%d", fi.ModTime().UnixNano(), fi.Size())
	set, err := readRecipients(f.path)
	if err != nil {
		if f.bad != stamp {
			f.log.Error("recipients file refused, keeping the last good list", "file", f.path, "err", err)
			f.bad = stamp
		}
		return
	}
	f.set, f.mod, f.size, f.bad = set, fi.ModTime(), fi.Size(), ""
	f.log.Info("recipients file reloaded", "file", f.path, "entries", len(set))
}

func readRecipients(path string) (map[string]bool, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	set, err := parseRecipients(fh)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return set, nil
}

// errRecipients is wrapped by every parse error of a recipients file.
var errRecipients = errors.New("bad recipients file")

// maxRecipientsLine is the longest line of a recipients file.
const maxRecipientsLine = 4096

// parseRecipients reads a recipients file: one address (local@domain) or
// catch-all (@domain) a line; blank lines, and from a "#" at the start of
// a line or after a space to its end, are comments. It returns the set of
// entries, lower case with normalised domains; an error names the line.
func parseRecipients(r io.Reader) (map[string]bool, error) {
	set := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1024), maxRecipientsLine)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if i := commentStart(line); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if !utf8.ValidString(line) {
			return nil, fmt.Errorf("%w: line %d: not UTF-8", errRecipients, n)
		}
		if strings.ContainsAny(line, " \t") {
			return nil, fmt.Errorf("%w: line %d: one address a line, not %q", errRecipients, n, line)
		}
		if dom, ok := strings.CutPrefix(line, "@"); ok {
			if envelope.CheckDomain(dom) != nil || strings.HasSuffix(dom, ".") {
				return nil, fmt.Errorf("%w: line %d: %q is not @domain", errRecipients, n, line)
			}
			set["@"+envelope.NormalizeDomain(dom)] = true
			continue
		}
		local, dom, _ := envelope.Split(line)
		if !validPath(line) || dom == "" || (!strings.HasPrefix(local, `"`) && strings.Contains(local, "@")) {
			return nil, fmt.Errorf("%w: line %d: %q is not an address", errRecipients, n, line)
		}
		set[strings.ToLower(local)+"@"+envelope.NormalizeDomain(dom)] = true
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: line %d: %v", errRecipients, n+1, err)
	}
	return set, nil
}

// commentStart is where the comment of line starts, -1 if it has none: a
// "#" first or after white space (a local part may hold a "#").
func commentStart(line string) int {
	for i := 0; i < len(line); i++ {
		if line[i] == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t') {
			return i
		}
	}
	return -1
}
