// Package users reads and writes Mailroot's SMTP AUTH users file and checks
// passwords against its bcrypt hashes. Ingress authenticates AUTH PLAIN and
// LOGIN against it (RFC 4954) and reloads it when it changes; `mailroot user
// add|passwd|del|list` and the admin console edit it, with Edit (a lock, then
// an atomic write).
//
// The file has one user per line, htpasswd style, with optional fields:
//
//	# comment
//	name:$2a$10$…                                  (bcrypt hash)
//	name:$2a$10$…:from=me@example.test,@example.test:atrn=dialup.example
//	name:$2a$10$…:admin                            (may log in to the admin console)
//
// from= lists the addresses and @domains the user may use in MAIL FROM when
// a site has sender_login_match on (the name itself counts when it is an
// address); atrn= lists the domains whose held mail the user may dequeue
// with ATRN; admin marks a user who may log in to the admin console
// (internal/admin).
package users

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/mailroot/mailroot/internal/atomicfile"
	"github.com/mailroot/mailroot/internal/envelope"
)

// ErrSyntax is wrapped by every parse error.
var ErrSyntax = errors.New("users: syntax error")

// Cost is the bcrypt cost of new hashes.
const Cost = bcrypt.DefaultCost

// User is one line of the users file.
type User struct {
	// Name is what the client gives as the AUTH user name.
	Name string
	// Hash is the bcrypt hash of the password.
	Hash string
	// From are extra addresses ("a@example.test") and domains
	// ("@example.test") the user may send as.
	From []string
	// ATRN are the domains the user may dequeue with ATRN.
	ATRN []string
	// Admin: the user may log in to the admin console.
	Admin bool
}

// ValidName reports whether name can be a user name: 1 to 255 printable
// characters without ':', spaces or control characters.
func ValidName(name string) bool {
	if name == "" || len(name) > 255 {
		return false
	}
	for _, r := range name {
		if r <= ' ' || r == ':' || r == 0x7f {
			return false
		}
	}
	return true
}

// Parse reads a users file. Errors wrap ErrSyntax and name the line.
func Parse(r io.Reader) ([]User, error) {
	var out []User
	seen := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Split(line, ":")
		if len(fields) < 2 {
			return nil, fmt.Errorf("%w: line %d: want name:hash", ErrSyntax, n)
		}
		u := User{Name: fields[0], Hash: fields[1]}
		for _, f := range fields[2:] {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "admin":
				if v != "" {
					return nil, fmt.Errorf("%w: line %d: admin takes no value", ErrSyntax, n)
				}
				u.Admin = true
			case "from":
				u.From = append(u.From, SplitList(v)...)
			case "atrn":
				u.ATRN = append(u.ATRN, SplitList(v)...)
			default:
				return nil, fmt.Errorf("%w: line %d: unknown field %q", ErrSyntax, n, k)
			}
		}
		if err := u.Validate(); err != nil {
			return nil, fmt.Errorf("%w: line %d: %v", ErrSyntax, n, err)
		}
		if seen[u.Name] {
			return nil, fmt.Errorf("%w: line %d: %s is listed twice", ErrSyntax, n, u.Name)
		}
		seen[u.Name] = true
		out = append(out, u)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("users: read: %w", err)
	}
	return out, nil
}

