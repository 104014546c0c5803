package node

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/dsn"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
)

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// sendWith submits one message over SMTP with DSN parameters.
func sendWith(t *testing.T, addr, from string, mopts *smtp.MailOptions, to string, ropts *smtp.RcptOptions, body string) string {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail(from, mopts); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt(to, ropts); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte(body)); err != nil {
		t.Fatal(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatal(err)
	}
	qid, ok := strings.CutPrefix(resp.StatusText, "2.0.0 OK queued as ")
	if !ok {
		t.Fatalf("reply %q", resp.StatusText)
	}
	return qid
}

// dropReport waits for a delivery status notification about the message
// qid in the Drop directory dir and returns it.
func dropReport(t *testing.T, dir, qid string) *dsn.Parsed {
	t.Helper()
	return dropReportWhere(t, dir, "a report about "+qid, func(p *dsn.Parsed) bool { return p.Report.QueueID == qid })
}

// dropReportWhere waits for a report in dir for which match is true.
func dropReportWhere(t *testing.T, dir, what string, match func(*dsn.Parsed) bool) *dsn.Parsed {
	t.Helper()
	var found *dsn.Parsed
	testutil.WaitFor(t, 30*time.Second, what+" in "+dir, func() bool {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			data, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				continue
			}
			p, err := dsn.Parse(bytes.NewReader(data))
			if err == nil && match(p) {
				found = p
				return true
			}
		}
		return false
	})
	return found
}

// sinkReport finds the report about qid among the mail a sink received.
func sinkReport(s *testutil.Sink, qid string) *dsn.Parsed {
	for _, m := range s.Mails() {
		if p, err := dsn.Parse(bytes.NewReader(m.Data)); err == nil && p.Report.QueueID == qid {
			return p
		}
	}
	return nil
}

// Through the whole pipeline over SMTP: a 550 bounces to the sender's
// mailbox (a local Drop directory) with a copy to the administrator,
// NOTIFY=NEVER suppresses the report, RET=HDRS returns only the headers,
// and a report that cannot be delivered ends in Badmail with both files.
func TestBounceEndToEnd(t *testing.T) {
	w := newWorld(t)
	reject := w.addMX(t, "reject.test", 5)
	admin := w.addMX(t, "admin.test", 6)
	gone := w.addMX(t, "gone.test", 7)
	refuse := func(string) error {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	reject.RcptFunc, gone.RcptFunc = refuse, refuse
	cfg := testConfig(t, w, t.TempDir())
	cfg.Drop.EnvelopeLines = false
	cfg.Delivery.NDRCopyTo = "postmaster@admin.test"
	n := startNode(t, cfg)
	addr := n.Ingress.Addrs()[0]
	drop := filepath.Join(cfg.DropDir(), "local.test")

	t.Run("550 bounces with a copy to the administrator", func(t *testing.T) {
		body := "Subject: doomed\r\n\r\nnobody home\r\n"
		qid := sendWith(t, addr, "sender@local.test", &smtp.MailOptions{EnvelopeID: "my-id-1"}, "ghost@reject.test", nil, body)
		p := dropReport(t, drop, qid)
		rc := p.Report.Recipients[0]
		if rc.FinalRecipient != "ghost@reject.test" || rc.Action != dsn.ActionFailed || rc.Status != "5.1.1" ||
			rc.RemoteMTA != "mx.reject.test" || rc.DiagnosticCode != "smtp; 550 5.1.1 no such user" {
			t.Errorf("recipient %+v", rc)
		}
		if p.Report.OriginalEnvelopeID != "my-id-1" || p.Report.ReportingMTA != "mailroot.test" || p.OriginalType != dsn.TypeMessage {
			t.Errorf("report %+v, returned %s", p.Report, p.OriginalType)
		}
		checkReceived(t, p.Original, qid, body)
		testutil.WaitFor(t, 20*time.Second, "the administrator's copy", func() bool { return sinkReport(admin, qid) != nil })
		if m := admin.Mails()[0]; m.From != "" || m.To[0] != "postmaster@admin.test" {
			t.Errorf("admin copy from %q to %v", m.From, m.To)
		}
	})

	t.Run("RET=HDRS returns only the headers", func(t *testing.T) {
		body := "Subject: big secret\r\n\r\nthe body stays here\r\n"
		qid := sendWith(t, addr, "sender@local.test", &smtp.MailOptions{Return: smtp.DSNReturnHeaders}, "ghost@reject.test", nil, body)
		p := dropReport(t, drop, qid)
		if p.OriginalType != dsn.TypeHeaders || bytes.Contains(p.Original, []byte("the body stays here")) || !bytes.Contains(p.Original, []byte("Subject: big secret\r\n")) {
			t.Errorf("returned %s:\n%s", p.OriginalType, p.Original)
		}
	})

	t.Run("NOTIFY=NEVER suppresses the report", func(t *testing.T) {
		qid := sendWith(t, addr, "sender@local.test", nil, "ghost@reject.test", &smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifyNever}}, "Subject: quiet\r\n\r\nx\r\n")
		// Another message after it: once its report is there, the first
		// one has long been handled.
		marker := sendWith(t, addr, "sender@local.test", nil, "ghost@reject.test", nil, "Subject: marker\r\n\r\nx\r\n")
		dropReport(t, drop, marker)
		entries, _ := os.ReadDir(drop)
		for _, e := range entries {
			data, _ := os.ReadFile(filepath.Join(drop, e.Name()))
			if p, err := dsn.Parse(bytes.NewReader(data)); err == nil && p.Report.QueueID == qid {
				t.Errorf("a report about %s was sent despite NOTIFY=NEVER", qid)
			}
		}
	})

	t.Run("an undeliverable report ends in Badmail with both files", func(t *testing.T) {
		qid := sendWith(t, addr, "victim@gone.test", nil, "ghost@reject.test", nil, "Subject: twice\r\n\r\nx\r\n")
		ndr := envelope.QueueIDFor(qid + ".reject_test.dsn1")
		var bad, bdr []byte
		testutil.WaitFor(t, 30*time.Second, "Badmail files of report "+ndr, func() bool {
			var err1, err2 error
			bad, err1 = os.ReadFile(filepath.Join(cfg.BadmailDir(), ndr+".BAD"))
			bdr, err2 = os.ReadFile(filepath.Join(cfg.BadmailDir(), ndr+".BDR"))
			return err1 == nil && err2 == nil
		})
		p, err := dsn.Parse(bytes.NewReader(bad))
		if err != nil || p.Report.QueueID != qid {
			t.Errorf(".BAD is not the report about %s: %v", qid, err)
		}
		for _, want := range []string{"double bounce", "550", "5.1.1", "victim@gone.test", "mx.gone.test"} {
			if !bytes.Contains(bdr, []byte(want)) {
				t.Errorf(".BDR does not mention %q:\n%s", want, bdr)
			}
		}
	})
	waitEmptyQueue(t, n)
}

