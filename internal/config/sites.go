package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/mailroot/mailroot/internal/envelope"
)

// Site kinds: presets for a [[site]] block, the "SMTP sites" of IIS.
const (
	// KindMTA receives mail from other servers (port 25): AUTH optional,
	// ETRN offered.
	KindMTA = "mta"
	// KindSubmission is mail submission (port 587, RFC 6409): AUTH required.
	KindSubmission = "submission"
	// KindSMTPS is submission over implicit TLS (port 465, RFC 8314): AUTH
	// required.
	KindSMTPS = "smtps"
	// KindODMR is On-Demand Mail Relay (port 366, RFC 2645): AUTH required,
	// ATRN offered.
	KindODMR = "odmr"
)

// AUTH policies of a site.
const (
	AuthOff      = "off"      // AUTH is not offered
	AuthOptional = "optional" // offered; authenticated clients may relay
	AuthRequired = "required" // MAIL FROM needs AUTH first (530 5.7.0)
)

// Bare newline policies (Postfix 3.9 smtpd_forbid_bare_newline).
const (
	// BareNewlineReject refuses a command or message with a bare LF or
	// bare CR with "550 5.5.2 Error: bare <LF> received" and disconnects.
	BareNewlineReject = "reject"
	// BareNewlineNormalize treats a bare LF or CR as CRLF; only CRLF.CRLF
	// ends DATA.
	BareNewlineNormalize = "normalize"
)

// Site is one SMTP listener group with its own policy: the resolved form
// of a [[site]] block, every field filled in (inherited from [ingress],
// then the kind's preset, then the block's own keys).
type Site struct {
	// Name identifies the site in logs, the Mta-Site header and
	// `mailroot sessions`.
	Name string `toml:"name"`
	// Kind is mta, submission, smtps or odmr; it chooses the presets.
	Kind string `toml:"kind"`
	// Hostname is the name in the banner, EHLO reply and Received:;
	// inherited from the top-level hostname.
	Hostname string `toml:"hostname"`
	// ImplicitTLS starts TLS at connect (port 465) instead of STARTTLS.
	ImplicitTLS bool `toml:"implicit_tls"`
	// LocalDomains limits which local and alias domains this site accepts
	// mail for from anyone; empty means all of them.
	LocalDomains []string `toml:"local_domains"`

	// SiteKeys are the keys [ingress] has too, with the same names.
	SiteKeys
}

