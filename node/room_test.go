package node

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/dsn"
	"github.com/mailroot/mailroot/internal/testutil"
)

// smartHost is a receiving server that can be taken down (it answers 451
// to every DATA) and brought back.
type smartHost struct {
	*testutil.Sink
	down atomic.Bool
}

func startSmartHost(t *testing.T) *smartHost {
	t.Helper()
	h := &smartHost{Sink: testutil.StartSink(t)}
	h.DataFunc = func(int, *testutil.Mail) error {
		if h.down.Load() {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "down for maintenance"}
		}
		return nil
	}
	return h
}

// received returns the queue ids (from our Received: header) of the
// messages the smart host took.
func (h *smartHost) received() map[string]int {
	got := map[string]int{}
	for _, m := range h.Mails() {
		_, rest, ok := strings.Cut(string(m.Data), "(Mailroot) with ESMTP id ")
		if !ok {
			continue
		}
		got[strings.Fields(rest)[0]]++
	}
	return got
}

// fill sends mail of size bytes from the local sender until the server
// refuses one, and returns the queue ids that got a 250. Every refusal
// must be 452 4.3.1.
func fill(t *testing.T, addr string, size, most int) []string {
	t.Helper()
	body := "Subject: filler\r\n\r\n" + strings.Repeat(strings.Repeat("x", 98)+"\r\n", size/100) + "\r\n"
	var qids []string
	for range most {
		qid, err := submitFrom(addr, "", "sender@local.test", []string{"rcpt@remote.test"}, body)
		if err == nil {
			qids = append(qids, qid)
			continue
		}
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code != 452 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 1}) {
			t.Fatalf("after %d mails: %v, want 452 4.3.1", len(qids), err)
		}
		return qids
	}
	t.Fatalf("%d mails of %d bytes accepted without a 452", most, size)
	return nil
}

// startActors starts more actors on the embedded server of n, sharing
// its store's Room.
func startActors(t *testing.T, n *Node, cfg config.Config, actors ...string) {
	t.Helper()
	nc, err := n.ConnectInProcess("more-actors")
	if err != nil {
		t.Fatal(err)
	}
	m, err := start(context.Background(), cfg, testutil.Logger(t), nc, actors, func(jetstream.JetStream) *bus.Room { return n.Room }, nil, n.Metrics)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
}

// allDelivered waits until h has every accepted mail, and checks that
// none is in Badmail.
func allDelivered(t *testing.T, h *smartHost, cfg config.Config, accepted []string) {
	t.Helper()
	testutil.WaitFor(t, 90*time.Second, "every accepted mail delivered", func() bool { return len(h.received()) >= len(accepted) })
	got := h.received()
	for _, q := range accepted {
		if got[q] == 0 {
			t.Errorf("%s got a 250 and was not delivered", q)
		}
	}
	if bad := badmailEntries(t, cfg); len(bad) != 0 {
		t.Errorf("Badmail has %v", bad)
	}
}

// badmailEntries lists Badmail's .BAD files.
func badmailEntries(t *testing.T, cfg config.Config) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(cfg.BadmailDir(), "*.BAD"))
	return m
}

// storeFullConfig is a node whose store holds 8 MiB, relaying everything
// to h with a one second retry ladder.
func storeFullConfig(t *testing.T, h *smartHost) config.Config {
	t.Helper()
	w := newWorld(t)
	cfg := testConfig(t, w, t.TempDir())
	cfg.NATS.MaxStore = 8 << 20
	cfg.Delivery.SmartHost = h.Addr
	cfg.Delivery.DelayNotice = 0
	return cfg
}

