package bus

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/mailroot/mailroot/internal/testutil"
)

// writePEM writes one PEM block to dir/name and returns the path.
func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// testPKI makes a CA, a server certificate for 127.0.0.1 and a client
// certificate, and returns the server's TLS config and the client's files.
func testPKI(t *testing.T) (srv *tls.Config, caFile, certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey := newKey()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(serial int64, usage x509.ExtKeyUsage, ips []net.IP) ([]byte, *ecdsa.PrivateKey) {
		k := newKey()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "test"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, k
	}
	srvDER, srvKey := issue(2, x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	cliDER, cliKey := issue(3, x509.ExtKeyUsageClientAuth, nil)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	srv = &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
	}
	cliKeyDER, err := x509.MarshalECPrivateKey(cliKey)
	if err != nil {
		t.Fatal(err)
	}
	return srv, writePEM(t, dir, "ca.pem", "CERTIFICATE", caDER),
		writePEM(t, dir, "client.pem", "CERTIFICATE", cliDER),
		writePEM(t, dir, "client-key.pem", "EC PRIVATE KEY", cliKeyDER)
}

// testCreds makes an operator, an account and a user, and returns the
// server's trust settings and a .creds file for the user.
func testCreds(t *testing.T) (edit func(*server.Options), credsFile string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	okp, err := nkeys.CreateOperator()
	must(err)
	opub, err := okp.PublicKey()
	must(err)
	oc := jwt.NewOperatorClaims(opub)
	akp, err := nkeys.CreateAccount()
	must(err)
	apub, err := akp.PublicKey()
	must(err)
	ajwt, err := jwt.NewAccountClaims(apub).Encode(okp)
	must(err)
	ukp, err := nkeys.CreateUser()
	must(err)
	upub, err := ukp.PublicKey()
	must(err)
	ujwt, err := jwt.NewUserClaims(upub).Encode(akp)
	must(err)
	seed, err := ukp.Seed()
	must(err)
	creds, err := jwt.FormatUserConfig(ujwt, seed)
	must(err)
	credsFile = filepath.Join(t.TempDir(), "user.creds")
	must(os.WriteFile(credsFile, creds, 0o600))
	resolver := &server.MemAccResolver{}
	must(resolver.Store(apub, ajwt))
	return func(o *server.Options) {
		o.JetStream = false // JetStream in operator mode needs account limits; connecting is what is tested
		o.TrustedOperators = []*jwt.OperatorClaims{oc}
		o.AccountResolver = resolver
	}, credsFile
}

// Every way of authenticating to an external NATS that [nats] offers
// works, and a wrong secret is refused (bus.Connect gives up when its
// context ends instead of retrying for ever).
func TestConnectCredentialsAndTLS(t *testing.T) {
	srvTLS, caFile, certFile, keyFile := testPKI(t)
	credsEdit, credsFile := testCreds(t)
	otherCreds := func() string { _, f := testCreds(t); return f }()
	tests := []struct {
		name   string
		server func(*server.Options)
		good   ConnectOptions
		bad    ConnectOptions
	}{
		{"user and password",
			func(o *server.Options) { o.Username, o.Password = "mailroot", "s3cret" },
			ConnectOptions{User: "mailroot", Password: "s3cret"},
			ConnectOptions{User: "mailroot", Password: "wrong"}},
		{"token",
			func(o *server.Options) { o.Authorization = "t0ken" },
			ConnectOptions{Token: "t0ken"},
			ConnectOptions{Token: "other"}},
		{"creds file",
			credsEdit,
			ConnectOptions{CredsFile: credsFile},
			ConnectOptions{CredsFile: otherCreds}},
		{"TLS with client certificate",
			func(o *server.Options) { o.TLSConfig, o.TLS, o.TLSVerify, o.TLSTimeout = srvTLS, true, true, 5 },
			ConnectOptions{CAFile: caFile, CertFile: certFile, KeyFile: keyFile},
			ConnectOptions{CAFile: caFile}}, // no client certificate
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := testutil.StartNATSWith(t, t.TempDir(), tc.server)
			log := testutil.Logger(t)
			tc.good.URL, tc.good.Name = n.URL(), "test"
			nc, err := Connect(testutil.Context(t), tc.good, log)
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			if err := nc.Flush(); err != nil {
				t.Fatalf("flush: %v", err)
			}
			nc.Close()

			tc.bad.URL, tc.bad.Name = n.URL(), "test"
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if nc, err := Connect(ctx, tc.bad, log); err == nil {
				nc.Close()
				t.Fatal("connected with a wrong secret")
			}
		})
	}
}