// SplitList splits a comma-separated list, trimming spaces and dropping
// empty entries (the from= and atrn= lists).
func SplitList(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func validFrom(a string) bool {
	if strings.ContainsAny(a, ":, \t") {
		return false
	}
	if d, ok := strings.CutPrefix(a, "@"); ok {
		return d != "" && !strings.Contains(d, "@")
	}
	return envelope.CheckAddress(a) == nil
}

// Format renders users as a users file, in name order.
func Format(list []User) []byte {
	sorted := append([]User(nil), list...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	var b bytes.Buffer
	b.WriteString("# Mailroot SMTP AUTH users (mailroot user add|passwd|del|list): name:bcrypt-hash[:from=addr,@domain][:atrn=domain,…][:admin]\n")
	for _, u := range sorted {
		b.WriteString(u.Name + ":" + u.Hash)
		if len(u.From) > 0 {
			b.WriteString(":from=" + strings.Join(u.From, ","))
		}
		if len(u.ATRN) > 0 {
			b.WriteString(":atrn=" + strings.Join(u.ATRN, ","))
		}
		if u.Admin {
			b.WriteString(":admin")
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// Load reads the users file at path; a missing file has no users.
func Load(path string) ([]User, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("users: %w", err)
	}
	defer f.Close()
	list, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return list, nil
}

// Save writes the users file atomically (temp file, fsync, rename), mode 0600.
func Save(path string, list []User) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("users: %w", err)
	}
	if err := atomicfile.WriteBytes(path, Format(list), 0o600); err != nil {
		return fmt.Errorf("users: save %s: %w", path, err)
	}
	return nil
}

// Hash returns the bcrypt hash of password at Cost.
func Hash(password string) (string, error) { return HashWithCost(password, Cost) }

// HashWithCost is Hash with a given bcrypt cost (tests use bcrypt.MinCost).
func HashWithCost(password string, cost int) (string, error) {
	if len(password) == 0 {
		return "", errors.New("users: empty password")
	}
	if len(password) > 72 {
		return "", errors.New("users: password longer than 72 bytes (bcrypt's limit)")
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	if err != nil {
		return "", fmt.Errorf("users: hash: %w", err)
	}
	return string(h), nil
}

// Check reports whether password is the user's.
func (u User) Check(password string) bool {
	return bcrypt.CompareHashAndPassword([]byte(u.Hash), []byte(password)) == nil
}

// MaySendAs reports whether the user may use addr as MAIL FROM: its own
// name when that is an address, an address listed in from=, or an address
// in a domain listed as @domain. Domains compare case-insensitively, local
// parts exactly.
func (u User) MaySendAs(addr string) bool {
	local, domain, err := envelope.Split(addr)
	if err != nil || domain == "" {
		return false
	}
	domain = envelope.NormalizeDomain(domain)
	same := func(a string) bool {
		l, d, err := envelope.Split(a)
		return err == nil && d != "" && l == local && envelope.NormalizeDomain(d) == domain
	}
	if same(u.Name) {
		return true
	}
	for _, f := range u.From {
		if d, ok := strings.CutPrefix(f, "@"); ok {
			if envelope.NormalizeDomain(d) == domain {
				return true
			}
		} else if same(f) {
			return true
		}
	}
	return false
}

// MayDequeue reports whether the user may dequeue domain with ATRN.
func (u User) MayDequeue(domain string) bool {
	d := envelope.NormalizeDomain(domain)
	for _, a := range u.ATRN {
		if envelope.NormalizeDomain(a) == d {
			return true
		}
	}
	return false
}

// Store is a users file kept in memory and reloaded when it changes on
// disk (checked at most once a second).
type Store struct {
	path string

	mu      sync.Mutex
	users   map[string]User
	decoy   User
	mod     time.Time
	size    int64
	checked time.Time
	err     error
}

// NewStore loads the users file at path (a missing file is an empty store).
func NewStore(path string) (*Store, error) {
	s := &Store{path: path}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reload(time.Now(), true)
	return s, s.err
}

// reload re-reads the file if its size or modification time changed.
func (s *Store) reload(now time.Time, force bool) {
	if !force && now.Sub(s.checked) < time.Second {
		return
	}
	s.checked = now
	fi, err := os.Stat(s.path)
	var mod time.Time
	var size int64 = -1
	if err == nil {
		mod, size = fi.ModTime(), fi.Size()
	}
	if !force && mod.Equal(s.mod) && size == s.size {
		return
	}
	list, err := Load(s.path)
	if err != nil {
		// Keep the last good list; report the error once.
		s.err = err
		return
	}
	s.err = nil
	s.mod, s.size = mod, size
	s.users = make(map[string]User, len(list))
	cost := 0
	for _, u := range list {
		s.users[u.Name] = u
		if c, err := bcrypt.Cost([]byte(u.Hash)); err == nil && c > cost {
			cost = c
		}
	}
	if cost == 0 {
		cost = Cost
	}
	s.decoy = User{Hash: decoyHash(cost)}
}

// Decoy returns a user that no password matches, whose hash has the
// bcrypt cost of the file's hashes (the highest of them). Checking a
// password against it costs what checking a real user's does: a login
// for an unknown name checks the decoy, so that its failure takes as long
// as a wrong password and does not tell which names exist.
func (s *Store) Decoy() User {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reload(time.Now(), false)
	return s.decoy
}

// decoyHashes holds one decoy hash per bcrypt cost, made once.
var decoyHashes sync.Map // int -> string

// decoyHash returns the hash, at cost, of a random password never told.
func decoyHash(cost int) string {
	if h, ok := decoyHashes.Load(cost); ok {
		return h.(string)
	}
	pw := make([]byte, 32)
	_, _ = rand.Read(pw)
	h, err := bcrypt.GenerateFromPassword([]byte(hex.EncodeToString(pw)), cost)
	if err != nil {
		panic("users: decoy hash: " + err.Error()) // only for a cost bcrypt.Cost accepted
	}
	v, _ := decoyHashes.LoadOrStore(cost, string(h))
	return v.(string)
}

// Lookup returns the user called name.
func (s *Store) Lookup(name string) (User, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reload(time.Now(), false)
	u, ok := s.users[name]
	return u, ok
}

// Err is the last reload error (nil when the file on disk is in use).
func (s *Store) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Len is the number of users.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reload(time.Now(), false)
	return len(s.users)
}
