package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mailroot/mailroot/internal/users"
)

// mailroot user add|passwd|del|list edit the users file.
func TestUserCommand(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("MAILROOT_CONFIG", "")
	run := func(stdin string, args ...string) (int, string) {
		var out, errb bytes.Buffer
		code := userCommand(append(args, "-data", dir), strings.NewReader(stdin), &out, &errb)
		return code, out.String() + errb.String()
	}
	if code, out := run("password-one\n", "add", "alice@example.test", "-from", "@example.test", "-atrn", "dialup.test", "-password-stdin"); code != 0 {
		t.Fatalf("add: %d %s", code, out)
	}
	if code, _ := run("pw\n", "add", "alice@example.test"); code != 1 {
		t.Error("adding an existing user must fail")
	}
	if code, _ := run("pw\n", "add", "bad name"); code != 2 {
		t.Error("a name with a space must be refused")
	}
	if code, out := run("", "add", "bob"); code != 1 || !strings.Contains(out, "empty password") {
		t.Errorf("empty password: %d %s", code, out)
	}
	if code, out := run("short\n", "add", "bob"); code != 1 || !strings.Contains(out, "shorter than 8 characters") {
		t.Errorf("short password: %d %s", code, out)
	}
	if code, out := run("long enough\n", "add", "bob", "-from", "not an address"); code != 1 || !strings.Contains(out, `from="not an address"`) {
		t.Errorf("bad -from: %d %s", code, out)
	}
	path := filepath.Join(dir, "users")
	list, err := users.Load(path)
	if err != nil || len(list) != 1 || !list[0].Check("password-one") || list[0].From[0] != "@example.test" || list[0].ATRN[0] != "dialup.test" {
		t.Fatalf("users file: %+v %v", list, err)
	}
	if code, out := run("password-two\n", "passwd", "alice@example.test"); code != 0 {
		t.Fatalf("passwd: %s", out)
	}
	list, _ = users.Load(path)
	if !list[0].Check("password-two") || list[0].Check("password-one") || len(list[0].From) != 1 {
		t.Error("passwd did not change only the password")
	}
	if code, out := run("", "list"); code != 0 || !strings.Contains(out, "alice@example.test  @example.test  dialup.test  -") {
		t.Errorf("list: %q", out)
	}
	// -admin on passwd marks the user; passwd without it keeps the mark.
	for _, args := range [][]string{{"passwd", "alice@example.test", "-admin"}, {"passwd", "alice@example.test"}} {
		if code, out := run("password-two\n", args...); code != 0 {
			t.Fatalf("%v: %s", args, out)
		}
		if list, _ = users.Load(path); !list[0].Admin {
			t.Fatalf("after %v: not an admin: %+v", args, list[0])
		}
	}
	if code, out := run("rootpassword\n", "add", "root", "-admin"); code != 0 {
		t.Fatalf("add -admin: %s", out)
	}
	if code, out := run("", "list"); code != 0 || !slices.ContainsFunc(strings.Split(out, "\n"), func(l string) bool {
		f := strings.Fields(l)
		return len(f) == 4 && f[0] == "root" && f[3] == "yes"
	}) {
		t.Errorf("list does not show root as an admin: %q", out)
	}
	if code, _ := run("", "del", "root"); code != 0 {
		t.Error("del root")
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("users file mode %v", fi.Mode())
	}
	if code, _ := run("", "del", "alice@example.test"); code != 0 {
		t.Error("del")
	}
	if code, _ := run("", "del", "alice@example.test"); code != 1 {
		t.Error("deleting a missing user must fail")
	}
	if list, _ := users.Load(path); len(list) != 0 {
		t.Errorf("left %+v", list)
	}
}
