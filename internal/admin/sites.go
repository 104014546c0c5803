package admin

// The sites page: every SMTP site of the effective configuration (the
// resolved [[site]] blocks, or the one "default" site of [ingress]) with
// its listen addresses, host name, TLS, AUTH, relay networks, connection
// control lists, limits and paused state; a pause/resume button and a
// form per live setting. Changes are liveconfig.Store.Set of the site's
// live key (site.NAME.KEY, or ingress.KEY for the default site), checked
// as `mailroot config set` checks them and recorded as a revision and a
// config event naming the admin; every ingress applies them to its next
// connection.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/liveconfig"
)

// How a site field's text becomes its TOML value.
const (
	fieldList   = iota // comma-separated entries: an array of strings
	fieldNumber        // taken as typed (the validation names a bad one)
	fieldText          // a string
)

// siteField is a live setting the sites page edits, by its key in a
// [[site]] block.
type siteField struct {
	Key, Label string
	Kind       int
}

var siteFields = []siteField{
	{"relay_networks", "Relay networks (may relay without AUTH)", fieldList},
	{"connect_allow", "Connection allow list (empty: everyone)", fieldList},
	{"connect_deny", "Connection deny list", fieldList},
	{"max_connections", "Max connections", fieldNumber},
	{"max_connections_per_ip", "Max connections per client address", fieldNumber},
	{"max_message_size", "Max message size (bytes)", fieldNumber},
	{"max_recipients", "Max recipients per message", fieldNumber},
	{"max_messages_per_connection", "Max messages per connection (0: no cap)", fieldNumber},
	{"max_session_size", "Max bytes per connection (0: no cap)", fieldNumber},
	{"max_bad_commands", "Max rejected commands", fieldNumber},
	{"timeout", "Command timeout (15m, 5m0s)", fieldText},
}

// SiteField is one live setting of a site: its live key and value now.
type SiteField struct {
	// Field is the key in the [[site]] block, Key the live key.
	Field, Key, Label, Value string
	// Live: the key is set in the live configuration.
	Live bool
}

// SiteView is one site of the sites page.
type SiteView struct {
	Name, Kind, Hostname, TLS, Auth string
	Listen                          []string
	Paused, PausedLive              bool
	// Prefix is the site's live keys' prefix.
	Prefix string
	Fields []SiteField
}

// sitePrefix is the prefix of site name's live keys: ingress. for the
// default site (no [[site]] blocks: the site is [ingress]), else
// site.NAME. (liveconfig.CheckKey).
func sitePrefix(cfg config.Config, name string) string {
	if len(cfg.Sites) == 0 {
		return "ingress."
	}
	return "site." + name + "."
}

// inputText is a site tree value as the page's input shows it.
func inputText(v any) string {
	switch t := v.(type) {
	case []any:
		parts := make([]string, len(t))
		for i, x := range t {
			parts[i] = fmt.Sprint(x)
		}
		return strings.Join(parts, ", ")
	case nil:
		return ""
	}
	return fmt.Sprint(v)
}

// value is the TOML value text of the field's input text.
func (f siteField) value(text string) (string, error) {
	text = strings.TrimSpace(text)
	switch f.Kind {
	case fieldList:
		items := strings.FieldsFunc(text, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })
		if items == nil {
			items = []string{}
		}
		return liveconfig.FormatValue(items)
	case fieldText:
		return liveconfig.FormatValue(text)
	}
	if text == "" {
		return "", errors.New("a number is needed")
	}
	return text, nil
}

func siteView(cfg config.Config, s config.Site, entries map[string]liveconfig.Entry) (SiteView, error) {
	tree, err := config.ToTree(s)
	if err != nil {
		return SiteView{}, err
	}
	v := SiteView{Name: s.Name, Kind: s.Kind, Hostname: s.Hostname, Listen: s.Listen, Paused: s.Paused, Prefix: sitePrefix(cfg, s.Name)}
	switch {
	case s.ImplicitTLS:
		v.TLS = "implicit TLS"
	case s.StartTLS:
		v.TLS = "STARTTLS"
	default:
		v.TLS = "none"
	}
	if s.ImplicitTLS || s.StartTLS {
		if s.TLSCert != "" {
			v.TLS += " (" + s.TLSCert + ")"
		} else {
			v.TLS += " (self-signed)"
		}
	}
	v.Auth = s.Auth
	if s.Auth != config.AuthOff && s.AllowInsecureAuth {
		v.Auth += ", also without TLS"
	}
	if s.SenderLoginMatch {
		v.Auth += ", sender must match the login"
	}
	_, v.PausedLive = entries[v.Prefix+"paused"]
	for _, f := range siteFields {
		_, live := entries[v.Prefix+f.Key]
		v.Fields = append(v.Fields, SiteField{Field: f.Key, Key: v.Prefix + f.Key, Label: f.Label, Value: inputText(tree[f.Key]), Live: live})
	}
	return v, nil
}

