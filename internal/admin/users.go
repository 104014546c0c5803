package admin

// The users page: the users file's accounts (never their hashes), and
// forms to add a user, change a password, edit the admin flag, ATRN
// domains and allowed senders, and delete a user. Every change is
// users.Store.Edit with the Changes of `mailroot user` (internal/users:
// a lock, then an atomic write; ingress and the console see it at once
// or within a second), followed by an admin event naming the admin.

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/mailroot/mailroot/internal/users"
)

// UserRow is one account of the users page.
type UserRow struct {
	Name  string
	Admin bool
	ATRN  []string
	From  []string
	// Self: the logged-in admin.
	Self bool
}

func (s *Server) usersPage(w http.ResponseWriter, r *http.Request, l *login) {
	var rows []UserRow
	for _, u := range s.opt.Users.List() {
		rows = append(rows, UserRow{Name: u.Name, Admin: u.Admin, ATRN: u.ATRN, From: u.From, Self: u.Name == l.user})
	}
	var unreadable string
	if err := s.opt.Users.Err(); err != nil {
		unreadable = err.Error()
	}
	s.render(w, http.StatusOK, "users", l, map[string]any{"Users": rows, "Path": s.opt.Users.Path(),
		"MinPassword": users.MinPasswordLength, "Unreadable": unreadable, "Msg": r.URL.Query().Get("msg")})
}

// userName is the form's user name, checked.
func userName(r *http.Request) (string, error) {
	name := strings.TrimSpace(r.PostFormValue("name"))
	if !users.ValidName(name) {
		return "", fmt.Errorf("%q is not a valid user name (1 to 255 characters, no spaces, colons or control characters)", name)
	}
	return name, nil
}

// editUsers makes change in the users file and records what as the
// admin's event; the page says done, or why the file was left alone.
func (s *Server) editUsers(ctx context.Context, l *login, change users.Change, what, done string) (string, error) {
	if err := s.opt.Users.Edit(change); err != nil {
		return "", fmt.Errorf("%s refused: %w", what, err)
	}
	return s.recorded(ctx, l, "", what, done), nil
}

// nameAndHash are the form's user name and the hash of its new
// password, checked (refused says what was not done).
func nameAndHash(r *http.Request, refused string) (string, string, error) {
	name, err := userName(r)
	if err != nil {
		return "", "", err
	}
	hash, err := users.NewHash(r.PostFormValue("password"))
	if err != nil {
		return "", "", fmt.Errorf(refused+": %w", name, err)
	}
	return name, hash, nil
}

func (s *Server) userAdd(w http.ResponseWriter, r *http.Request, l *login) {
	s.action(w, r, l, "/users", func(ctx context.Context) (string, error) {
		name, hash, err := nameAndHash(r, "user %s not added")
		if err != nil {
			return "", err
		}
		u := users.User{Name: name, Hash: hash, Admin: r.PostFormValue("admin") == "on",
			From: users.SplitList(r.PostFormValue("from")), ATRN: users.SplitList(r.PostFormValue("atrn"))}
		what := "added user " + name + map[bool]string{true: " (admin)"}[u.Admin]
		return s.editUsers(ctx, l, users.Add(u), what, "User "+name+" added.")
	})
}

func (s *Server) userPasswd(w http.ResponseWriter, r *http.Request, l *login) {
	s.action(w, r, l, "/users", func(ctx context.Context) (string, error) {
		name, hash, err := nameAndHash(r, "the password of %s not changed")
		if err != nil {
			return "", err
		}
		done, err := s.editUsers(ctx, l, users.Update(name, func(u *users.User) error { u.Hash = hash; return nil }),
			"changed the password of "+name, "The password of "+name+" changed.")
		if err == nil && name == l.user {
			// The other logins of this user end (stillAdmin); this one
			// goes on with the new password.
			s.mu.Lock()
			l.hash = hash
			s.mu.Unlock()
		}
		return done, err
	})
}

// userEdit sets a user's admin flag, ATRN domains and allowed senders.
func (s *Server) userEdit(w http.ResponseWriter, r *http.Request, l *login) {
	s.action(w, r, l, "/users", func(ctx context.Context) (string, error) {
		name, err := userName(r)
		if err != nil {
			return "", err
		}
		admin := r.PostFormValue("admin") == "on"
		if name == l.user && !admin {
			return "", fmt.Errorf("refused: you cannot take the admin flag from your own account (%s); another admin can", name)
		}
		from, atrn := users.SplitList(r.PostFormValue("from")), users.SplitList(r.PostFormValue("atrn"))
		what := fmt.Sprintf("changed user %s: admin %v, from=%s, atrn=%s", name, admin, strings.Join(from, ","), strings.Join(atrn, ","))
		// A login of a user demoted here ends at its next request
		// (stillAdmin), as after `mailroot user` on the file.
		return s.editUsers(ctx, l, users.Update(name, func(u *users.User) error {
			u.Admin, u.From, u.ATRN = admin, from, atrn
			return nil
		}), what, "User "+name+" changed.")
	})
}

func (s *Server) userDelete(w http.ResponseWriter, r *http.Request, l *login) {
	s.action(w, r, l, "/users", func(ctx context.Context) (string, error) {
		name, err := userName(r)
		if err != nil {
			return "", err
		}
		if name == l.user {
			return "", fmt.Errorf("refused: you cannot delete your own account (%s); another admin can", name)
		}
		return s.editUsers(ctx, l, users.Delete(name), "deleted user "+name, "User "+name+" deleted.")
	})
}
