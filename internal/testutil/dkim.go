package testutil

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
)

// DKIMKey is an Ed25519 DKIM key (RFC 8463) for signing messages in a
// test and publishing the public key in a test zone.
type DKIMKey struct {
	Domain, Selector string
	Key              ed25519.PrivateKey
}

// NewDKIMKey makes a key for domain and selector.
func NewDKIMKey(t testing.TB, domain, selector string) DKIMKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return DKIMKey{domain, selector, k}
}

// Record is the key's TXT record in zone-file syntax, for StartDNS.
func (k DKIMKey) Record() string {
	pub := base64.StdEncoding.EncodeToString(k.Key.Public().(ed25519.PublicKey))
	return fmt.Sprintf(`%s._domainkey.%s. TXT "v=DKIM1; k=ed25519; p=%s"`, k.Selector, k.Domain, pub)
}

// Sign returns msg with a DKIM-Signature of the key prepended
// (go-msgauth's signer, relaxed/relaxed).
func (k DKIMKey) Sign(t testing.TB, msg string) []byte {
	t.Helper()
	var b bytes.Buffer
	opts := &dkim.SignOptions{Domain: k.Domain, Selector: k.Selector, Signer: k.Key,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed}
	if err := dkim.Sign(&b, strings.NewReader(msg), opts); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}
