package main

// `mailroot config show` prints the configuration the actors would run
// with (defaults, then the file, then MAILROOT_* and the flags), as a
// TOML file that loads to the same configuration; -n prints only what
// differs from the defaults, like Postfix's `postconf -n`.
// `mailroot config check` validates a file before a restart needs it.

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net/url"
	"reflect"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/mailroot/mailroot/internal/config"
)

// masked replaces the value of every secret in `config show`.
const masked = "********"

func configCommand(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "get", "set", "unset", "history", "rollback", "export":
			return liveConfigCommand(args[0], args[1:], stdout, stderr)
		}
	}
	if len(args) == 0 || (args[0] != "show" && args[0] != "check") {
		fmt.Fprintln(stderr, "usage: mailroot config show [-n] [-config FILE]\n       mailroot config check [-config FILE | FILE]\n       "+liveConfigUsage[len("usage: "):])
		return 2
	}
	sub := args[0]
	fs := flag.NewFlagSet("mailroot config "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addCommonFlags(fs)
	var changed *bool
	if sub == "show" {
		changed = fs.Bool("n", false, "only the keys that differ from the defaults")
	}
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if sub == "check" && fs.NArg() == 1 {
		*cf.config = fs.Arg(0)
	} else if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mailroot config %s: unexpected argument %q\n", sub, fs.Arg(0))
		return 2
	}
	cfg, err := cf.load()
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: %v\n", err)
		return 2
	}
	if sub == "check" {
		name := *cf.config
		if name == "" {
			name = "(no file: defaults and environment)"
		}
		fmt.Fprintf(stdout, "config OK: %s\n", name)
		return 0
	}
	out, err := showConfig(cfg, *changed)
	if err != nil {
		fmt.Fprintf(stderr, "mailroot: config show: %v\n", err)
		return 1
	}
	_, _ = stdout.Write(out)
	return 0
}

// showConfig renders cfg as TOML with its secrets masked; with changed,
// only the keys whose values differ from config.Default() (and, in each
// [[site]] block, from what the site inherits: config.SiteOf its kind).
func showConfig(cfg config.Config, changed bool) ([]byte, error) {
	tree, err := cfg.Tree()
	if err != nil {
		return nil, err
	}
	if changed {
		def, err := config.Default().Tree()
		if err != nil {
			return nil, err
		}
		sites := tree["site"]
		delete(tree, "site")
		tree = diffTree(tree, def)
		if sites != nil {
			var blocks []map[string]any
			for i, s := range sites.([]map[string]any) {
				base, err := config.ToTree(cfg.SiteOf(cfg.Sites[i].Kind))
				if err != nil {
					return nil, err
				}
				d := diffTree(s, base)
				d["kind"], d["name"] = s["kind"], s["name"] // which block this is
				blocks = append(blocks, d)
			}
			tree["site"] = blocks
		}
	}
	maskSecrets(tree)
	var buf bytes.Buffer
	enc := toml.NewEncoder(&buf)
	enc.Indent = ""
	if err := enc.Encode(tree); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// diffTree keeps the keys of tree whose values differ from def's,
// descending into tables; lists (and arrays of tables) are compared whole.
func diffTree(tree, def map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range tree {
		sub, isTable := v.(map[string]any)
		defSub, defIsTable := def[k].(map[string]any)
		switch {
		case isTable && defIsTable:
			if d := diffTree(sub, defSub); len(d) > 0 {
				out[k] = d
			}
		case !reflect.DeepEqual(v, def[k]):
			out[k] = v
		}
	}
	return out
}

// isSecret reports whether a key holds a secret by its name.
func isSecret(key string) bool {
	k := strings.ToLower(key)
	return strings.Contains(k, "password") || strings.Contains(k, "token") || strings.Contains(k, "secret")
}

// maskSecrets replaces every non-empty secret, and the password of any
// URL with one (nats.url), with "********".
func maskSecrets(tree map[string]any) {
	for k, v := range tree {
		switch v := v.(type) {
		case map[string]any:
			maskSecrets(v)
		case []map[string]any:
			for _, t := range v {
				maskSecrets(t)
			}
		case string:
			if v == "" {
				continue
			}
			if isSecret(k) {
				tree[k] = masked
			} else if strings.Contains(v, "://") {
				tree[k] = maskURLs(v)
			}
		}
	}
}

// maskURLs masks the passwords in a comma-separated list of URLs.
func maskURLs(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		if err != nil || u.User == nil {
			continue
		}
		// By hand: url.UserPassword would percent-encode the asterisks.
		user := masked + "@" // nats://TOKEN@host: the user is the token
		if _, ok := u.User.Password(); ok {
			user = url.User(u.User.Username()).String() + ":" + masked + "@"
		}
		u.User = nil
		parts[i] = strings.Replace(u.String(), "://", "://"+user, 1)
	}
	return strings.Join(parts, ",")
}