func (s *Server) sitesPage(w http.ResponseWriter, r *http.Request, l *login) {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	cfg, entries, err := s.opt.Config.Effective(ctx)
	if err != nil {
		s.fail(w, l, "read the configuration", err)
		return
	}
	var views []SiteView
	for _, st := range cfg.EffectiveSites() {
		v, err := siteView(cfg, st, entries)
		if err != nil {
			s.fail(w, l, "render site "+st.Name, err)
			return
		}
		views = append(views, v)
	}
	s.render(w, http.StatusOK, "sites", l, map[string]any{"Sites": views, "Msg": r.URL.Query().Get("msg")})
}

// formSite is the site the form names, in the effective configuration.
func (s *Server) formSite(ctx context.Context, r *http.Request) (config.Config, config.Site, error) {
	cfg, _, err := s.opt.Config.Effective(ctx)
	if err != nil {
		return cfg, config.Site{}, fmt.Errorf("read the configuration: %w", err)
	}
	name := r.PostFormValue("site")
	sites := cfg.EffectiveSites()
	i := slices.IndexFunc(sites, func(st config.Site) bool { return st.Name == name })
	if i < 0 {
		return cfg, config.Site{}, badInput(fmt.Sprintf("%q is not a site of the configuration", name))
	}
	return cfg, sites[i], nil
}

// setSite stores value for the site's live key (field: a key of a
// [[site]] block) through the validation of `mailroot config set`.
func (s *Server) setSite(ctx context.Context, l *login, cfg config.Config, st config.Site, field, value, why string) (string, error) {
	key := sitePrefix(cfg, st.Name) + field
	rev, err := s.opt.Config.Set(ctx, key, value, false, who(l), why)
	var ke *config.KeyError
	if errors.As(err, &ke) && ke.Key == key {
		err = errors.New(strings.TrimPrefix(ke.Msg, "refused: ")) // the key is named once, below
	}
	if err != nil {
		return "", fmt.Errorf("%s = %s refused: %w", key, value, err)
	}
	return fmt.Sprintf("Site %s: %s = %s (revision %d).", st.Name, key, value, rev), nil
}

// sitePause pauses (new connections get 421 4.3.2) or resumes a site.
func (s *Server) sitePause(w http.ResponseWriter, r *http.Request, l *login) {
	s.action(w, r, l, "/sites", func(ctx context.Context) (string, error) {
		on, err := strconv.ParseBool(r.PostFormValue("on"))
		if err != nil {
			return "", badInput("on must be true or false")
		}
		cfg, st, err := s.formSite(ctx, r)
		if err != nil {
			return "", err
		}
		return s.setSite(ctx, l, cfg, st, "paused", strconv.FormatBool(on), map[bool]string{true: "paused", false: "resumed"}[on]+" from the sites page")
	})
}

// siteSet sets one of siteFields (siteField.value).
func (s *Server) siteSet(w http.ResponseWriter, r *http.Request, l *login) {
	s.action(w, r, l, "/sites", func(ctx context.Context) (string, error) {
		i := slices.IndexFunc(siteFields, func(f siteField) bool { return f.Key == r.PostFormValue("field") })
		if i < 0 {
			return "", badInput(fmt.Sprintf("field %q is not a live site setting of this page", r.PostFormValue("field")))
		}
		cfg, st, err := s.formSite(ctx, r)
		if err != nil {
			return "", err
		}
		value, err := siteFields[i].value(r.PostFormValue("value"))
		if err != nil {
			return "", fmt.Errorf("%s%s refused: %w", sitePrefix(cfg, st.Name), siteFields[i].Key, err)
		}
		return s.setSite(ctx, l, cfg, st, siteFields[i].Key, value, "set from the sites page")
	})
}
