package users

// Editing the users file: `mailroot user add|passwd|del` and the admin
// console's users page make their changes with Edit and the changes
// below, one code for both.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/mailroot/mailroot/internal/envelope"
)

// MinPasswordLength is the shortest new password accepted.
const MinPasswordLength = 8

// ErrExists and ErrNoUser are wrapped by the edits' errors for a name
// that is taken (Add) or missing (Update, Delete).
var (
	ErrExists = errors.New("user exists")
	ErrNoUser = errors.New("no such user")
)

// CheckPassword says why password cannot be a new password: shorter
// than MinPasswordLength, or longer than bcrypt's 72 bytes.
func CheckPassword(password string) error {
	switch {
	case password == "":
		return errors.New("empty password")
	case len([]rune(password)) < MinPasswordLength:
		return fmt.Errorf("the password is shorter than %d characters", MinPasswordLength)
	case len(password) > 72:
		return errors.New("the password is longer than 72 bytes (bcrypt's limit)")
	}
	return nil
}

// NewHash checks password (CheckPassword) and returns its bcrypt hash.
func NewHash(password string) (string, error) {
	if err := CheckPassword(password); err != nil {
		return "", err
	}
	return Hash(password)
}

// Validate says what is wrong with u as a line of the users file: its
// name, hash, from= or atrn= entries (naming the entry).
func (u User) Validate() error {
	if !ValidName(u.Name) {
		return fmt.Errorf("%q is not a valid user name (1 to 255 characters, no spaces, colons or control characters)", u.Name)
	}
	if _, err := bcrypt.Cost([]byte(u.Hash)); err != nil {
		return fmt.Errorf("%s: not a bcrypt hash", u.Name)
	}
	for _, a := range u.From {
		if !validFrom(a) {
			return fmt.Errorf("%s: from=%q is not an address or @domain", u.Name, a)
		}
	}
	for _, d := range u.ATRN {
		if envelope.NormalizeDomain(d) == "" || strings.ContainsAny(d, "@ ,:\t") {
			return fmt.Errorf("%s: atrn=%q is not a domain", u.Name, d)
		}
	}
	return nil
}

// A Change edits the list of users read from the file (Edit).
type Change func([]User) ([]User, error)

// Add is the Change adding u; its name must be free.
func Add(u User) Change {
	return func(list []User) ([]User, error) {
		if slices.ContainsFunc(list, func(x User) bool { return x.Name == u.Name }) {
			return nil, fmt.Errorf("%w: %s", ErrExists, u.Name)
		}
		return append(list, u), nil
	}
}

// Update is the Change calling f on the user called name.
func Update(name string, f func(*User) error) Change {
	return func(list []User) ([]User, error) {
		i := slices.IndexFunc(list, func(x User) bool { return x.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("%w: %s", ErrNoUser, name)
		}
		if err := f(&list[i]); err != nil {
			return nil, err
		}
		return list, nil
	}
}

// Delete is the Change removing the user called name.
func Delete(name string) Change {
	return func(list []User) ([]User, error) {
		i := slices.IndexFunc(list, func(x User) bool { return x.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("%w: %s", ErrNoUser, name)
		}
		return slices.Delete(list, i, i+1), nil
	}
}

// LockWait is how long Edit waits for another edit's lock.
const LockWait = 10 * time.Second

// Edit changes the users file at path: it takes an exclusive lock
// (flock on path + ".lock", waiting up to LockWait), reads the file,
// applies change, checks every user of the result (Validate) and writes
// it atomically (Save: temp file, fsync, rename), then lets the lock go.
// Two editors at once (the CLI and the console, two consoles) take turns,
// each reading what the other wrote: neither loses the other's change. A
// failed change or check leaves the file as it was.
func Edit(path string, change Change) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("users: %w", err)
	}
	unlock, err := lockFile(path+".lock", LockWait)
	if err != nil {
		return fmt.Errorf("users: lock %s: %w", path, err)
	}
	defer unlock()
	list, err := Load(path)
	if err != nil {
		return err
	}
	if list, err = change(list); err != nil {
		return err
	}
	for _, u := range list {
		if err := u.Validate(); err != nil {
			return err
		}
	}
	return Save(path, list)
}

// Path is the users file of the store.
func (s *Store) Path() string { return s.path }

// Edit is Edit on the store's file, then reloads it at once: the change
// is in force for the next Lookup, without the once-a-second check.
func (s *Store) Edit(change Change) error {
	err := Edit(s.path, change)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reload(time.Now(), true)
	if err != nil {
		return err
	}
	return s.err
}

// List returns the users in name order.
func (s *Store) List() []User {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reload(time.Now(), false)
	out := make([]User, 0, len(s.users))
	for _, u := range s.users {
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b User) int { return strings.Compare(a.Name, b.Name) })
	return out
}
