// Package config reads Mailroot's one TOML configuration file. Defaults are
// in code (Default), every key is documented in the README, and Load
// rejects unknown keys and bad values with an error naming the key.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/mailroot/mailroot/internal/envelope"
)

// Duration is a time.Duration written as a Go duration string ("15m").
type Duration time.Duration

// UnmarshalText parses "15m", "48h", "2s", "30d" (ParseDuration).
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("not a duration like \"15m\" or \"30d\": %q", b)
	}
	*d = Duration(v)
	return nil
}

// ParseDuration is time.ParseDuration that also takes days, the unit of
// retention: "30d", "1d12h" (a day is 24 hours). The days come first, as
// a whole number, and are the only addition.
func ParseDuration(s string) (time.Duration, error) {
	days, rest, ok := strings.Cut(s, "d")
	if !ok {
		return time.ParseDuration(s)
	}
	sign := time.Duration(1)
	if d, found := strings.CutPrefix(days, "-"); found {
		sign, days = -1, d
	}
	if days == "" || len(days) > 5 || strings.Trim(days, "0123456789") != "" {
		return 0, fmt.Errorf("config: bad duration %q", s)
	}
	n, err := strconv.Atoi(days)
	if err != nil {
		return 0, fmt.Errorf("config: bad duration %q", s)
	}
	d := time.Duration(n) * 24 * time.Hour
	if rest != "" {
		if rest[0] == '-' || rest[0] == '+' {
			return 0, fmt.Errorf("config: bad duration %q", s)
		}
		r, err := time.ParseDuration(rest)
		if err != nil || r > math.MaxInt64-d {
			return 0, fmt.Errorf("config: bad duration %q", s)
		}
		d += r
	}
	return sign * d, nil
}

// MarshalText renders the duration as a string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Config is the whole configuration. Each service takes the part it needs.
type Config struct {
	// Source is the TOML text the configuration was read from ("" for
	// none): the base the live configuration's keys apply over
	// (internal/liveconfig).
	Source string `toml:"-"`
	// Hostname is this server's name in the banner, EHLO and Received.
	Hostname string `toml:"hostname"`
	// DataDir holds Pickup/, Drop/, Badmail/ and nats/.
	DataDir string `toml:"data_dir"`
	// LocalDomains receive mail into Drop/<domain>/.
	LocalDomains []string `toml:"local_domains"`
	// DefaultDomain is stamped on sender addresses without a domain, and
	// alias domains are rewritten to it. Empty: the first local domain.
	DefaultDomain string `toml:"default_domain"`
	// Domains holds per-domain settings ([[domain]] blocks).
	Domains []Domain `toml:"domain"`
	// DKIM holds signing keys given by hand ([[dkim]] blocks); a domain
	// with a block signs with its blocks' keys only, others with the keys
	// found under data_dir/dkim.
	DKIM []DKIM `toml:"dkim"`
	// LogLevel is trace, debug, info, warn or error; trace adds the SMTP
	// transcripts of ingress (AUTH and message content redacted).
	LogLevel string `toml:"log_level"`
	// LogFormat is text or json.
	LogFormat string `toml:"log_format"`

	Ingress  Ingress  `toml:"ingress"`
	Router   Router   `toml:"router"`
	Delivery Delivery `toml:"delivery"`
	Pickup   Pickup   `toml:"pickup"`
	Drop     Drop     `toml:"drop"`
	NATS     NATS     `toml:"nats"`
	Events   Events   `toml:"events"`
	// Auth holds the SMTP AUTH users file and failed-login limits.
	Auth Auth `toml:"auth"`
	// Metrics is the Prometheus listener of the process.
	Metrics Metrics `toml:"metrics"`
	// DNS is the resolver of every actor (internal/resolver).
	DNS DNS `toml:"dns"`
	// Admin is the web admin console (internal/admin).
	Admin Admin `toml:"admin"`

	// SiteBlocks are the raw [[site]] blocks; Load resolves them into Sites.
	SiteBlocks []toml.Primitive `toml:"site"`
	// Sites are the SMTP sites (resolved [[site]] blocks); none means
	// [ingress] alone is the one site (see EffectiveSites).
	Sites []Site `toml:"-"`
}

// DNS configures the one resolver (internal/resolver).
type DNS struct {
	// Servers ("ip:port") are asked in order, the next when one fails;
	// empty: delivery.dns_server when set, else every nameserver of
	// /etc/resolv.conf.
	Servers []string `toml:"servers"`
	// Timeout bounds one question to one server.
	Timeout Duration `toml:"timeout"`
	// Attempts is how many rounds over the servers a lookup makes.
	Attempts int `toml:"attempts"`
	// TrustAD says the servers validate DNSSEC, so that their AD bit is
	// believed (DANE needs it). Set it only for a validating resolver on
	// this host or a trusted network path (RFC 7672 §1.3).
	TrustAD bool `toml:"trust_ad"`
	// CacheSize is how many answers are kept, for their TTL (capped at
	// 5 min); 0 keeps none (a local caching resolver is better).
	CacheSize int `toml:"cache_size"`
}

