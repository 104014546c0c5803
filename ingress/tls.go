package ingress

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/mailroot/mailroot/internal/atomicfile"
)

// tlsString names the protocol version and cipher for Received: and logs,
// e.g. "TLS1.3 TLS_AES_128_GCM_SHA256".
func tlsString(version, cipher uint16) string {
	return tlsVersion(version) + " " + tls.CipherSuiteName(cipher)
}

// tlsVersion is "TLS1.2" or "TLS1.3".
func tlsVersion(version uint16) string {
	return strings.Replace(tls.VersionName(version), "TLS ", "TLS", 1)
}

// certSource serves a certificate from PEM files and reloads them when
// their modification time or size changes (checked at most once a second
// on a handshake), so a renewed certificate is used without a restart. A
// broken new file keeps the last good certificate in use.
type certSource struct {
	certFile, keyFile string

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   string
	checked time.Time
	// onReload is told about reloads and reload errors.
	onReload func(err error)
}

func newCertSource(certFile, keyFile string, onReload func(error)) (*certSource, error) {
	cs := &certSource{certFile: certFile, keyFile: keyFile, onReload: onReload}
	if err := cs.load(); err != nil {
		return nil, err
	}
	return cs, nil
}

func fileStamp(paths ...string) string {
	s := ""
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			s += "missing;"
			continue
		}
		s += fmt.Sprintf("%d/%d;", fi.ModTime().UnixNano(), fi.Size())
	}
	return s
}

func (cs *certSource) load() error {
	stamp := fileStamp(cs.certFile, cs.keyFile)
	c, err := tls.LoadX509KeyPair(cs.certFile, cs.keyFile)
	if err != nil {
		return fmt.Errorf("ingress: tls certificate %s: %w", cs.certFile, err)
	}
	cs.mu.Lock()
	cs.cert, cs.stamp = &c, stamp
	cs.mu.Unlock()
	return nil
}

// GetCertificate is the tls.Config hook.
func (cs *certSource) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	cs.mu.Lock()
	now := time.Now()
	check := now.Sub(cs.checked) >= time.Second
	if check {
		cs.checked = now
	}
	stamp := cs.stamp
	cs.mu.Unlock()
	if check && fileStamp(cs.certFile, cs.keyFile) != stamp {
		err := cs.load()
		if cs.onReload != nil {
			cs.onReload(err)
		}
		if err != nil {
			// Do not retry on every handshake with a half-written pair.
			cs.mu.Lock()
			cs.stamp = fileStamp(cs.certFile, cs.keyFile)
			cs.mu.Unlock()
		}
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.cert, nil
}

// serverTLSConfig is TLS 1.2 or newer with Go's default (modern) suites.
func serverTLSConfig(cs *certSource) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: cs.GetCertificate,
	}
}

// selfSigned returns the paths of the self-signed certificate and key in
// dir, generating them once (ECDSA P-256, ten years, for hostname).
func selfSigned(dir, hostname string) (certFile, keyFile string, err error) {
	certFile, keyFile = filepath.Join(dir, "selfsigned.crt"), filepath.Join(dir, "selfsigned.key")
	if _, err := os.Stat(certFile); err == nil {
		if _, err := os.Stat(keyFile); err == nil {
			return certFile, keyFile, nil
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("ingress: tls dir: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("ingress: generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return "", "", fmt.Errorf("ingress: serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: hostname, Organization: []string{"Mailroot self-signed"}},
		DNSNames:              []string{hostname},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", fmt.Errorf("ingress: self-signed certificate: %w", err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", fmt.Errorf("ingress: marshal key: %w", err)
	}
	// Write the key first and rename both into place, so a crash leaves
	// either nothing or a complete pair (two processes racing both write
	// a valid pair; the last rename wins for both files in practice).
	if err := writeAtomic(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return "", "", err
	}
	if err := writeAtomic(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", err
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		return "", "", fmt.Errorf("ingress: self-signed pair in %s unusable (written by two processes at once? remove it): %w", dir, err)
	}
	return certFile, keyFile, nil
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	if err := atomicfile.WriteBytes(path, data, mode); err != nil {
		return fmt.Errorf("ingress: write %s: %w", path, err)
	}
	return nil
}
