package users

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// A cheap hash for tests (bcrypt.MinCost): the format is what matters here.
func testHash(t testing.TB, pw string) string {
	t.Helper()
	h, err := HashWithCost(pw, 4)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestRoundTripAndRules(t *testing.T) {
	h := testHash(t, "secret")
	list := []User{
		{Name: "zed@example.test", Hash: h},
		{Name: "branch", Hash: h, From: []string{"boss@branch.test", "@Branch2.TEST"}, ATRN: []string{"branch.test"}, Admin: true},
	}
	path := filepath.Join(t.TempDir(), "sub", "users")
	if err := Save(path, list); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("users file %v mode %v, want 0600", err, fi.Mode())
	}
	got, err := Load(path)
	if err != nil || len(got) != 2 || got[0].Name != "branch" || got[1].Name != "zed@example.test" {
		t.Fatalf("loaded %+v %v", got, err)
	}
	b := got[0]
	if !b.Admin || got[1].Admin {
		t.Errorf("admin flag not kept: %+v", got)
	}
	if _, err := Parse(strings.NewReader("x:" + h + ":admin=yes\n")); !errors.Is(err, ErrSyntax) {
		t.Errorf("admin=yes: %v, want a syntax error", err)
	}
	if !b.Check("secret") || b.Check("Secret") || b.Check("") {
		t.Error("password check wrong")
	}
	for addr, want := range map[string]bool{
		"boss@branch.test": true, "boss@BRANCH.TEST.": true, "Boss@branch.test": false,
		"anyone@branch2.test": true, "x@sub.branch2.test": false, "branch": false, "x@other.test": false,
	} {
		if b.MaySendAs(addr) != want {
			t.Errorf("branch MaySendAs(%q) = %v", addr, !want)
		}
	}
	if !got[1].MaySendAs("zed@EXAMPLE.test") || got[1].MaySendAs("zed2@example.test") {
		t.Error("a user named by an address may send as exactly that address")
	}
	if !b.MayDequeue("Branch.Test.") || b.MayDequeue("other.test") || got[1].MayDequeue("branch.test") {
		t.Error("MayDequeue wrong")
	}
}

func TestParseErrorsNameTheLine(t *testing.T) {
	h := testHash(t, "pw")
	tests := []string{
		"alice\n",
		"al ice:" + h + "\n",
		"alice:notahash\n",
		"alice:" + h + ":from=not an address\n",
		"alice:" + h + ":atrn=a@b\n",
		"alice:" + h + ":colour=blue\n",
		"alice:" + h + "\nalice:" + h + "\n",
	}
	for _, in := range tests {
		_, err := Parse(strings.NewReader("# header\n\n" + in))
		if !errors.Is(err, ErrSyntax) || !strings.Contains(err.Error(), "line ") {
			t.Errorf("%q: %v, want a syntax error naming the line", in, err)
		}
	}
}

func TestStoreReloadsOnChange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	s, err := NewStore(path)
	if err != nil || s.Len() != 0 {
		t.Fatalf("missing file: %v, %d users", err, s.Len())
	}
	if err := Save(path, []User{{Name: "a", Hash: testHash(t, "x")}}); err != nil {
		t.Fatal(err)
	}
	// The store looks at the file at most once a second.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, ok := s.Lookup("a"); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("new user not seen")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := os.WriteFile(path, []byte("broken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	if _, ok := s.Lookup("a"); !ok || s.Err() == nil {
		t.Errorf("a broken file must keep the last good list and report the error (err %v)", s.Err())
	}
}

func FuzzParse(f *testing.F) {
	h := "$2a$04$abcdefghijklmnopqrstuuJ2e1k0Q0xC9mS3cV8x8mZqz1nX0w5Cm"
	f.Add("alice:" + h + "\n")
	f.Add("b:" + h + ":from=a@b.c,@d.e:atrn=x.y\n# c\n")
	f.Add("root:" + h + ":admin\n")
	f.Add(":::\n\n")
	f.Fuzz(func(t *testing.T, in string) {
		list, err := Parse(strings.NewReader(in))
		if err != nil {
			return
		}
		again, err := Parse(strings.NewReader(string(Format(list))))
		if err != nil || len(again) != len(list) {
			t.Fatalf("formatted list does not parse back: %v", err)
		}
	})
}

// The decoy checked for unknown names has the cost of the file's hashes
// (the highest), so that it costs what a real check does, and matches no
// password.
func TestDecoy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	h5, err := HashWithCost("pw", 5)
	if err != nil {
		t.Fatal(err)
	}
	if err := Save(path, []User{{Name: "a", Hash: testHash(t, "pw")}, {Name: "b", Hash: h5}}); err != nil {
		t.Fatal(err)
	}
	s, err := NewStore(path)
	if err != nil {
		t.Fatal(err)
	}
	d := s.Decoy()
	if c, err := bcrypt.Cost([]byte(d.Hash)); err != nil || c != 5 {
		t.Errorf("decoy cost %d %v, want 5 (the file's highest)", c, err)
	}
	for _, pw := range []string{"pw", "", d.Hash} {
		if d.Check(pw) {
			t.Errorf("the decoy matches %q", pw)
		}
	}
	empty, err := NewStore(filepath.Join(t.TempDir(), "none"))
	if err != nil {
		t.Fatal(err)
	}
	if c, err := bcrypt.Cost([]byte(empty.Decoy().Hash)); err != nil || c != Cost {
		t.Errorf("decoy cost without users %d %v, want %d", c, err, Cost)
	}
}