// ResolverServers returns the DNS servers configured, in order; empty
// means those of /etc/resolv.conf.
func (c Config) ResolverServers() []string {
	if len(c.DNS.Servers) > 0 {
		return c.DNS.Servers
	}
	if c.Delivery.DNSServer != "" {
		return []string{c.Delivery.DNSServer}
	}
	return nil
}

// Domain types.
const (
	DomainLocal  = "local"  // mail is written to the domain's Drop directory
	DomainAlias  = "alias"  // addresses are rewritten to the default domain
	DomainRemote = "remote" // settings for delivery to a remote domain
)

// Domain is one [[domain]] block: a local domain with its own Drop
// directory, an alias of the default domain, or settings for a remote
// domain.
type Domain struct {
	// Name is the domain (normalised to a lower-case A-label).
	Name string `toml:"name"`
	// Type is local, alias or remote.
	Type string `toml:"type"`
	// DropDir (local) overrides Drop/<name>/.
	DropDir string `toml:"drop_dir"`
	// RecipientsFile (local) lists the domain's valid recipients, one
	// address or @domain catch-all a line: RCPT TO any other address of
	// the domain gets 550 5.1.1 (see Ingress.RecipientsFile).
	RecipientsFile string `toml:"recipients_file"`
	// SmartHost (remote) sends this domain's mail to host:port.
	SmartHost string `toml:"smart_host"`
	// SmartHostUser and SmartHostPasswordFile (remote) log in to this
	// domain's smart host (AUTH); the password is the file's first line.
	SmartHostUser         string `toml:"smart_host_user"`
	SmartHostPasswordFile string `toml:"smart_host_password_file"`
	// RequireTLS (remote) refuses to deliver without STARTTLS.
	RequireTLS bool `toml:"require_tls"`
	// Hold (remote) keeps the domain's mail queued until ETRN/ATRN.
	Hold bool `toml:"hold"`
	// Paused (remote) stops delivery to the domain: its mail waits in the
	// queue, nothing bounces and no attempt is counted, until it is
	// resumed (meant to be set live: `mailroot config set domain.NAME
	// '{type = "remote", paused = true}'`).
	Paused bool `toml:"paused"`
	// MaxConnections and MessagesPerMinute (remote) override the
	// delivery limits of the same names for this domain; 0: the
	// default's, -1: no cap.
	MaxConnections    int `toml:"max_connections"`
	MessagesPerMinute int `toml:"messages_per_minute"`
}

// Ingress configures the SMTP server ([ingress]): the site keys, whose
// values are the defaults of every [[site]] block; with no [[site]]
// blocks they configure the one site made of [ingress].
type Ingress struct {
	SiteKeys
	// RecipientsFile lists the valid recipients of every local domain
	// (one address or @domain catch-all a line, # comments), re-read
	// when it changes; with it, or RecipientsUsers, or a domain's own
	// recipients_file, RCPT TO an address of a local domain (an alias
	// domain's after its rewrite) that no list names gets "550 5.1.1
	// User unknown". Empty, and no other list: any local part is
	// accepted, as IIS did.
	RecipientsFile string `toml:"recipients_file"`
	// RecipientsUsers makes every AUTH user named by an address (the
	// users file) a valid recipient, and turns recipient checks on.
	RecipientsUsers bool `toml:"recipients_users"`
}

// Router configures the router.
type Router struct {
	// MaxHopCount is the number of Received: headers past which mail is
	// treated as looping.
	MaxHopCount int `toml:"max_hop_count"`
}

