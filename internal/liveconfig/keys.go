// Package liveconfig is the live configuration: the settings an
// administrator changes while Mailroot runs, kept in the NATS KV bucket
// mta-config with their history, so that every process of a cluster
// sees the same values and every change says who made it, when and why
// (the IIS seed's "configuration changes are not logged", fixed).
//
// A key is a dotted path of the TOML file ("ingress.relay_networks",
// "delivery.retry", "local_domains"), or names a block: "domain.NAME"
// is the whole [[domain]] block whose name is NAME (an inline table),
// "site.NAME.KEY" one key of the [[site]] named NAME. A value is TOML
// ("true", "[\"10.0.0.0/8\"]", "\"10MB\"", "{type = \"remote\", hold =
// true}"); text that is not TOML is taken as a string, so that `config
// set default_domain example.com` works as `postconf -e` does.
//
// The effective configuration is the file with every live key applied
// over it (Apply): the file's text is decoded into a tree, the keys set
// in it, and the tree decoded and validated as a file is, so that a live
// value obeys exactly the rules of the same value in the file. A change
// that fails them is refused before it is stored, naming the key.
//
// Keys that need a restart (listen addresses, data_dir, NATS, metrics,
// the resolver) are refused: they stay in the file.
package liveconfig

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/BurntSushi/toml"

	"github.com/mailroot/mailroot/internal/config"
)

// restart lists the keys (and key prefixes, ending in '.') that are only
// read at start.
var restart = []string{"hostname", "data_dir", "log_format", "nats.", "metrics.", "dns.",
	"ingress.listen", "events.", "auth.users_file", "pickup.dir",
	"delivery.tls_rpt", "delivery.tls_rpt_contact", "delivery.tls_rpt_org", "admin."}

// CheckKey says why key cannot be set live, or nil.
func CheckKey(key string) error {
	if key == "" || strings.HasPrefix(key, ".") || strings.HasSuffix(key, ".") || strings.Contains(key, "..") {
		return fmt.Errorf("%q is not a configuration key (a dotted path such as ingress.relay_networks)", key)
	}
	if strings.HasPrefix(key, "_") {
		return fmt.Errorf("%q is not a configuration key: keys beginning with _ are Mailroot's own", key)
	}
	for _, r := range key {
		if r < 0x21 || r > 0x7e {
			return fmt.Errorf("%q is not a configuration key: it holds a space or control character", key)
		}
	}
	for _, p := range restart {
		if key == strings.TrimSuffix(p, ".") || strings.HasSuffix(p, ".") && strings.HasPrefix(key, p) {
			return fmt.Errorf("%s is read at start only: change it in the configuration file and restart", key)
		}
	}
	if rest, ok := strings.CutPrefix(key, "site."); ok {
		name, k, ok := strings.Cut(rest, ".")
		if !ok || name == "" || k == "" {
			return fmt.Errorf("%s: a site key is site.NAME.KEY", key)
		}
		if k == "listen" || k == "kind" || k == "name" {
			return fmt.Errorf("%s is read at start only: change it in the configuration file and restart", key)
		}
	}
	if key == "domain" || key == "site" {
		return fmt.Errorf("%s: name one block: %s.NAME", key, key)
	}
	if strings.HasPrefix(key, "dkim.") {
		return fmt.Errorf("%s: [[dkim]] blocks have no names: set them all as the key dkim, e.g. dkim = [{domain = \"example.com\", selector = \"s2\", key_file = \"/etc/mailroot/s2.key\"}]", key)
	}
	return nil
}

// ParseValue reads a value as TOML, or else as a string.
func ParseValue(text string) (any, error) {
	if !utf8.ValidString(text) {
		return nil, fmt.Errorf("%q is not valid UTF-8", text)
	}
	var doc map[string]any
	if _, err := toml.Decode("v = "+text, &doc); err == nil {
		return doc["v"], nil
	}
	if strings.ContainsFunc(text, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return nil, fmt.Errorf("%q is neither a TOML value nor a one-line string", text)
	}
	return text, nil
}