// SiteKeys are the keys of a site that [ingress] sets for every site,
// declared once: Ingress and Site embed them (the TOML decoder, like Go,
// promotes the fields of an embedded struct, so the keys sit directly in
// [ingress] and [[site]]). A [[site]] block starts from [ingress]'s
// values, then its kind's preset (SiteOf), and overrides the keys it
// sets; a key added here is inherited and overridable with no other code.
// Fields are values or slices (see clone).
type SiteKeys struct {
	// Listen are the host:port addresses (IPv4 or [IPv6]). Every kind
	// presets its own port, so only the one site made of [ingress] uses
	// ingress.listen.
	Listen []string `toml:"listen"`
	// Banner is the text after the host name in the 220 greeting.
	Banner string `toml:"banner"`
	// StartTLS offers STARTTLS on plain connections.
	StartTLS bool `toml:"starttls"`
	// TLSCert and TLSKey are PEM files, reloaded when they change; empty
	// means a self-signed certificate kept in <data_dir>/tls/.
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`
	// RelayNetworks may relay to any domain without AUTH (CIDRs).
	RelayNetworks []string `toml:"relay_networks"`
	// Paused refuses new connections with 421 4.3.2 while sessions in
	// progress finish (IIS's "pause"); meant to be set live
	// (`mailroot config set ingress.paused true`, or site.NAME.paused).
	Paused bool `toml:"paused"`
	// Auth is off, optional or required.
	Auth string `toml:"auth"`
	// AllowInsecureAuth offers AUTH on connections without TLS.
	AllowInsecureAuth bool `toml:"allow_insecure_auth"`
	// SenderLoginMatch refuses (553 5.7.1) a MAIL FROM that is not one of
	// the authenticated user's own addresses or domains.
	SenderLoginMatch bool `toml:"sender_login_match"`
	// ETRN offers ETRN (RFC 1985) for held domains.
	ETRN bool `toml:"etrn"`
	// ETRNNetworks limits ETRN to these clients; empty means anyone.
	ETRNNetworks []string `toml:"etrn_networks"`
	// ATRN offers ATRN (RFC 2645) to authenticated users.
	ATRN bool `toml:"atrn"`
	// MaxMessageSize is the largest message in bytes (552 5.3.4).
	MaxMessageSize int64 `toml:"max_message_size"`
	// MaxSessionSize caps the bytes of all messages of one connection
	// (0 = no cap); checked at each MAIL FROM (421 4.7.0).
	MaxSessionSize int64 `toml:"max_session_size"`
	// MaxMessagesPerConnection caps the messages of one connection
	// (0 = no cap; 421 4.7.0 at the next MAIL FROM).
	MaxMessagesPerConnection int `toml:"max_messages_per_connection"`
	// MaxRecipients per message (452 4.5.3).
	MaxRecipients int `toml:"max_recipients"`
	// Timeout is the time a client has to send one whole command line,
	// and the most message content may stall (see ingress's minDataRate).
	Timeout Duration `toml:"timeout"`
	// MaxConnections is the simultaneous connections of the site (421 4.7.0).
	MaxConnections int `toml:"max_connections"`
	// MaxConnectionsPerIP is the simultaneous connections from one client
	// address (421 4.7.0).
	MaxConnectionsPerIP int `toml:"max_connections_per_ip"`
	// MaxBadCommands is the number of rejected commands after which the
	// connection is closed (421 4.7.0).
	MaxBadCommands int `toml:"max_bad_commands"`
	// MaxLineLength is the longest command or text line in bytes.
	MaxLineLength int `toml:"max_line_length"`
	// ReverseDNS looks up the client's host name (forward-confirmed) for
	// Received: and the sessions list.
	ReverseDNS bool `toml:"reverse_dns"`
	// ConnectAllow and ConnectDeny grant and deny connections by client
	// (IIS's connection control): addresses (192.0.2.7), networks
	// (198.51.100.0/24, 2001:db8::/32), a domain and its subdomains
	// (.example.net) or one name (example.net), matched against the
	// client's forward-confirmed reverse DNS name. An empty allow list
	// allows all; deny wins. A refused client gets 554 5.7.1 as its
	// greeting (see ParseConnectRules).
	ConnectAllow []string `toml:"connect_allow"`
	ConnectDeny  []string `toml:"connect_deny"`
	// DNSBL are DNS block list zones asked at connect (zen.example): a
	// listed client gets 554 5.7.1 as its greeting. Only mta sites
	// inherit them from [ingress].
	DNSBL []string `toml:"dnsbl"`
	// BareNewline is reject or normalize.
	BareNewline string `toml:"bare_newline"`
	// BareNewlineNormalize are networks for which bare newlines are
	// normalised even when BareNewline is reject.
	BareNewlineNormalize []string `toml:"bare_newline_normalize"`
	// LogDir turns on the W3C transaction log (internal/w3c): the site's
	// files are <log_dir>/<site name>/exYYMMDD.log, as IIS's
	// LogFiles\SMTPSVC1\. A relative path is under data_dir; empty (the
	// default) is off. Set in [ingress], every site logs.
	LogDir string `toml:"log_dir"`

	// Inbound authentication checks (internal/authcheck, README "Inbound
	// authentication checks"), for mail from clients that are neither
	// authenticated nor in relay_networks.
	//
	// AuthChecks runs SPF, DKIM and DMARC at the end of DATA and
	// prepends Authentication-Results. On by default for mta sites only.
	AuthChecks bool `toml:"auth_checks"`
	// AuthServID is the authserv-id of the header (RFC 8601 §2.5);
	// empty: the site's host name.
	AuthServID string `toml:"authserv_id"`
	// SPFFail is what an SPF fail of the MAIL FROM identity does: tag
	// (the header only) or reject (550 5.7.23).
	SPFFail string `toml:"spf_fail"`
	// DMARCReject and DMARCQuarantine are what a DMARC fail does when the
	// domain's policy (after pct=) is reject or quarantine: tag,
	// quarantine (the mail goes to <data_dir>/Quarantine/) or reject
	// (550 5.7.1 at the end of DATA).
	DMARCReject     string `toml:"dmarc_reject"`
	DMARCQuarantine string `toml:"dmarc_quarantine"`
}

// clone returns k with its own copy of every slice: the TOML decoder
// writes a list into the array of the slice it decodes over when that is
// big enough, and a [[site]] block must not write into [ingress]'s lists.
func (k SiteKeys) clone() SiteKeys {
	v := reflect.ValueOf(&k).Elem()
	for i := range v.NumField() {
		switch f := v.Field(i); f.Kind() {
		case reflect.Slice:
			if !f.IsNil() {
				f.Set(reflect.AppendSlice(reflect.MakeSlice(f.Type(), 0, f.Len()), f))
			}
		case reflect.Map, reflect.Pointer, reflect.Interface:
			panic("config: SiteKeys." + v.Type().Field(i).Name + " would be shared by the sites; clone copies slices only")
		}
	}
	return k
}

// Auth configures SMTP AUTH users and the failed-login limits ([auth]).
type Auth struct {
	// UsersFile holds "name:bcrypt-hash[:from=…][:atrn=…]" lines, managed
	// with `mailroot user`; empty means <data_dir>/users.
	UsersFile string `toml:"users_file"`
	// FailLimit failed AUTH attempts from one client address within
	// FailWindow ban that address from AUTH for Ban.
	FailLimit  int      `toml:"fail_limit"`
	FailWindow Duration `toml:"fail_window"`
	Ban        Duration `toml:"ban"`
	// FailDelay is the back-off: each failure's reply waits FailDelay times
	// the number of recent failures (at most 10 s).
	FailDelay Duration `toml:"fail_delay"`
}

// DefaultAuth are the [auth] defaults.
func DefaultAuth() Auth {
	return Auth{FailLimit: 5, FailWindow: Duration(15 * time.Minute), Ban: Duration(15 * time.Minute), FailDelay: Duration(time.Second)}
}

// UsersPath is the users file: auth.users_file or <data_dir>/users.
func (c Config) UsersPath() string {
	if c.Auth.UsersFile != "" {
		return c.Auth.UsersFile
	}
	return filepath.Join(c.DataDir, "users")
}

// SiteLogDir is the directory of site s's W3C transaction log, "" when
// it has none (log_dir unset).
func (c Config) SiteLogDir(s Site) string {
	if s.LogDir == "" {
		return ""
	}
	d := s.LogDir
	if !filepath.IsAbs(d) {
		d = filepath.Join(c.DataDir, d)
	}
	return filepath.Join(d, s.Name)
}

// TLSDir holds the self-signed certificate made when none is configured.
func (c Config) TLSDir() string { return filepath.Join(c.DataDir, "tls") }

// SiteOf returns a site of the given kind with everything inherited from
// [ingress] and the kind's presets applied, before a [[site]] block's own
// keys: the starting point of every site.
func (c Config) SiteOf(kind string) Site {
	s := Site{Name: kind, Kind: kind, Hostname: c.Hostname, SiteKeys: c.Ingress.SiteKeys.clone()}
	switch kind {
	case KindMTA:
		s.Listen = []string{":25"}
	case KindSubmission:
		s.Listen, s.Auth, s.ETRN = []string{":587"}, AuthRequired, false
	case KindSMTPS:
		s.Listen, s.Auth, s.ETRN, s.ImplicitTLS = []string{":465"}, AuthRequired, false, true
	case KindODMR:
		s.Listen, s.Auth, s.ETRN, s.ATRN = []string{":366"}, AuthRequired, false, true
	}
	if kind != KindMTA {
		// Users submit from dial-up and home addresses, which block
		// lists list: [ingress] dnsbl is for servers (a site's own key
		// still sets it).
		s.DNSBL = []string{}
		// Nor the inbound checks: submission is authenticated.
		s.AuthChecks = false
	}
	return s
}

// EffectiveSites are the sites to serve: the [[site]] blocks, or, with
// none, one site named "default" made of [ingress] alone (kind mta,
// listening on ingress.listen).
func (c Config) EffectiveSites() []Site {
	if len(c.Sites) > 0 {
		return c.Sites
	}
	s := c.SiteOf(KindMTA)
	s.Name = "default"
	s.Listen = append([]string(nil), c.Ingress.Listen...)
	return []Site{s}
}

// decodeSites resolves the raw [[site]] blocks of a file: each starts as
// SiteOf(its kind) and the block's keys override that.
func (c *Config) decodeSites(md toml.MetaData) error {
	c.Sites = nil
	for i, p := range c.SiteBlocks {
		var k struct {
			Kind string `toml:"kind"`
		}
		if err := md.PrimitiveDecode(p, &k); err != nil {
			return &KeyError{fmt.Sprintf("site[%d]", i), err.Error()}
		}
		if k.Kind == "" {
			k.Kind = KindMTA
		}
		s := c.SiteOf(k.Kind)
		if err := md.PrimitiveDecode(p, &s); err != nil {
			return &KeyError{fmt.Sprintf("site[%d]", i), err.Error()}
		}
		c.Sites = append(c.Sites, s)
	}
	c.SiteBlocks = nil
	return nil
}

func parseNetworks(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for _, n := range list {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			a, aerr := netip.ParseAddr(n)
			if aerr != nil {
				return nil, fmt.Errorf("%q is not a CIDR", n)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Networks parses a list of CIDRs or addresses.
func Networks(list []string) ([]netip.Prefix, error) { return parseNetworks(list) }

// validateSites checks [ingress]'s site defaults, [auth] and every site.
func (c *Config) validateSites() error {
	i := c.Ingress
	switch i.Auth {
	case AuthOff, AuthOptional, AuthRequired:
	default:
		return &KeyError{"ingress.auth", "must be off, optional or required"}
	}
	switch i.BareNewline {
	case BareNewlineReject, BareNewlineNormalize:
	default:
		return &KeyError{"ingress.bare_newline", "must be reject or normalize"}
	}
	if (i.TLSCert == "") != (i.TLSKey == "") {
		return &KeyError{"ingress.tls_cert", "tls_cert and tls_key go together"}
	}
	if c.Auth.FailLimit <= 0 {
		return &KeyError{"auth.fail_limit", "must be greater than 0"}
	}
	if c.Auth.FailWindow <= 0 || c.Auth.Ban <= 0 {
		return &KeyError{"auth.fail_window", "fail_window and ban must be greater than 0"}
	}
	if c.Auth.FailDelay < 0 {
		return &KeyError{"auth.fail_delay", "must not be negative"}
	}
	seen := map[string]string{}
	names := map[string]bool{}
	for n, s := range c.EffectiveSites() {
		key := fmt.Sprintf("site[%d]", n)
		if len(c.Sites) == 0 {
			key = "ingress"
		}
		if err := c.validateSite(key, s); err != nil {
			return err
		}
		if names[s.Name] {
			return &KeyError{key + ".name", fmt.Sprintf("%q is used by two sites", s.Name)}
		}
		names[s.Name] = true
		for _, l := range s.Listen {
			if _, port, _ := net.SplitHostPort(l); port == "0" {
				continue // a free port each
			}
			if other, ok := seen[l]; ok {
				return &KeyError{key + ".listen", fmt.Sprintf("%s is also a listen address of site %q", l, other)}
			}
			seen[l] = s.Name
		}
	}
	return nil
}

func (c *Config) validateSite(key string, s Site) error {
	if s.Name == "" || strings.ContainsAny(s.Name, " \t\r\n.*>") {
		return &KeyError{key + ".name", "must be a word without spaces or dots"}
	}
	switch s.Kind {
	case KindMTA, KindSubmission, KindSMTPS, KindODMR:
	default:
		return &KeyError{key + ".kind", "must be mta, submission, smtps or odmr"}
	}
	if len(s.Listen) == 0 {
		return &KeyError{key + ".listen", "needs at least one address"}
	}
	for _, l := range s.Listen {
		if err := checkHostPort(key+".listen", l, smtpListenAddr); err != nil {
			return err
		}
	}
	if strings.TrimSpace(s.Hostname) == "" || strings.ContainsAny(s.Hostname, " \t\r\n") {
		return &KeyError{key + ".hostname", "must be a host name"}
	}
	if strings.ContainsAny(s.Banner, "\r\n") {
		return &KeyError{key + ".banner", "must be one line"}
	}
	if (s.TLSCert == "") != (s.TLSKey == "") {
		return &KeyError{key + ".tls_cert", "tls_cert and tls_key go together"}
	}
	for _, d := range s.LocalDomains {
		if dom, ok := c.Domain(d); !c.IsLocal(d) && !(ok && dom.Type == DomainAlias) {
			return &KeyError{key + ".local_domains", fmt.Sprintf("%q is not a local or alias domain", d)}
		}
	}
	for k, list := range map[string][]string{"connect_allow": s.ConnectAllow, "connect_deny": s.ConnectDeny} {
		if _, err := ParseConnectRules(list); err != nil {
			return &KeyError{key + "." + k, err.Error()}
		}
	}
	for _, z := range s.DNSBL {
		if err := envelope.CheckDomain(strings.TrimSuffix(z, ".")); err != nil || !strings.Contains(z, ".") {
			return &KeyError{key + ".dnsbl", fmt.Sprintf("%q is not a DNS zone", z)}
		}
	}
	for k, list := range map[string][]string{"relay_networks": s.RelayNetworks, "etrn_networks": s.ETRNNetworks, "bare_newline_normalize": s.BareNewlineNormalize} {
		if _, err := parseNetworks(list); err != nil {
			return &KeyError{key + "." + k, err.Error()}
		}
	}
	if err := checkLogDir(c.SiteLogDir(s)); err != nil {
		return &KeyError{key + ".log_dir", err.Error()}
	}
	if err := validateAuthChecks(key, s); err != nil {
		return err
	}
	switch s.Auth {
	case AuthOff, AuthOptional, AuthRequired:
	default:
		return &KeyError{key + ".auth", "must be off, optional or required"}
	}
	if s.ATRN && s.Auth == AuthOff {
		return &KeyError{key + ".atrn", "ATRN needs auth = \"optional\" or \"required\""}
	}
	switch s.BareNewline {
	case BareNewlineReject, BareNewlineNormalize:
	default:
		return &KeyError{key + ".bare_newline", "must be reject or normalize"}
	}
	switch {
	case s.MaxMessageSize <= 0:
		return &KeyError{key + ".max_message_size", "must be greater than 0"}
	case s.MaxSessionSize < 0:
		return &KeyError{key + ".max_session_size", "must not be negative"}
	case s.MaxMessagesPerConnection < 0:
		return &KeyError{key + ".max_messages_per_connection", "must not be negative"}
	case s.MaxRecipients <= 0:
		return &KeyError{key + ".max_recipients", "must be greater than 0"}
	case s.Timeout <= 0:
		return &KeyError{key + ".timeout", "must be greater than 0"}
	case s.MaxConnections <= 0:
		return &KeyError{key + ".max_connections", "must be greater than 0"}
	case s.MaxConnectionsPerIP <= 0:
		return &KeyError{key + ".max_connections_per_ip", "must be greater than 0"}
	case s.MaxBadCommands <= 0:
		return &KeyError{key + ".max_bad_commands", "must be greater than 0"}
	case s.MaxLineLength < 1000:
		return &KeyError{key + ".max_line_length", "must be at least 1000 (RFC 5321 §4.5.3.1.6)"}
	}
	return nil
}

// checkLogDir checks the directory of a site's transaction log: one line
// of text, and where something exists at that path (or at a parent of
// it) a directory.
func checkLogDir(d string) error {
	if d == "" {
		return nil
	}
	if strings.ContainsAny(d, "\x00\r\n") {
		return fmt.Errorf("%q: must be one line of text", d)
	}
	for p := d; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("%s is not a directory", p)
			}
			return nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if filepath.Dir(p) == p {
			return nil
		}
	}
}