// A full store refuses new mail at once (452 4.3.1 from the reserve, not
// a publish that fails), while the mail it holds is retried and, once the
// smart host is back, delivered; then new mail is taken again by itself.
func TestStoreFullDrains(t *testing.T) {
	h := startSmartHost(t)
	h.down.Store(true)
	cfg := storeFullConfig(t, h)
	n := startNode(t, cfg)
	addr := n.Ingress.Addrs()[0]

	accepted := fill(t, addr, 32<<10, 1000)
	t.Logf("%d mails accepted before the 452", len(accepted))
	if len(accepted) < 50 {
		t.Fatalf("only %d mails accepted into an 8 MiB store", len(accepted))
	}
	// While full: the queue is retried (each retry is a new stored message),
	// and nothing is parked or lost.
	testutil.WaitFor(t, 30*time.Second, "every accepted mail tried twice", func() bool {
		return h.Transactions() >= 2*len(accepted)
	})
	h.down.Store(false)
	allDelivered(t, h, cfg, accepted)
	// Intake resumes by itself once the queue has drained.
	testutil.WaitFor(t, 20*time.Second, "new mail accepted again", func() bool {
		_, err := submitFrom(addr, "", "sender@local.test", []string{"rcpt@remote.test"}, "Subject: again\r\n\r\nx\r\n")
		return err == nil
	})
}

// With the smart host down for good, the mail held by a full store still
// finds room for its retries and, at expiry, for the reports to its
// sender; nothing ends in Badmail.
func TestStoreFullBounces(t *testing.T) {
	h := startSmartHost(t)
	h.down.Store(true)
	cfg := storeFullConfig(t, h)
	cfg.Delivery.Expire = config.Duration(6 * time.Second)
	// Delivery starts once the store is full: on a slow machine filling
	// it may take longer than the queue life.
	n := startNode(t, cfg, Ingress, Router, Badmail)
	addr := n.Ingress.Addrs()[0]

	accepted := fill(t, addr, 32<<10, 1000)
	t.Logf("%d mails accepted before the 452", len(accepted))
	startActors(t, n, cfg, Delivery)
	drop := cfg.DropDirFor("local.test")
	reported := map[string]bool{}
	testutil.WaitFor(t, 90*time.Second, "a report to the sender for every accepted mail", func() bool {
		files, _ := filepath.Glob(filepath.Join(drop, "*.eml"))
		for _, f := range files {
			if reported[f] {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			p, err := dsn.Parse(bytes.NewReader(b))
			if err != nil || len(p.Report.Recipients) != 1 || p.Report.Recipients[0].Action != dsn.ActionFailed {
				continue
			}
			reported[f] = true
			reported[p.Report.QueueID] = true
		}
		for _, q := range accepted {
			if !reported[q] {
				return false
			}
		}
		return true
	})
	if bad := badmailEntries(t, cfg); len(bad) != 0 {
		t.Errorf("Badmail has %v", bad)
	}
	waitEmptyQueue(t, n)
	if _, err := submitFrom(addr, "", "sender@local.test", []string{"rcpt@remote.test"}, "Subject: again\r\n\r\nx\r\n"); err != nil {
		t.Errorf("after the queue drained: %v", err)
	}
}

// The reserve is what intake leaves: a publish by the pipeline still fits
// when SMTP is refused.
func TestRoomLeavesTheReserve(t *testing.T) {
	h := startSmartHost(t)
	h.down.Store(true)
	cfg := storeFullConfig(t, h)
	n := startNode(t, cfg)
	accepted := fill(t, n.Ingress.Addrs()[0], 32<<10, 1000)
	ai, err := n.JS.AccountInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Intake did not eat into the reserve, and did not stop long before
	// it either: at least half of the rest holds accepted mail (the
	// pipeline's copies in flight, counted at the refusal, are gone from
	// the reading taken now).
	left, reserve := cfg.NATS.MaxStore-int64(ai.Store), cfg.NATS.Reserve.Of(cfg.NATS.MaxStore)
	if held := int64(len(accepted)) * 32 << 10; left < reserve/2 || held < (cfg.NATS.MaxStore-reserve)/2 {
		t.Errorf("%d mails (%d bytes) accepted and %d bytes left in the store at the first 452, with a reserve of %d", len(accepted), held, left, reserve)
	}
}