// Delivery configures remote delivery and the Drop writer.
type Delivery struct {
	// Concurrency is the number of SMTP transactions in flight per process.
	Concurrency int `toml:"concurrency"`
	// SmartHost, when set ("host:port" or "[ip]:port"), receives all remote mail.
	SmartHost string `toml:"smart_host"`
	// SmartHostUser logs in to the smart host (AUTH PLAIN, or LOGIN); the
	// password is the first line of SmartHostPasswordFile, or else the
	// environment variable MAILROOT_SMART_HOST_PASSWORD: it is never in
	// the configuration. On port 465 TLS is implicit (RFC 8314), else
	// STARTTLS; the password goes only over TLS whose certificate
	// verified, unless SmartHostInsecure.
	SmartHostUser         string `toml:"smart_host_user"`
	SmartHostPasswordFile string `toml:"smart_host_password_file"`
	SmartHostInsecure     bool   `toml:"smart_host_insecure"`
	// DNSServer ("ip:port") answers MX/A/AAAA queries; empty = /etc/resolv.conf.
	DNSServer string `toml:"dns_server"`
	// TLSCAFile, when set, holds the PEM certificates that verify remote
	// servers instead of the system's roots (a private PKI).
	TLSCAFile string `toml:"tls_ca_file"`
	// MTASTS honours the MTA-STS policies (RFC 8461) remote domains
	// publish: in enforce mode mail goes only to the MX hosts a policy
	// names, over TLS that verifies (delivery/tlspolicy.go).
	MTASTS bool `toml:"mta_sts"`
	// Port is the remote SMTP port.
	Port int `toml:"port"`
	// Retry is the retry ladder; the last step repeats.
	Retry []Duration `toml:"retry"`
	// Expire is how long a message may stay queued before it bounces.
	Expire Duration `toml:"expire"`
	// ConnectTimeout bounds dialling one MX.
	ConnectTimeout Duration `toml:"connect_timeout"`
	// CommandTimeout bounds each SMTP command/reply with a remote.
	CommandTimeout Duration `toml:"command_timeout"`
	// ConnectionCacheTime is how long a connection stays open after its
	// message, for the next message to the same host (Postfix's
	// smtp_connection_cache_time_limit); 0 closes it after each message.
	ConnectionCacheTime Duration `toml:"connection_cache_time"`
	// ConnectionReuseTime is how long after its connect a connection may
	// still carry another message (smtp_connection_reuse_time_limit).
	ConnectionReuseTime Duration `toml:"connection_reuse_time"`
	// ConnectionReuseCount is how many messages one connection carries
	// at most (smtp_connection_reuse_count_limit).
	ConnectionReuseCount int `toml:"connection_reuse_count"`
	// MaxConnectionsPerDomain caps the connections open at once to one
	// destination domain, across every delivery worker of the cluster
	// (IIS's "limit connections per domain"); 0: no cap. [[domain]]
	// max_connections overrides it.
	MaxConnectionsPerDomain int `toml:"max_connections_per_domain"`
	// MessagesPerMinute caps the messages sent to one destination domain
	// a minute, cluster-wide; 0: no cap. [[domain]] messages_per_minute
	// overrides it.
	MessagesPerMinute int `toml:"messages_per_minute"`
	// MasqueradeDomain replaces the domain of the envelope sender of mail
	// leaving over SMTP (IIS's "masquerade domain"); "": off.
	MasqueradeDomain string `toml:"masquerade_domain"`
	// MasqueradeSenders limits masquerading to senders of these domains;
	// empty: every sender.
	MasqueradeSenders []string `toml:"masquerade_senders"`
	// RetryJitter spreads each retry by up to ± this fraction of its step
	// (0.1 = ±10 %), so that mail deferred together is not retried together.
	RetryJitter float64 `toml:"retry_jitter"`
	// DelayNotice is how long after arrival a still-undelivered message
	// gets one "delayed" notice to its sender (0 = never).
	DelayNotice Duration `toml:"delay_notice"`
	// LocalExpire is Expire for local delivery (writing the Drop directory).
	LocalExpire Duration `toml:"local_expire"`
	// LocalDelayNotice is DelayNotice for local delivery.
	LocalDelayNotice Duration `toml:"local_delay_notice"`
	// NDRCopyTo, when set, receives a copy of every non-delivery report
	// (IIS "Send copy of Non-Delivery Report to").
	NDRCopyTo string `toml:"ndr_copy_to"`
	// NDRReturnLimit is the largest original message returned whole inside
	// a non-delivery report; larger ones are returned as headers only.
	NDRReturnLimit int64 `toml:"ndr_return_limit"`
	// AckWait is how long a message taken by a delivery process that died
	// waits before another process tries it. Live processes renew it
	// during long transactions.
	AckWait Duration `toml:"ack_wait"`
	// DANE authenticates remote servers by DNSSEC-validated TLSA records
	// (RFC 7672) where they publish them. It only ever acts with
	// dns.trust_ad (a validating resolver): without it no answer is
	// secure, and no TLSA record is used.
	DANE bool `toml:"dane"`
	// AddressPreference orders the addresses of a mail host: "any" (the
	// default) alternates IPv4 and IPv6, IPv4 first; "ipv4" or "ipv6"
	// tries every address of that family first. The other family is
	// always tried when the preferred one fails.
	AddressPreference string `toml:"address_preference"`

	// TLSRPT (RFC 8460) counts the TLS outcome of every session to a
	// domain whose policy is MTA-STS or DANE, and sends each such domain
	// that publishes a _smtp._tls TXT record its daily aggregate report
	// (delivery/tlsrpt.go). Off by default.
	TLSRPT bool `toml:"tls_rpt"`
	// TLSRPTContact is the report's contact-info and the report mail's
	// sender ("" = postmaster@hostname); TLSRPTOrg its organization-name
	// ("" = hostname).
	TLSRPTContact string `toml:"tls_rpt_contact"`
	TLSRPTOrg     string `toml:"tls_rpt_org"`
}

// The values of delivery.address_preference.
const (
	AddressAny  = "any"
	AddressIPv4 = "ipv4"
	AddressIPv6 = "ipv6"
)

// Pickup configures the pickup directory watcher.
type Pickup struct {
	// Interval between scans of Pickup/.
	Interval Duration `toml:"interval"`
	// StableFor is how long a file's size and mtime must be unchanged
	// before a file written in place (not renamed in) is taken.
	StableFor Duration `toml:"stable_for"`
}

// Drop configures how local mail is written to Drop directories.
type Drop struct {
	// EnvelopeLines writes "x-sender:" and "x-receiver:" lines (IIS format)
	// at the top of each file, so programs reading the directory know the
	// envelope recipients, Bcc included.
	EnvelopeLines bool `toml:"envelope_lines"`
}

