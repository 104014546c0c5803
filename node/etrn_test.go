package node

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

// The whole hold path: a domain marked hold accepts mail from anyone, the
// router parks it on mail.hold.<tok>, nothing is delivered until the
// customer's server sends ETRN, and then delivery hands it to the domain's
// mail exchanger.
func TestETRNEndToEnd(t *testing.T) {
	w := newWorld(t)
	mx := w.addMX(t, "dialup.test", 5)
	cfg := testConfig(t, w, t.TempDir())
	cfg.Domains = []config.Domain{{Name: "dialup.test", Type: config.DomainRemote, Hold: true}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, cfg)
	addr := n.Ingress.Addrs()[0]

	// From 127.0.0.9: outside relay_networks, yet the held domain is ours.
	qid, err := submitFrom(addr, "127.0.0.9", "someone@remote.test", []string{"boss@dialup.test"}, "Subject: held\r\n\r\nwaiting for ETRN\r\n")
	if err != nil {
		t.Fatal(err)
	}
	tok := bus.Token("dialup.test")
	testutil.WaitFor(t, 20*time.Second, "message held", func() bool { return heldCount(t, n.JS, tok) == 1 })
	if mx.Count() != 0 {
		t.Fatal("held mail was delivered before ETRN")
	}

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	readReply := func() string {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		var last string
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			last = line
			if len(line) < 4 || line[3] != '-' {
				return strings.TrimSpace(last)
			}
		}
	}
	readReply()
	_, _ = c.Write([]byte("EHLO customer.dialup.test\r\n"))
	readReply()
	// The release worker of the delivery actor subscribes shortly after
	// start; retry until it answers.
	var reply string
	testutil.WaitFor(t, 20*time.Second, "ETRN accepted", func() bool {
		_, _ = c.Write([]byte("ETRN dialup.test\r\n"))
		reply = readReply()
		return !strings.HasPrefix(reply, "458")
	})
	if reply != "253 2.0.0 OK, 1 pending messages for node dialup.test started" {
		t.Fatalf("ETRN: %q", reply)
	}
	testutil.WaitFor(t, 30*time.Second, "delivery to the domain's MX", func() bool { return mx.Count() == 1 })
	m := mx.Mails()[0]
	if m.To[0] != "boss@dialup.test" || !strings.Contains(string(m.Data), "id "+qid) {
		t.Errorf("delivered %v %q", m.To, m.Data)
	}
	// The mail log has the hold and the release.
	for _, e := range mailEvents(t, n, qid, bus.EventHeld, bus.EventReleased, bus.EventDelivered) {
		if (e.Type == bus.EventHeld && e.Subject != "mail.hold."+tok) || (e.Type == bus.EventReleased && e.Subject != "mail.out."+tok) ||
			(e.Type != bus.EventRouted && e.Type != bus.EventReceived && e.Domain != "dialup.test") {
			t.Errorf("%s event %+v", e.Type, e)
		}
	}
	waitEmptyQueue(t, n)
}

func heldCount(t *testing.T, js jetstream.JetStream, tok string) int {
	t.Helper()
	c, err := bus.HeldCount(context.Background(), js, tok)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
