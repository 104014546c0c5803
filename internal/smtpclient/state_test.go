package smtpclient

import (
	"bytes"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/testutil"
)

// ConnectionState hands out the certificates the server sent, for DANE,
// and nothing for a plain-text session.
func TestConnectionState(t *testing.T) {
	ca := testutil.NewCA(t, "State CA")
	cert := ca.Issue(t, time.Time{}, time.Time{}, "mx.sink.test")
	tlsSink := testutil.StartSinkWith(t, "127.0.0.1:0", func(s *smtp.Server) {
		s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	})
	plainSink := testutil.StartSink(t)
	var d net.Dialer
	o := Options{Hostname: "client.test", ConnectTimeout: 5 * time.Second, CommandTimeout: 10 * time.Second}

	c, herr := Dial(t.Context(), d.DialContext, tlsSink.Addr, "mx.sink.test", "mx.sink.test", o)
	if herr != nil {
		t.Fatal(herr)
	}
	defer c.Quit()
	st, ok := c.ConnectionState()
	if !ok || len(st.PeerCertificates) != 2 || !bytes.Equal(st.PeerCertificates[0].Raw, cert.Certificate[0]) || !bytes.Equal(st.PeerCertificates[1].Raw, ca.Cert.Raw) {
		t.Fatalf("ConnectionState = %d certificates, %v; want the leaf and the CA", len(st.PeerCertificates), ok)
	}

	p, herr := Dial(t.Context(), d.DialContext, plainSink.Addr, "mx.sink.test", "mx.sink.test", o)
	if herr != nil {
		t.Fatal(herr)
	}
	defer p.Quit()
	if _, ok := p.ConnectionState(); ok {
		t.Fatal("plain text session has a TLS state")
	}
}