// Events configures the MAIL_EVENTS stream, the mail log (README "Events").
type Events struct {
	// MaxAge is how long events are kept ("30d").
	MaxAge Duration `toml:"max_age"`
}

// NATS configures the connection to NATS, or the embedded server of `all`.
// The nats.sync modes besides a duration.
const (
	SyncAlways   = "always"
	SyncPerWrite = "per-write"
)

// SyncInterval is the duration of nats.sync, 0 for the modes.
func (n NATS) SyncInterval() time.Duration {
	d, _ := time.ParseDuration(n.Sync)
	return d
}

type NATS struct {
	// URL of the NATS servers (comma-separated); empty = embedded (all only).
	URL string `toml:"url"`
	// Listen exposes the embedded server on host:port (empty = no listener).
	Listen string `toml:"listen"`
	// Sync is "always" (the default: the store is synced before every 250
	// and every ack of a predecessor, concurrent writers sharing one sync),
	// "per-write" (nats-server fsyncs each record itself) or a duration
	// for the embedded server's sync interval (no sync before a 250).
	Sync string `toml:"sync"`
	// SyncDelay is how long the group commit waits for more writers to
	// share a sync (nats.sync = "always" only).
	SyncDelay Duration `toml:"sync_delay"`
	// SyncMethod is how the group commit syncs the embedded server's
	// store: "files" fdatasyncs the changed block files of the mail
	// streams, "syncfs" the store's whole file system.
	SyncMethod string `toml:"sync_method"`
	// Replicas of the MAIL stream and buckets: 1, or 3 on a cluster.
	Replicas int `toml:"replicas"`
	// MaxStore caps the embedded server's JetStream file store in bytes.
	MaxStore int64 `toml:"max_store"`
	// Reserve is the room kept for mail already accepted: new mail is
	// refused (452 4.3.1) once less than this is left, in the store's
	// limit and on the file system of the embedded store, so the pipeline
	// can always route, retry and bounce what it holds. "5%" (of the
	// limit, and of the file system's size) or a size like "64MiB".
	Reserve Reserve `toml:"reserve"`
	// User, Password, Token and CredsFile authenticate to NATS.
	User      string `toml:"user"`
	Password  string `toml:"password"`
	Token     string `toml:"token"`
	CredsFile string `toml:"creds_file"`
	// CAFile, CertFile and KeyFile configure TLS to NATS.
	CAFile   string `toml:"ca_file"`
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
}

// Metrics is the [metrics] section.
type Metrics struct {
	// Listen is where the process serves Prometheus metrics on /metrics
	// (host:port; port 0: a free port; empty: no listener). Every
	// process, `mailroot all` and each actor, takes the same default:
	// actors on one host need one each.
	Listen string `toml:"listen"`
	// Pprof also serves Go's profiler on /debug/pprof/ of that listener
	// (off by default: a profile shows the process's internals and a CPU
	// profile costs while it runs).
	Pprof bool `toml:"pprof"`
}

// DefaultMetricsListen is metrics.listen by default: loopback only, as
// the metrics say how much mail flows where; 9425 is used by no other
// default of Mailroot (SMTP 2525, NATS 4222).
const DefaultMetricsListen = "127.0.0.1:9425"

// Default returns the configuration used when no file is given.
func Default() Config {
	host, _ := os.Hostname()
	if host == "" {
		host = "localhost"
	}
	return Config{
		Hostname:     host,
		DataDir:      "mailroot-data",
		LocalDomains: []string{"localhost"},
		LogLevel:     "info",
		LogFormat:    "text",
		Ingress: Ingress{SiteKeys: SiteKeys{
			Listen:         []string{"127.0.0.1:2525"},
			RelayNetworks:  []string{"127.0.0.0/8", "::1/128"},
			MaxMessageSize: 10 << 20,
			MaxRecipients:  100,
			Timeout:        Duration(10 * time.Minute),
			MaxConnections: 1000,

			MaxConnectionsPerIP:  50,
			MaxBadCommands:       20,
			MaxLineLength:        2000,
			BareNewline:          BareNewlineReject,
			BareNewlineNormalize: []string{},
			Banner:               "ESMTP Mailroot",
			StartTLS:             true,
			Auth:                 AuthOptional,
			ETRN:                 true,
			ETRNNetworks:         []string{},
			ConnectAllow:         []string{},
			ConnectDeny:          []string{},
			DNSBL:                []string{},

			// Inbound authentication checks: verdicts recorded, no
			// mail refused (see README).
			AuthChecks:      true,
			SPFFail:         ActionTag,
			DMARCReject:     ActionTag,
			DMARCQuarantine: ActionTag,
		}},
		Auth:    DefaultAuth(),
		Metrics: Metrics{Listen: DefaultMetricsListen},
		Admin:   Admin{Listen: DefaultAdminListen},
		DNS:     DNS{Timeout: Duration(5 * time.Second), Attempts: 2},
		Router:  Router{MaxHopCount: 15},
		Delivery: Delivery{
			Concurrency:       100,
			Port:              25,
			Retry:             []Duration{Duration(15 * time.Minute), Duration(30 * time.Minute), Duration(60 * time.Minute), Duration(240 * time.Minute)},
			Expire:            Duration(48 * time.Hour),
			ConnectTimeout:    Duration(30 * time.Second),
			CommandTimeout:    Duration(5 * time.Minute),
			RetryJitter:       0.1,
			DelayNotice:       Duration(12 * time.Hour),
			LocalExpire:       Duration(48 * time.Hour),
			LocalDelayNotice:  Duration(12 * time.Hour),
			NDRReturnLimit:    10 << 20,
			AckWait:           Duration(2 * time.Minute),
			DANE:              true,
			AddressPreference: AddressAny,
			MTASTS:            true,

			// Connection reuse, with Postfix's limits (and a count).
			ConnectionCacheTime:  Duration(2 * time.Second),
			ConnectionReuseTime:  Duration(5 * time.Minute),
			ConnectionReuseCount: 100,
		},
		Pickup: Pickup{Interval: Duration(time.Second), StableFor: Duration(2 * time.Second)},
		Drop:   Drop{EnvelopeLines: true},
		NATS:   NATS{Sync: "always", SyncDelay: Duration(time.Millisecond), SyncMethod: "syncfs", Replicas: 1, Reserve: Reserve{Percent: 5}},
		Events: Events{MaxAge: Duration(30 * 24 * time.Hour)},
	}
}