// Two Mailroot servers that send a domain to each other: every pass adds a
// Received: header, and after the 15th hop the sender gets a 5.4.6 report
// that names the count.
func TestLoopBetweenTwoServers(t *testing.T) {
	w := newWorld(t)
	w.dns.Add(t, "loop.test. MX 10 mx.loop.test.")
	w.dns.Add(t, "mx.loop.test. A 127.0.0.1")
	w.dns.Add(t, "a.test. MX 10 mx.a.test.")
	w.dns.Add(t, "mx.a.test. A 127.0.0.1")
	portA, portB := freePort(t), freePort(t)
	node := func(name string, listen, peer int, local []string) (config.Config, *Node) {
		cfg := testConfig(t, w, t.TempDir())
		cfg.Hostname = name
		cfg.LocalDomains = local
		cfg.Drop.EnvelopeLines = false
		cfg.Ingress.Listen = []string{fmt.Sprintf("127.0.0.1:%d", listen)}
		cfg.Delivery.Port = peer
		return cfg, startNode(t, cfg)
	}
	cfgA, a := node("a.test", portA, portB, []string{"a.test"})
	_, _ = node("b.test", portB, portA, []string{"b.test"})

	body := "Subject: ping-pong\r\n\r\nround and round\r\n"
	submitSMTP(t, a.Ingress.Addrs()[0], "sender@a.test", []string{"x@loop.test"}, body)
	p := dropReportWhere(t, filepath.Join(cfgA.DropDir(), "a.test"), "the loop report", func(p *dsn.Parsed) bool {
		return bytes.Contains(p.Original, []byte("round and round"))
	})
	rc := p.Report.Recipients[0]
	want := "X-Mailroot; 5.4.6 routing loop detected: message has 16 Received: headers, more than the maximum hop count 15"
	if rc.FinalRecipient != "x@loop.test" || rc.Status != "5.4.6" || rc.DiagnosticCode != want || rc.Action != dsn.ActionFailed {
		t.Errorf("recipient %+v, want diagnostic %q", rc, want)
	}
	// The 16th Received: header was added by b.test, which stopped it.
	if p.Report.ReportingMTA != "b.test" || bytes.Count(p.Original, []byte("Received: ")) != 16 {
		t.Errorf("reported by %s with %d Received: headers", p.Report.ReportingMTA, bytes.Count(p.Original, []byte("Received: ")))
	}
	if !strings.Contains(p.Text, "went round in a loop") {
		t.Errorf("text:\n%s", p.Text)
	}
}

// Mail for a domain whose MX is this very server fails at once with 5.4.6
// and a report naming the domain, the MX host and the address.
func TestMailToSelfEndToEnd(t *testing.T) {
	w := newWorld(t)
	w.dns.Add(t, "self.test. MX 10 mx.self.test.")
	w.dns.Add(t, "mx.self.test. A 127.0.0.1")
	port := freePort(t)
	cfg := testConfig(t, w, t.TempDir())
	cfg.Drop.EnvelopeLines = false
	cfg.Ingress.Listen = []string{fmt.Sprintf("127.0.0.1:%d", port)}
	cfg.Delivery.Port = port
	n := startNode(t, cfg)
	qid := submitSMTP(t, n.Ingress.Addrs()[0], "sender@local.test", []string{"x@self.test"}, "Subject: me\r\n\r\nto myself\r\n")
	p := dropReport(t, filepath.Join(cfg.DropDir(), "local.test"), qid)
	want := fmt.Sprintf("X-Mailroot; 5.4.6 mail for self.test loops back to myself: MX host mx.self.test has address 127.0.0.1, where this server listens (ingress.listen 127.0.0.1:%d)", port)
	if rc := p.Report.Recipients[0]; rc.Status != "5.4.6" || rc.DiagnosticCode != want {
		t.Errorf("recipient %+v, want diagnostic %q", rc, want)
	}
	waitEmptyQueue(t, n)
}
