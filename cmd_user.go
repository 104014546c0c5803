package main

// `mailroot user add|passwd|del|list` manages the SMTP AUTH users file
// (auth.users_file, default <data_dir>/users): one line per user with a
// bcrypt hash, plus the addresses it may send as (from=) and the domains
// it may dequeue with ATRN (atrn=). Running ingress processes reload the
// file when it changes; nothing needs restarting.

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/mailroot/mailroot/internal/users"
	"golang.org/x/term"
)

const userUsage = `usage:
  mailroot user add NAME [-from ADDR,@DOMAIN,...] [-atrn DOMAIN,...] [-admin] [-password-stdin]
  mailroot user passwd NAME [-admin=true|false] [-password-stdin]
  mailroot user del NAME
  mailroot user list
common flags: -config FILE, -data DIR (the users file is auth.users_file, default <data_dir>/users)
The password is asked twice on a terminal; with -password-stdin (or when stdin is not a
terminal) it is the first line of standard input; it has at least 8 characters.
`

func userCommand(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprint(stderr, userUsage)
		return 2
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("mailroot user "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addCommonFlags(fs)
	from := fs.String("from", "", "addresses and @domains the user may send as (comma-separated)")
	atrn := fs.String("atrn", "", "domains the user may dequeue with ATRN (comma-separated)")
	admin := fs.Bool("admin", false, "the user may log in to the admin console (mailroot admin)")
	pwStdin := fs.Bool("password-stdin", false, "read the password from the first line of standard input")
	// Flags may come before or after the name.
	var names []string
	for {
		if err := fs.Parse(args); err != nil {
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		names = append(names, fs.Arg(0))
		args = fs.Args()[1:]
	}
	cfg, err := cf.load()
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return 2
	}
	path := cfg.UsersPath()
	list, err := users.Load(path)
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return 1
	}
	exists := func(name string) bool {
		return slices.ContainsFunc(list, func(u users.User) bool { return u.Name == name })
	}
	needName := func() (string, bool) {
		if len(names) != 1 {
			fmt.Fprint(stderr, userUsage)
			return "", false
		}
		if !users.ValidName(names[0]) {
			fmt.Fprintf(stderr, "mailroot: %q is not a valid user name (no spaces, colons or control characters)\n", names[0])
			return "", false
		}
		return names[0], true
	}
	var change users.Change
	switch sub {
	case "list":
		if len(names) != 0 {
			fmt.Fprint(stderr, userUsage)
			return 2
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tFROM\tATRN\tADMIN")
		for _, u := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", u.Name, dash(strings.Join(u.From, ",")), dash(strings.Join(u.ATRN, ",")), map[bool]string{true: "yes", false: "-"}[u.Admin])
		}
		_ = tw.Flush()
		return 0
	case "add", "passwd":
		name, ok := needName()
		if !ok {
			return 2
		}
		// Told before the password is asked; Edit checks again under
		// the file's lock.
		if sub == "add" && exists(name) {
			fmt.Fprintf(stderr, "mailroot: user %s exists (use `mailroot user passwd %s`)\n", name, name)
			return 1
		}
		if sub == "passwd" && !exists(name) {
			fmt.Fprintf(stderr, "mailroot: no user %s in %s\n", name, path)
			return 1
		}
		pw, err := readPassword(stdin, stderr, *pwStdin)
		if err != nil {
			fmt.Fprintf(stderr, "mailroot: %v\n", err)
			return 1
		}
		hash, err := users.NewHash(pw)
		if err != nil {
			fmt.Fprintf(stderr, "mailroot: %v\n", err)
			return 1
		}
		if sub == "add" {
			change = users.Add(users.User{Name: name, Hash: hash, From: users.SplitList(*from), ATRN: users.SplitList(*atrn), Admin: *admin})
			break
		}
		change = users.Update(name, func(u *users.User) error {
			u.Hash = hash
			if *from != "" {
				u.From = users.SplitList(*from)
			}
			if *atrn != "" {
				u.ATRN = users.SplitList(*atrn)
			}
			fs.Visit(func(f *flag.Flag) {
				if f.Name == "admin" {
					u.Admin = *admin
				}
			})
			return nil
		})
	case "del":
		name, ok := needName()
		if !ok {
			return 2
		}
		change = users.Delete(name)
	default:
		fmt.Fprintf(stderr, "mailroot: unknown user command %q\n", sub)
		fmt.Fprint(stderr, userUsage)
		return 2
	}
	if err := users.Edit(path, change); err != nil {
		if errors.Is(err, users.ErrNoUser) {
			err = fmt.Errorf("no user %s in %s", names[0], path)
		}
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: %s %s\n", path, map[string]string{"add": "added", "passwd": "changed the password of", "del": "deleted"}[sub], names[0])
	return 0
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// readPassword asks twice without echo on a terminal, else reads one line.
func readPassword(stdin io.Reader, stderr io.Writer, fromStdin bool) (string, error) {
	if f, ok := stdin.(*os.File); ok && !fromStdin && term.IsTerminal(int(f.Fd())) {
		ask := func(prompt string) (string, error) {
			fmt.Fprint(stderr, prompt)
			pw, err := term.ReadPassword(int(f.Fd()))
			fmt.Fprintln(stderr)
			if err != nil {
				return "", fmt.Errorf("read password: %w", err)
			}
			return string(pw), nil
		}
		pw, err := ask("Password: ")
		if err != nil {
			return "", err
		}
		again, err := ask("Again: ")
		if err != nil {
			return "", err
		}
		if pw != again {
			return "", errors.New("the passwords differ")
		}
		if pw == "" {
			return "", errors.New("empty password")
		}
		return pw, nil
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read password: %w", err)
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", errors.New("empty password")
	}
	return line, nil
}