// KeyError is a configuration error about one key; main exits with status 2.
type KeyError struct {
	Key string
	Msg string
}

func (e *KeyError) Error() string { return fmt.Sprintf("config: %s: %s", e.Key, e.Msg) }

// Load reads path (if not empty) over the defaults and validates the result.
func Load(path string) (Config, error) {
	c := Default()
	if path != "" {
		if err := c.decodeFile(path); err != nil {
			return c, err
		}
	}
	return c, c.Validate()
}

// Parse reads TOML text over the defaults and validates the result, as
// Load does a file (the live configuration, internal/liveconfig, builds
// its text from the file and the live keys).
func Parse(text string) (Config, error) {
	c := Default()
	if err := c.decode(text); err != nil {
		return c, err
	}
	return c, c.Validate()
}

// decodeFile reads path over c: the keys it sets, the [[site]] blocks
// resolved into Sites, no key left unknown. Nothing is validated yet.
func (c *Config) decodeFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return c.decode(string(b))
}

func (c *Config) decode(text string) error {
	c.Source = text
	md, err := toml.Decode(text, c)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			return &KeyError{Key: keyOf(perr), Msg: perr.Message}
		}
		return fmt.Errorf("config: %w", err)
	}
	if err := c.decodeSites(md); err != nil {
		return err
	}
	if und := md.Undecoded(); len(und) > 0 {
		return &KeyError{Key: und[0].String(), Msg: "unknown key"}
	}
	return nil
}

func keyOf(e toml.ParseError) string {
	if e.LastKey != "" {
		return e.LastKey
	}
	return fmt.Sprintf("line %d", e.Position.Line)
}

