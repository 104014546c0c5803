// Package dkim signs outgoing mail (RFC 6376; Ed25519 keys, RFC 8463)
// with go-msgauth, using the keys under data_dir/dkim: a key made by
// `mailroot dkim keygen` at dkim/<domain>/<selector>.key is used with no
// further configuration, as chasquid does with its per-domain key files.
// Mail is signed by the keys of its From: domain, once per delivery
// attempt, just before it leaves over SMTP: the queued message is never
// signed, so a retry carries one signature per key, not one per attempt.
package dkim

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/mail"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/mailroot/mailroot/internal/atomicfile"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
)

// Algorithms of Generate.
const (
	RSA     = "rsa"
	Ed25519 = "ed25519"
)

// RSABits is the size of the RSA keys Generate makes (RFC 8301: at least
// 1024, 2048 recommended).
const RSABits = 2048

// DefaultSelector is the selector of Generate when none is given.
const DefaultSelector = "mailroot"

// HeaderKeys are the header fields signed (RFC 6376 §5.4.1), From, To and
// Subject twice: the second, absent, instance is signed as empty, so that
// one added on the way breaks the signature (over-signing).
var HeaderKeys = []string{
	"From", "From", "To", "To", "Subject", "Subject", "Cc", "Reply-To", "Date", "Message-ID",
	"In-Reply-To", "References", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
	"List-Id", "List-Unsubscribe", "List-Unsubscribe-Post",
}

// Key is one signing key.
type Key struct {
	Domain    string // the signing domain (d=), lower-case A-label
	Selector  string // s=
	Algorithm string // RSA or Ed25519
	Path      string // the key file
	Signer    crypto.Signer
	// Headers are the fields it signs (nil: HeaderKeys).
	Headers []string
}

// Dir is where the keys of data_dir live.
func Dir(dataDir string) string { return filepath.Join(dataDir, "dkim") }

// KeyPath is the file of domain's key for selector under dir (Dir).
func KeyPath(dir, domain, selector string) string {
	return filepath.Join(dir, domain, selector+".key")
}

