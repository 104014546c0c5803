package users

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Edits at once (the CLI and the console) take turns under the lock:
// none is lost, though each reads the file, changes it and writes it back.
func TestEditConcurrentNoneLost(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	h := testHash(t, "password")
	const n = 24
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- Edit(path, Add(User{Name: fmt.Sprintf("u%02d", i), Hash: h}))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	list, err := Load(path)
	if err != nil || len(list) != n {
		t.Fatalf("%d users after %d concurrent adds (%v)", len(list), n, err)
	}
}

func TestEditChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	s, err := NewStore(path)
	if err != nil {
		t.Fatal(err)
	}
	h := testHash(t, "password")
	if err := s.Edit(Add(User{Name: "alice", Hash: h, ATRN: []string{"dialup.test"}})); err != nil {
		t.Fatal(err)
	}
	// In force at once, without the store's once-a-second check.
	if u, ok := s.Lookup("alice"); !ok || !u.Check("password") || u.ATRN[0] != "dialup.test" {
		t.Fatalf("after add: %+v %v", u, ok)
	}
	if err := s.Edit(Add(User{Name: "alice", Hash: h})); !errors.Is(err, ErrExists) {
		t.Errorf("adding alice twice: %v, want ErrExists", err)
	}
	if err := s.Edit(Update("nobody", func(*User) error { return nil })); !errors.Is(err, ErrNoUser) {
		t.Errorf("updating a missing user: %v, want ErrNoUser", err)
	}
	if err := s.Edit(Delete("nobody")); !errors.Is(err, ErrNoUser) {
		t.Errorf("deleting a missing user: %v, want ErrNoUser", err)
	}
	// A change that does not validate leaves the file alone, naming the entry.
	for _, tc := range []struct {
		f    func(*User)
		want string
	}{
		{func(u *User) { u.From = []string{"not an address"} }, `from="not an address"`},
		{func(u *User) { u.ATRN = []string{"a@b"} }, `atrn="a@b"`},
		{func(u *User) { u.Hash = "plain" }, "not a bcrypt hash"},
	} {
		err := s.Edit(Update("alice", func(u *User) error { tc.f(u); return nil }))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("bad change: %v, want %q", err, tc.want)
		}
	}
	if u, _ := s.Lookup("alice"); len(u.From) != 0 || u.ATRN[0] != "dialup.test" || !u.Check("password") {
		t.Errorf("a refused change was saved: %+v", u)
	}
	if err := s.Edit(Delete("alice")); err != nil || s.Len() != 0 {
		t.Errorf("delete: %v, %d users left", err, s.Len())
	}
}

func TestCheckPassword(t *testing.T) {
	for pw, want := range map[string]string{"": "empty", "short": "shorter than 8", "ünïcödé": "shorter than 8",
		strings.Repeat("x", 73): "72 bytes", "eight ch": "", "ünïcödé!": ""} {
		err := CheckPassword(pw)
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("CheckPassword(%q) = %v, want %q", pw, err, want)
		}
	}
}