// Validate checks every value and normalises domains.
func (c *Config) Validate() error {
	if strings.TrimSpace(c.Hostname) == "" || strings.ContainsAny(c.Hostname, " \t\r\n") {
		return &KeyError{"hostname", "must be a host name"}
	}
	if c.DataDir == "" {
		return &KeyError{"data_dir", "must not be empty"}
	}
	for i, d := range c.LocalDomains {
		n := envelope.NormalizeDomain(d)
		if n == "" || strings.ContainsAny(n, " @/\\") {
			return &KeyError{"local_domains", fmt.Sprintf("%q is not a domain", d)}
		}
		c.LocalDomains[i] = n
	}
	for i := range c.Domains {
		d := &c.Domains[i]
		key := fmt.Sprintf("domain[%d]", i)
		d.Name = envelope.NormalizeDomain(d.Name)
		if d.Name == "" || strings.ContainsAny(d.Name, " @/\\") {
			return &KeyError{key + ".name", fmt.Sprintf("%q is not a domain", d.Name)}
		}
		switch d.Type {
		case DomainLocal, DomainAlias, DomainRemote:
		case "":
			d.Type = DomainLocal
		default:
			return &KeyError{key + ".type", "must be local, alias or remote"}
		}
		if d.DropDir != "" && d.Type != DomainLocal {
			return &KeyError{key + ".drop_dir", "only for type = \"local\""}
		}
		if d.RecipientsFile != "" && d.Type != DomainLocal {
			return &KeyError{key + ".recipients_file", "only for type = \"local\""}
		}
		if (d.SmartHost != "" || d.RequireTLS || d.Hold) && d.Type != DomainRemote {
			return &KeyError{key, "smart_host, require_tls and hold are only for type = \"remote\""}
		}
		if d.SmartHost != "" {
			if err := checkHostPort(key+".smart_host", d.SmartHost, remoteAddr); err != nil {
				return err
			}
		}
		if err := checkLogin(key, d.SmartHost, d.SmartHostUser, d.SmartHostPasswordFile, false); err != nil {
			return err
		}
		for j := range i {
			if c.Domains[j].Name == d.Name {
				return &KeyError{key + ".name", fmt.Sprintf("%q is configured twice", d.Name)}
			}
		}
	}
	if c.DefaultDomain != "" {
		c.DefaultDomain = envelope.NormalizeDomain(c.DefaultDomain)
		if !c.IsLocal(c.DefaultDomain) {
			return &KeyError{"default_domain", fmt.Sprintf("%q is not a local domain", c.DefaultDomain)}
		}
	}
	switch c.LogLevel {
	case "trace", "debug", "info", "warn", "error":
	default:
		return &KeyError{"log_level", "must be trace, debug, info, warn or error"}
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		return &KeyError{"log_format", "must be text or json"}
	}
	for _, l := range c.Ingress.Listen {
		if err := checkHostPort("ingress.listen", l, smtpListenAddr); err != nil {
			return err
		}
	}
	if _, err := c.Ingress.RelayPrefixes(); err != nil {
		return &KeyError{"ingress.relay_networks", err.Error()}
	}
	if c.Ingress.MaxMessageSize <= 0 {
		return &KeyError{"ingress.max_message_size", "must be greater than 0"}
	}
	if c.Ingress.MaxRecipients <= 0 {
		return &KeyError{"ingress.max_recipients", "must be greater than 0"}
	}
	if c.Ingress.Timeout <= 0 {
		return &KeyError{"ingress.timeout", "must be greater than 0"}
	}
	if c.Ingress.MaxConnections <= 0 {
		return &KeyError{"ingress.max_connections", "must be greater than 0"}
	}
	if c.Router.MaxHopCount <= 0 {
		return &KeyError{"router.max_hop_count", "must be greater than 0"}
	}
	if c.Delivery.Concurrency <= 0 {
		return &KeyError{"delivery.concurrency", "must be greater than 0"}
	}
	if c.Delivery.SmartHost != "" {
		if err := checkHostPort("delivery.smart_host", c.Delivery.SmartHost, remoteAddr); err != nil {
			return err
		}
	}
	if err := checkLogin("delivery", c.Delivery.SmartHost, c.Delivery.SmartHostUser, c.Delivery.SmartHostPasswordFile, true); err != nil {
		return err
	}
	if c.Delivery.DNSServer != "" {
		if err := checkHostPort("delivery.dns_server", c.Delivery.DNSServer, ipAddr); err != nil {
			return err
		}
	}
	for i, srv := range c.DNS.Servers {
		if err := checkHostPort(fmt.Sprintf("dns.servers[%d]", i), srv, ipAddr); err != nil {
			return err
		}
	}
	if c.DNS.Timeout <= 0 {
		return &KeyError{"dns.timeout", "must be greater than 0"}
	}
	if c.DNS.Attempts <= 0 || c.DNS.Attempts > 10 {
		return &KeyError{"dns.attempts", "must be from 1 to 10"}
	}
	if c.DNS.CacheSize < 0 {
		return &KeyError{"dns.cache_size", "must not be negative"}
	}
	if c.Delivery.Port <= 0 || c.Delivery.Port > 65535 {
		return &KeyError{"delivery.port", "must be a TCP port"}
	}
	switch c.Delivery.AddressPreference {
	case AddressAny, AddressIPv4, AddressIPv6:
	default:
		return &KeyError{"delivery.address_preference", fmt.Sprintf("%q is not any, ipv4 or ipv6", c.Delivery.AddressPreference)}
	}
	if a := c.Delivery.TLSRPTContact; a != "" {
		if err := envelope.CheckAddress(a); err != nil {
			return &KeyError{"delivery.tls_rpt_contact", err.Error()}
		}
	}
	if len(c.Delivery.Retry) == 0 {
		return &KeyError{"delivery.retry", "needs at least one step"}
	}
	for _, r := range c.Delivery.Retry {
		if r < Duration(time.Second) {
			return &KeyError{"delivery.retry", "steps must be at least 1s (schedules have second resolution)"}
		}
	}
	if c.Delivery.Expire <= 0 {
		return &KeyError{"delivery.expire", "must be greater than 0"}
	}
	if c.Delivery.ConnectTimeout <= 0 {
		return &KeyError{"delivery.connect_timeout", "must be greater than 0"}
	}
	if c.Delivery.CommandTimeout <= 0 {
		return &KeyError{"delivery.command_timeout", "must be greater than 0"}
	}
	if c.Delivery.ConnectionCacheTime < 0 {
		return &KeyError{"delivery.connection_cache_time", "must not be negative (0 = no connection reuse)"}
	}
	if c.Delivery.ConnectionReuseTime <= 0 {
		return &KeyError{"delivery.connection_reuse_time", "must be greater than 0"}
	}
	if c.Delivery.ConnectionReuseCount <= 0 {
		return &KeyError{"delivery.connection_reuse_count", "must be greater than 0"}
	}
	if c.Delivery.MaxConnectionsPerDomain < 0 {
		return &KeyError{"delivery.max_connections_per_domain", "must be 0 (no cap) or more"}
	}
	if c.Delivery.MessagesPerMinute < 0 {
		return &KeyError{"delivery.messages_per_minute", "must be 0 (no cap) or more"}
	}
	if d := c.Delivery.MasqueradeDomain; d != "" && !isHostName(d) {
		return &KeyError{"delivery.masquerade_domain", fmt.Sprintf("%q is not a domain name", d)}
	}
	for _, d := range c.Delivery.MasqueradeSenders {
		if !isHostName(d) {
			return &KeyError{"delivery.masquerade_senders", fmt.Sprintf("%q is not a domain name", d)}
		}
	}
	for _, d := range c.Domains {
		if d.MaxConnections < -1 || d.MessagesPerMinute < -1 {
			return &KeyError{"domain " + d.Name, "max_connections and messages_per_minute must be -1 (no cap), 0 (the default's) or more"}
		}
	}
	if c.Delivery.RetryJitter < 0 || c.Delivery.RetryJitter > 0.5 {
		return &KeyError{"delivery.retry_jitter", "must be between 0 and 0.5"}
	}
	if c.Delivery.DelayNotice < 0 {
		return &KeyError{"delivery.delay_notice", "must not be negative (0 = no delay notices)"}
	}
	if c.Delivery.LocalExpire <= 0 {
		return &KeyError{"delivery.local_expire", "must be greater than 0"}
	}
	if c.Delivery.LocalDelayNotice < 0 {
		return &KeyError{"delivery.local_delay_notice", "must not be negative (0 = no delay notices)"}
	}
	if c.Delivery.NDRCopyTo != "" {
		if err := envelope.CheckAddress(c.Delivery.NDRCopyTo); err != nil {
			return &KeyError{"delivery.ndr_copy_to", fmt.Sprintf("%q is not a mail address", c.Delivery.NDRCopyTo)}
		}
	}
	if c.Delivery.NDRReturnLimit < 0 {
		return &KeyError{"delivery.ndr_return_limit", "must not be negative"}
	}
	if c.Delivery.AckWait < Duration(3*time.Second) {
		return &KeyError{"delivery.ack_wait", "must be at least 3s"}
	}
	if c.Pickup.Interval <= 0 {
		return &KeyError{"pickup.interval", "must be greater than 0"}
	}
	if c.Pickup.StableFor < 0 {
		return &KeyError{"pickup.stable_for", "must not be negative"}
	}
	if c.NATS.Sync != SyncAlways && c.NATS.Sync != SyncPerWrite {
		if d, err := time.ParseDuration(c.NATS.Sync); err != nil || d <= 0 {
			return &KeyError{"nats.sync", `must be "always", "per-write" or a duration like "2m"`}
		}
	}
	if m := c.NATS.SyncMethod; m != "files" && m != "syncfs" {
		return &KeyError{"nats.sync_method", fmt.Sprintf("%q: must be files or syncfs", m)}
	}
	if d := c.NATS.SyncDelay.D(); d < 0 || d > 100*time.Millisecond {
		return &KeyError{"nats.sync_delay", "must be between 0 and 100ms"}
	}
	if c.NATS.Replicas != 1 && c.NATS.Replicas != 3 && c.NATS.Replicas != 5 {
		return &KeyError{"nats.replicas", "must be 1, 3 or 5"}
	}
	if c.NATS.MaxStore < 0 {
		return &KeyError{"nats.max_store", "must not be negative"}
	}
	if c.NATS.Reserve.Percent < 0 || c.NATS.Reserve.Percent > 50 || c.NATS.Reserve.Bytes < 0 {
		return &KeyError{"nats.reserve", "must be a percentage from 0% to 50% or a size like \"64MiB\""}
	}
	if c.NATS.Listen != "" {
		if err := checkHostPort("nats.listen", c.NATS.Listen, listenAddr); err != nil {
			return err
		}
	}
	if err := checkNATSURLs(c.NATS.URL); err != nil {
		return err
	}
	if err := c.checkMetricsListen(); err != nil {
		return err
	}
	if err := c.checkAdmin(); err != nil {
		return err
	}
	for i, d := range c.DKIM {
		key := fmt.Sprintf("dkim[%d]", i)
		switch {
		case d.Domain == "":
			return &KeyError{key + ".domain", "is required"}
		case d.Selector == "":
			return &KeyError{key + ".selector", "is required"}
		case d.KeyFile == "":
			return &KeyError{key + ".key_file", "is required (a PEM key: mailroot dkim keygen makes one)"}
		}
		for j := range i {
			if strings.EqualFold(c.DKIM[j].Domain, d.Domain) && strings.EqualFold(c.DKIM[j].Selector, d.Selector) {
				return &KeyError{key + ".selector", fmt.Sprintf("%q is given twice for %s", d.Selector, d.Domain)}
			}
		}
		if len(d.Headers) > 0 && !slices.ContainsFunc(d.Headers, func(h string) bool { return strings.EqualFold(h, "From") }) {
			return &KeyError{key + ".headers", "must include From (RFC 6376 §5.4)"}
		}
	}
	if c.Events.MaxAge < Duration(time.Minute) {
		return &KeyError{"events.max_age", `must be at least 1m (the default is "30d")`}
	}
	return c.validateSites()
}