// Generate makes a key of algorithm (RSA, the default, or Ed25519) for
// domain and selector and writes it under dir with mode 0600 (PKCS #8
// PEM); an existing key is never overwritten.
func Generate(dir, domain, selector, algorithm string) (*Key, error) {
	domain, selector, err := check(domain, selector)
	if err != nil {
		return nil, err
	}
	var signer crypto.Signer
	switch strings.ToLower(algorithm) {
	case RSA, "":
		algorithm = RSA
		signer, err = rsa.GenerateKey(rand.Reader, RSABits)
	case Ed25519:
		algorithm = Ed25519
		_, signer, err = ed25519.GenerateKey(rand.Reader)
	default:
		return nil, fmt.Errorf("dkim: unknown algorithm %q (want %s or %s)", algorithm, RSA, Ed25519)
	}
	if err != nil {
		return nil, fmt.Errorf("dkim: generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(signer)
	if err != nil {
		return nil, fmt.Errorf("dkim: encode key: %w", err)
	}
	path := KeyPath(dir, domain, selector)
	if _, err := os.Stat(path); err == nil {
		return nil, fmt.Errorf("dkim: %s exists: choose another selector (-selector) or remove it first", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("dkim: %w", err)
	}
	if err := atomicfile.WriteBytes(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, fmt.Errorf("dkim: write key: %w", err)
	}
	return &Key{Domain: domain, Selector: selector, Algorithm: algorithm, Path: path, Signer: signer}, nil
}

// check normalises and validates a domain and a selector (a selector may
// have several labels, RFC 6376 §3.1).
func check(domain, selector string) (string, string, error) {
	domain = envelope.NormalizeDomain(domain)
	if err := envelope.CheckDomain(domain); err != nil || strings.HasPrefix(domain, "[") {
		return "", "", fmt.Errorf("dkim: bad domain %q", domain)
	}
	selector = strings.ToLower(selector)
	if selector == "" {
		return "", "", errors.New("dkim: empty selector")
	}
	for _, l := range strings.Split(selector, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' || strings.Trim(l, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
			return "", "", fmt.Errorf("dkim: bad selector %q: letters, digits and inner hyphens, labels separated by dots", selector)
		}
	}
	return domain, selector, nil
}

// Record is the DNS TXT record that publishes k's public key: its name
// and its value, split into strings of at most 255 bytes (RFC 7208 §3.3
// style, as DNS servers need for long RSA keys).
func (k *Key) Record() (name string, value []string) {
	var der []byte
	kt := "rsa"
	switch pub := k.Signer.Public().(type) {
	case ed25519.PublicKey:
		kt, der = "ed25519", pub // RFC 8463 §4.2: the raw 32 bytes
	default:
		der, _ = x509.MarshalPKIXPublicKey(pub)
	}
	v := "v=DKIM1; k=" + kt + "; p=" + base64.StdEncoding.EncodeToString(der)
	for len(v) > 255 {
		value = append(value, v[:255])
		v = v[255:]
	}
	return k.Selector + "._domainkey." + k.Domain + ".", append(value, v)
}

// Zone is Record as a zone file line.
func (k *Key) Zone() string {
	name, parts := k.Record()
	return name + " IN TXT \"" + strings.Join(parts, "\" \"") + "\""
}

// Load reads every <domain>/<selector>.key under dir, sorted by domain
// and selector; a missing dir is no keys. A key file that cannot be used
// is an error naming it: mail of that domain must not silently go out
// unsigned.
func Load(dir string) ([]*Key, error) {
	var keys []*Key
	domains, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dkim: %w", err)
	}
	for _, d := range domains {
		if !d.IsDir() {
			continue
		}
		files, err := filepath.Glob(filepath.Join(dir, d.Name(), "*.key"))
		if err != nil {
			return nil, fmt.Errorf("dkim: %w", err)
		}
		sort.Strings(files)
		for _, f := range files {
			k, err := ReadKey(f, d.Name(), strings.TrimSuffix(filepath.Base(f), ".key"))
			if err != nil {
				return nil, err
			}
			keys = append(keys, k)
		}
	}
	return keys, nil
}

// ReadKey reads the key file path for domain and selector (a file under
// Dir, or a [[dkim]] block's key_file). It parses a PEM key file: PKCS #8 ("PRIVATE KEY", as Generate
// writes) or PKCS #1 ("RSA PRIVATE KEY", as opendkim-genkey writes).
func ReadKey(path, domain, selector string) (*Key, error) {
	domain, selector, err := check(domain, selector)
	if err != nil {
		return nil, fmt.Errorf("%w (key file %s)", err, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("dkim: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("dkim: %s: no PEM key in it", path)
	}
	var parsed any
	switch block.Type {
	case "PRIVATE KEY":
		parsed, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		parsed, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("dkim: %s: PEM block %q, want PRIVATE KEY or RSA PRIVATE KEY", path, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("dkim: %s: %w", path, err)
	}
	k := &Key{Domain: domain, Selector: selector, Path: path}
	switch p := parsed.(type) {
	case *rsa.PrivateKey:
		if p.N.BitLen() < 1024 {
			return nil, fmt.Errorf("dkim: %s: RSA key of %d bits, receivers ignore signatures under 1024 (RFC 8301)", path, p.N.BitLen())
		}
		k.Algorithm, k.Signer = RSA, p
	case ed25519.PrivateKey:
		k.Algorithm, k.Signer = Ed25519, p
	default:
		return nil, fmt.Errorf("dkim: %s: a %T key, want RSA or Ed25519", path, parsed)
	}
	return k, nil
}

// BlockKeys reads the keys of the [[dkim]] blocks, each with its header
// list; an error names the block whose key file is not a usable key.
func BlockKeys(blocks []config.DKIM) ([]*Key, error) {
	var keys []*Key
	for i, d := range blocks {
		k, err := ReadKey(d.KeyFile, d.Domain, d.Selector)
		if err != nil {
			return nil, fmt.Errorf("dkim[%d].key_file: %w", i, err)
		}
		k.Headers = d.Headers
		keys = append(keys, k)
	}
	return keys, nil
}

// Signer signs messages with the keys under a directory, which it reads
// again at most every Refresh, so a key made while Mailroot runs is used
// without a restart.
type Signer struct {
	dir string
	log *slog.Logger
	// fixed are the keys given by hand, by domain (under mu): they
	// replace what the directory holds for their domain.
	fixed map[string][]*Key
	// Refresh is how long the keys read are used before the directory is
	// read again.
	Refresh time.Duration

	mu       sync.Mutex
	byDomain map[string][]*Key
	readAt   time.Time
}

// NewSigner returns a Signer of the keys under dir (Dir(data_dir)) and
// of fixed, the keys given by hand ([[dkim]] blocks), which alone sign for
// their domains.
func NewSigner(dir string, log *slog.Logger, fixed ...*Key) *Signer {
	if log == nil {
		log = slog.Default()
	}
	s := &Signer{dir: dir, log: log, Refresh: 30 * time.Second}
	s.SetFixed(fixed...)
	return s
}

// SetFixed replaces the keys given by hand (the [[dkim]] blocks of a
// changed live configuration): the next message signs with them.
func (s *Signer) SetFixed(fixed ...*Key) {
	m := map[string][]*Key{}
	for _, k := range fixed {
		m[k.Domain] = append(m[k.Domain], k)
	}
	s.mu.Lock()
	s.fixed, s.byDomain = m, nil
	s.mu.Unlock()
}

// keys returns the keys by domain, reading the directory when the last
// reading is older than Refresh. A failed reading keeps the keys of the
// last good one (and is logged): a key being replaced must not unsign the
// domain's mail.
func (s *Signer) keys() map[string][]*Key {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byDomain != nil && time.Since(s.readAt) < s.Refresh {
		return s.byDomain
	}
	s.readAt = time.Now()
	keys, err := Load(s.dir)
	if err != nil {
		s.log.Error("DKIM keys not read again, using the last ones", "dir", s.dir, "err", err)
		if s.byDomain == nil {
			s.byDomain = map[string][]*Key{}
			for d, ks := range s.fixed {
				s.byDomain[d] = ks
			}
		}
		return s.byDomain
	}
	m := map[string][]*Key{}
	for _, k := range keys {
		if _, ok := s.fixed[k.Domain]; !ok {
			m[k.Domain] = append(m[k.Domain], k)
		}
	}
	for d, ks := range s.fixed {
		m[d] = ks
	}
	s.byDomain = m
	return m
}

// HasKeys reports whether there is any key to sign with: without one,
// the message need not be read at all.
func (s *Signer) HasKeys() bool { return len(s.keys()) > 0 }

// maxHeader bounds the header section read to find From:.
const maxHeader = 1 << 20

// Sign returns the DKIM-Signature fields (each ending in CRLF) to put on
// top of msg: one per key of the domain of its From: address, none when
// that domain has no key or msg has no From: (then domain is ""). msg
// must have CRLF line ends, as queued mail has.
func (s *Signer) Sign(msg io.Reader) (sigs, domain string, err error) {
	keys := s.keys()
	if len(keys) == 0 {
		return "", "", nil
	}
	br := bufio.NewReader(msg)
	var head bytes.Buffer
	for {
		line, err := br.ReadSlice('\n')
		head.Write(line)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil && err != io.EOF {
			return "", "", fmt.Errorf("dkim: reading message: %w", err)
		}
		if err == io.EOF || bytes.Equal(line, []byte("\r\n")) || bytes.Equal(line, []byte("\n")) {
			break
		}
		if head.Len() > maxHeader {
			return "", "", errors.New("dkim: header section over 1 MiB")
		}
	}
	domain = fromDomain(head.Bytes())
	ks := keys[domain]
	if len(ks) == 0 {
		return "", domain, nil
	}
	if !bytes.HasSuffix(head.Bytes(), []byte("\n\r\n")) && !bytes.HasSuffix(head.Bytes(), []byte("\n\n")) {
		return "", domain, errors.New("dkim: the message has no empty line ending its header section, so it cannot be signed")
	}
	signers := make([]*dkim.Signer, len(ks))
	ws := make([]io.Writer, len(ks))
	for i, k := range ks {
		headers := k.Headers
		if len(headers) == 0 {
			headers = HeaderKeys
		}
		signers[i], err = dkim.NewSigner(&dkim.SignOptions{
			Domain: k.Domain, Selector: k.Selector, Signer: k.Signer,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed,
			BodyCanonicalization:   dkim.CanonicalizationRelaxed,
			HeaderKeys:             headers,
		})
		if err != nil {
			return "", domain, fmt.Errorf("dkim: key %s: %w", k.Path, err)
		}
		ws[i] = signers[i]
	}
	w := io.MultiWriter(ws...)
	if _, err := w.Write(head.Bytes()); err != nil {
		return "", domain, fmt.Errorf("dkim: signing: %w", err)
	}
	if _, err := br.WriteTo(w); err != nil {
		return "", domain, fmt.Errorf("dkim: signing: %w", err)
	}
	var b strings.Builder
	for i, sg := range signers {
		if err := sg.Close(); err != nil {
			return "", domain, fmt.Errorf("dkim: signing with %s: %w", ks[i].Path, err)
		}
		b.WriteString(sg.Signature())
	}
	return b.String(), domain, nil
}

// fromDomain is the domain of the first address of the From: field of a
// header section, "" when there is none to read.
func fromDomain(head []byte) string {
	h := append(bytes.TrimRight(bytes.Clone(head), "\r\n"), "\r\n\r\n"...)
	m, err := mail.ReadMessage(bytes.NewReader(h))
	if err != nil {
		return ""
	}
	from := m.Header.Get("From")
	if from == "" {
		return ""
	}
	addrs, err := mail.ParseAddressList(from)
	if err != nil || len(addrs) == 0 {
		return ""
	}
	return envelope.Domain(addrs[0].Address)
}
