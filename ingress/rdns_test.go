package ingress

import (
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

// reverse_dns: the client's forward-confirmed name is recorded in
// Received: and the sessions list; a PTR that does not resolve back is
// "unknown".
func TestReverseDNSInReceived(t *testing.T) {
	tests := []struct {
		name string
		zone []string
		want string
	}{
		{"confirmed", []string{"7.0.0.127.in-addr.arpa. PTR client.rdns.test.", "client.rdns.test. A 127.0.0.7"}, "(client.rdns.test [127.0.0.7])"},
		{"not confirmed", []string{"7.0.0.127.in-addr.arpa. PTR liar.rdns.test.", "liar.rdns.test. A 192.0.2.9"}, "(unknown [127.0.0.7])"},
		{"no PTR", nil, "(unknown [127.0.0.7])"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := testutil.StartDNS(t, tt.zone...)
			f := start(t, func(c *config.Config) {
				c.Ingress.ReverseDNS = true
				c.Delivery.DNSServer = d.Addr
			}, nil)
			// From 127.0.0.7, which /etc/hosts does not name (the resolver
			// reads it before asking DNS).
			nc, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 7)}}).Dial("tcp", f.addr)
			if err != nil {
				t.Fatal(err)
			}
			c := smtp.NewClient(nc)
			t.Cleanup(func() { _ = c.Close() })
			if err := c.Hello("client.test"); err != nil {
				t.Fatal(err)
			}
			if _, err := send(t, c, "a@remote.test", []string{"b@local.test"}, "Subject: r\r\n\r\nb\r\n"); err != nil {
				t.Fatal(err)
			}
			_, data := decodeLast(t, f)
			if !bytes.HasPrefix(data, []byte("Received: from client.test "+tt.want+"\r\n")) {
				t.Errorf("Received: %q, want %s", data[:80], tt.want)
			}
			testutil.WaitFor(t, 10*time.Second, "client name in the session", func() bool {
				l := liveSessions(t, f.js)
				return len(l) == 1 && l[0].ClientName != ""
			})
		})
	}
}