// RelayPrefixes parses RelayNetworks.
func (i Ingress) RelayPrefixes() ([]netip.Prefix, error) { return parseNetworks(i.RelayNetworks) }

// IsLocal reports whether domain (any case, trailing dot) is a local
// domain: listed in local_domains or a [[domain]] of type local.
func (c Config) IsLocal(domain string) bool {
	d := envelope.NormalizeDomain(domain)
	for _, l := range c.LocalDomains {
		if l == d {
			return true
		}
	}
	dom, ok := c.Domain(d)
	return ok && dom.Type == DomainLocal
}

// Domain returns the [[domain]] block for domain, if there is one.
func (c Config) Domain(domain string) (Domain, bool) {
	d := envelope.NormalizeDomain(domain)
	for _, dom := range c.Domains {
		if dom.Name == d {
			return dom, true
		}
	}
	return Domain{}, false
}

// DefaultDomainName returns the default domain: default_domain, else the first
// local domain, else the host name.
func (c Config) DefaultDomainName() string {
	switch {
	case c.DefaultDomain != "":
		return c.DefaultDomain
	case len(c.LocalDomains) > 0:
		return c.LocalDomains[0]
	}
	for _, d := range c.Domains {
		if d.Type == DomainLocal {
			return d.Name
		}
	}
	return c.Hostname
}

