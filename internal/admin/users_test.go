package admin

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/testutil"
	"github.com/mailroot/mailroot/internal/users"
)

// act posts form to path with the CSRF token of page and returns the
// message its redirect carries to the next page.
func act(t *testing.T, c *http.Client, base, page, path string, form url.Values) string {
	t.Helper()
	_, _, tok := get(t, c, base, page)
	if tok == "" {
		t.Fatalf("%s has no CSRF token", page)
	}
	form.Set("csrf", tok)
	resp, err := c.PostForm(base+path, form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("POST %s %v: %d, want a redirect", path, form, resp.StatusCode)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || loc.Path != page {
		t.Fatalf("POST %s redirects to %q (%v), want %s", path, resp.Header.Get("Location"), err, page)
	}
	return loc.Query().Get("msg")
}

func loggedIn(t *testing.T, base, user, pw string) (*http.Client, bool) {
	t.Helper()
	c := newClient(t)
	code, _ := logIn(t, c, base, user, pw)
	return c, code == http.StatusSeeOther
}

// The users page adds an admin who can then log in, changes their
// password, deletes them (ending their login); the hashes never show;
// every change is an admin event naming the admin.
func TestUsersPage(t *testing.T) {
	srv, hs := startConsole(t, "")
	root, ok := loggedIn(t, hs.URL, "root", "rootpw")
	if !ok {
		t.Fatal("root cannot log in")
	}
	code, body, _ := get(t, root, hs.URL, "/users")
	if code != 200 || !strings.Contains(body, `id="user-root"`) || !strings.Contains(body, `id="user-bob"`) {
		t.Fatalf("users page: %d %s", code, body)
	}
	if strings.Contains(body, "$2a$") {
		t.Fatal("the users page shows a password hash")
	}

	add := url.Values{"name": {"carol"}, "password": {"carol-secret"}, "admin": {"on"}, "atrn": {"dialup.test, other.test"}, "from": {"@example.test"}}
	if msg := act(t, root, hs.URL, "/users", "/users/add", add); msg != "User carol added." {
		t.Fatalf("add: %q", msg)
	}
	list, err := users.Load(srv.opt.Users.Path())
	if err != nil || len(list) != 3 {
		t.Fatalf("users file after the add: %+v %v", list, err)
	}
	if u := list[1]; u.Name != "carol" || !u.Admin || strings.Join(u.ATRN, ",") != "dialup.test,other.test" || u.From[0] != "@example.test" || !u.Check("carol-secret") {
		t.Fatalf("carol as saved: %+v", u)
	}
	carol, ok := loggedIn(t, hs.URL, "carol", "carol-secret")
	if !ok {
		t.Fatal("the new admin cannot log in")
	}
	if _, body, _ := get(t, root, hs.URL, "/users"); !strings.Contains(body, "dialup.test, other.test") {
		t.Error("the page does not show carol's ATRN domains")
	}

	// Refusals, each naming what is wrong and leaving the file alone.
	for _, tc := range []struct {
		path string
		form url.Values
		want string
	}{
		{"/users/add", url.Values{"name": {"dave"}, "password": {"short"}}, "shorter than 8 characters"},
		{"/users/add", url.Values{"name": {"bad name"}, "password": {"long enough"}}, `"bad name" is not a valid user name`},
		{"/users/add", url.Values{"name": {"carol"}, "password": {"long enough"}}, "user exists: carol"},
		{"/users/add", url.Values{"name": {"dave"}, "password": {"long enough"}, "from": {"not-an-address"}}, `from="not-an-address" is not an address`},
		{"/users/edit", url.Values{"name": {"carol"}, "admin": {"on"}, "atrn": {"a@b"}}, `atrn="a@b" is not a domain`},
		{"/users/passwd", url.Values{"name": {"nobody"}, "password": {"long enough"}}, "no such user: nobody"},
		{"/users/delete", url.Values{"name": {"root"}}, "you cannot delete your own account"},
		{"/users/edit", url.Values{"name": {"root"}}, "you cannot take the admin flag from your own account"},
	} {
		if msg := act(t, root, hs.URL, "/users", tc.path, tc.form); !strings.Contains(msg, tc.want) {
			t.Errorf("%s %v: %q, want %q", tc.path, tc.form, msg, tc.want)
		}
	}
	if after, _ := users.Load(srv.opt.Users.Path()); len(after) != 3 || !after[2].Admin || after[2].Name != "root" || len(after[1].ATRN) != 2 {
		t.Fatalf("a refused change was saved: %+v", after)
	}

	// A form without the CSRF token is refused.
	if code, _ := post(t, root, hs.URL, "/users/add", url.Values{"name": {"eve"}, "password": {"eve-password"}}); code != http.StatusForbidden {
		t.Errorf("add without the CSRF token: %d, want 403", code)
	}
	if code, _ := post(t, root, hs.URL, "/users/delete", url.Values{"name": {"carol"}}); code != http.StatusForbidden {
		t.Errorf("delete without the CSRF token: %d, want 403", code)
	}
	if _, ok := srv.opt.Users.Lookup("eve"); ok {
		t.Fatal("a form without its token added a user")
	}

	// Change carol's password: the old one no longer logs in.
	if msg := act(t, root, hs.URL, "/users", "/users/passwd", url.Values{"name": {"carol"}, "password": {"carol-new-secret"}}); msg != "The password of carol changed." {
		t.Fatalf("passwd: %q", msg)
	}
	if _, ok := loggedIn(t, hs.URL, "carol", "carol-secret"); ok {
		t.Error("the old password still logs in")
	}
	if _, ok := loggedIn(t, hs.URL, "carol", "carol-new-secret"); !ok {
		t.Error("the new password does not log in")
	}
	// Edit: bob becomes an admin with allowed senders.
	if msg := act(t, root, hs.URL, "/users", "/users/edit", url.Values{"name": {"bob"}, "admin": {"on"}, "from": {"bob@example.test"}}); msg != "User bob changed." {
		t.Fatalf("edit: %q", msg)
	}
	if u, _ := srv.opt.Users.Lookup("bob"); !u.Admin || len(u.From) != 1 || !u.Check("bobpw") {
		t.Errorf("bob after the edit: %+v", u)
	}

	// Delete carol: her login ends, and she cannot log in again.
	if msg := act(t, root, hs.URL, "/users", "/users/delete", url.Values{"name": {"carol"}}); msg != "User carol deleted." {
		t.Fatalf("delete: %q", msg)
	}
	if code, _, _ := get(t, carol, hs.URL, "/"); code != http.StatusSeeOther {
		t.Errorf("the deleted admin's login still works: %d", code)
	}
	if _, ok := srv.opt.Users.Lookup("carol"); ok {
		t.Error("carol is still in the store")
	}

	var got []string
	if err := bus.ReadEvents(testutil.Context(t), srv.opt.JS, bus.EventFilter{Type: bus.EventAdmin}, false, func(e bus.Event) error {
		got = append(got, e.Admin+": "+e.Reason)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{"root (admin console): added user carol (admin)", "root (admin console): changed the password of carol",
		"root (admin console): changed user bob: admin true, from=bob@example.test, atrn=", "root (admin console): deleted user carol"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("admin events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// A login lasts only while the users file keeps its user an admin with
// the same password: a change made on the file, as `mailroot user` makes
// it, ends it at the next request; an admin's own password change on the
// page ends their other logins, not this one.
func TestLoginFollowsTheUsersFile(t *testing.T) {
	srv, hs := startConsole(t, "")
	path := srv.opt.Users.Path()
	hash, err := users.HashWithCost("dave-secret", bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	if err := users.Edit(path, users.Add(users.User{Name: "dave", Hash: hash, Admin: true})); err != nil {
		t.Fatal(err)
	}
	// (Polled on the store, not by logging in: failed logins are rate-limited.)
	testutil.WaitFor(t, 10*time.Second, "the store sees dave", func() bool { _, ok := srv.opt.Users.Lookup("dave"); return ok })
	dave, ok := loggedIn(t, hs.URL, "dave", "dave-secret")
	if !ok {
		t.Fatal("dave, added to the file, cannot log in")
	}
	// Taken the admin flag on the file: the login ends.
	if err := users.Edit(path, users.Update("dave", func(u *users.User) error { u.Admin = false; return nil })); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "dave's login ended", func() bool {
		code, _, _ := get(t, dave, hs.URL, "/")
		return code == http.StatusSeeOther
	})

	// root changes their own password with two logins open.
	root, ok := loggedIn(t, hs.URL, "root", "rootpw")
	other, ok2 := loggedIn(t, hs.URL, "root", "rootpw")
	if !ok || !ok2 {
		t.Fatal("root cannot log in")
	}
	if msg := act(t, root, hs.URL, "/users", "/users/passwd", url.Values{"name": {"root"}, "password": {"root-new-secret"}}); msg != "The password of root changed." {
		t.Fatalf("passwd: %q", msg)
	}
	if code, _, _ := get(t, root, hs.URL, "/users"); code != http.StatusOK {
		t.Errorf("the login that changed its password: %d, want 200", code)
	}
	if code, _, _ := get(t, other, hs.URL, "/users"); code != http.StatusSeeOther {
		t.Errorf("root's other login after the password change: %d, want a redirect to the login page", code)
	}
}