// FormatValue renders v as TOML text, as ParseValue reads it.
func FormatValue(v any) (string, error) {
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(map[string]any{"v": v}); err != nil {
		return "", err
	}
	s := strings.TrimSpace(b.String())
	if out, ok := strings.CutPrefix(s, "v = "); ok {
		return out, nil
	}
	// Tables are written as sections: use the inline form.
	return inlineTable(v)
}

func inlineTable(v any) (string, error) {
	if list, ok := v.([]any); ok {
		// An array of tables ([[dkim]] blocks): inline tables in a list.
		parts := make([]string, 0, len(list))
		for _, e := range list {
			s, err := FormatValue(e)
			if err != nil {
				return "", err
			}
			parts = append(parts, s)
		}
		return "[" + strings.Join(parts, ", ") + "]", nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return "", fmt.Errorf("cannot render %T", v)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		s, err := FormatValue(m[k])
		if err != nil {
			return "", err
		}
		parts = append(parts, k+" = "+s)
	}
	return "{" + strings.Join(parts, ", ") + "}", nil
}

// Apply returns the configuration of the file text base with the live
// values of overrides (key → TOML value text) applied over it, decoded
// and validated as a file is. An error names the key at fault.
func Apply(base string, overrides map[string]string) (config.Config, error) {
	var tree map[string]any
	if _, err := toml.Decode(base, &tree); err != nil {
		return config.Config{}, fmt.Errorf("config file: %w", err)
	}
	if tree == nil {
		tree = map[string]any{}
	}
	keys := make([]string, 0, len(overrides))
	for k := range overrides {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v, err := ParseValue(overrides[k])
		if err != nil {
			return config.Config{}, &config.KeyError{Key: k, Msg: err.Error()}
		}
		if err := set(tree, k, v); err != nil {
			return config.Config{}, &config.KeyError{Key: k, Msg: err.Error()}
		}
	}
	var text bytes.Buffer
	if err := toml.NewEncoder(&text).Encode(tree); err != nil {
		return config.Config{}, err
	}
	return config.Parse(text.String())
}

// set puts v at key in tree (nil v removes it).
func set(tree map[string]any, key string, v any) error {
	if name, ok := strings.CutPrefix(key, "domain."); ok {
		return setBlock(tree, "domain", name, "", v)
	}
	if rest, ok := strings.CutPrefix(key, "site."); ok {
		name, k, _ := strings.Cut(rest, ".")
		return setBlock(tree, "site", name, k, v)
	}
	path := strings.Split(key, ".")
	m := tree
	for _, p := range path[:len(path)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			if _, exists := m[p]; exists {
				return fmt.Errorf("%s is not a table", p)
			}
			if v == nil {
				return nil
			}
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	last := path[len(path)-1]
	if v == nil {
		delete(m, last)
	} else {
		m[last] = v
	}
	return nil
}

// setBlock sets key k of the block of the array table kind named name, or
// the whole block when k is "" (v an inline table); nil v removes it.
func setBlock(tree map[string]any, kind, name, k string, v any) error {
	blocks, _ := tree[kind].([]map[string]any)
	i := slices.IndexFunc(blocks, func(b map[string]any) bool {
		n, _ := b["name"].(string)
		return strings.EqualFold(n, name)
	})
	switch {
	case k == "" && v == nil:
		if i >= 0 {
			blocks = slices.Delete(blocks, i, i+1)
		}
	case k == "":
		t, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("the value of a whole [[%s]] block is an inline table, e.g. {type = \"remote\", hold = true}", kind)
		}
		t = maps(t)
		t["name"] = name
		if i >= 0 {
			blocks[i] = t
		} else {
			blocks = append(blocks, t)
		}
	case i < 0:
		if v == nil {
			return nil
		}
		return fmt.Errorf("there is no [[%s]] named %q in the configuration file", kind, name)
	case v == nil:
		delete(blocks[i], k)
	default:
		blocks[i][k] = v
	}
	if len(blocks) == 0 {
		delete(tree, kind)
	} else {
		tree[kind] = blocks
	}
	return nil
}

func maps(m map[string]any) map[string]any {
	out := make(map[string]any, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	return out
}