// Unalias rewrites an address in an alias domain to the same local part
// in the default domain (as IIS did) and reports whether it did.
func (c Config) Unalias(addr string) (string, bool) {
	local, dom, err := envelope.Split(addr)
	if err != nil || dom == "" {
		return addr, false
	}
	if d, ok := c.Domain(dom); ok && d.Type == DomainAlias {
		return local + "@" + c.DefaultDomainName(), true
	}
	return addr, false
}

// DropDirFor is the Drop directory of a local domain.
func (c Config) DropDirFor(domain string) string {
	d := envelope.NormalizeDomain(domain)
	if dom, ok := c.Domain(d); ok && dom.DropDir != "" {
		return dom.DropDir
	}
	return filepath.Join(c.DropDir(), d)
}

// Directories under DataDir.
func (c Config) PickupDir() string  { return filepath.Join(c.DataDir, "Pickup") }
func (c Config) DropDir() string    { return filepath.Join(c.DataDir, "Drop") }
func (c Config) BadmailDir() string { return filepath.Join(c.DataDir, "Badmail") }
func (c Config) NATSDir() string    { return filepath.Join(c.DataDir, "nats") }

// RetryDelay returns the wait before attempt number n+1 after n failed
// attempts (n >= 1): the ladder's n-th step, the last one repeating.
func (d Delivery) RetryDelay(n int) time.Duration {
	if n < 1 {
		n = 1
	}
	if n > len(d.Retry) {
		n = len(d.Retry)
	}
	return d.Retry[n-1].D()
}

// LevelTrace is below debug (as mox's mlog has it): the SMTP transcripts.
const LevelTrace = slog.LevelDebug - 4

// SlogLevel is the slog level of log_level.
func (c Config) SlogLevel() slog.Level {
	if c.LogLevel == "trace" {
		return LevelTrace
	}
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.LogLevel))
	return level
}

// SmartHostPasswordEnv holds the global smart host's password when
// delivery.smart_host_password_file is not set.
const SmartHostPasswordEnv = "MAILROOT_SMART_HOST_PASSWORD"

// checkLogin checks a smart host login of block key: a user needs a smart
// host and a password (a file, or for the global one the environment).
func checkLogin(key, smartHost, user, passwordFile string, env bool) error {
	switch {
	case user == "" && passwordFile != "":
		return &KeyError{key + ".smart_host_password_file", "needs smart_host_user"}
	case user == "":
		return nil
	case smartHost == "":
		return &KeyError{key + ".smart_host_user", "needs smart_host"}
	case strings.ContainsAny(user, "\x00\r\n"):
		return &KeyError{key + ".smart_host_user", "must not hold NUL, CR or LF"}
	case passwordFile == "" && !(env && os.Getenv(SmartHostPasswordEnv) != ""):
		if env {
			return &KeyError{key + ".smart_host_user", "needs smart_host_password_file or " + SmartHostPasswordEnv}
		}
		return &KeyError{key + ".smart_host_user", "needs smart_host_password_file"}
	}
	return nil
}

// DKIM is a [[dkim]] block: one signing key.
type DKIM struct {
	// Domain signs (d=) the mail whose From: is at it.
	Domain string `toml:"domain"`
	// Selector publishes the key at <selector>._domainkey.<domain>.
	Selector string `toml:"selector"`
	// KeyFile is the PEM private key (RSA or Ed25519).
	KeyFile string `toml:"key_file"`
	// Headers are the fields signed, repeats over-signing; empty: From,
	// To and Subject over-signed and the usual set (README "DKIM signing").
	Headers []string `toml:"headers"`
}
