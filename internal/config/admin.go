package config

import (
	"fmt"
	"net"
	"net/netip"
)

// Admin configures the web admin console ([admin], internal/admin), which
// `mailroot all` and `mailroot admin` serve. It is read at start only.
type Admin struct {
	// Listen is where the console serves (host:port; port 0: a free
	// port; empty: no console). Outside loopback it needs a certificate.
	Listen string `toml:"listen"`
	// TLSCert and TLSKey are the console's PEM certificate and key;
	// empty: the site certificate (ingress.tls_cert and tls_key) when
	// the console listens outside loopback, plain HTTP on loopback.
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`
}

// DefaultAdminListen is admin.listen by default: loopback only.
const DefaultAdminListen = "127.0.0.1:8025"

// AdminTLS returns the certificate and key files the console serves TLS
// with ("" when it serves plain HTTP): admin.tls_cert, else on a
// non-loopback address the site certificate.
func (c *Config) AdminTLS() (cert, key string) {
	if c.Admin.TLSCert != "" {
		return c.Admin.TLSCert, c.Admin.TLSKey
	}
	if !LoopbackListen(c.Admin.Listen) {
		return c.Ingress.TLSCert, c.Ingress.TLSKey
	}
	return "", ""
}

// LoopbackListen reports whether the listen address addr binds loopback
// only (127.0.0.0/8, ::1 or localhost).
func LoopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// checkAdmin checks [admin]: a listen address, and a certificate for
// any address outside loopback (the login and its cookie must not cross
// a network in clear).
func (c *Config) checkAdmin() error {
	a := c.Admin
	if a.Listen == "" {
		return nil
	}
	if err := checkHostPort("admin.listen", a.Listen, metricsListenAddr); err != nil {
		return err
	}
	if (a.TLSCert == "") != (a.TLSKey == "") {
		return &KeyError{"admin.tls_cert", "tls_cert and tls_key go together"}
	}
	if cert, _ := c.AdminTLS(); cert == "" && !LoopbackListen(a.Listen) {
		return &KeyError{"admin.listen", fmt.Sprintf("%q is outside loopback: the console needs TLS there (admin.tls_cert and tls_key, or ingress.tls_cert and tls_key)", a.Listen)}
	}
	return nil
}
