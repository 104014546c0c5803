package node

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/dsn"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
)

// lockedBuffer collects log output from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	lines := strings.Split(l.b.String(), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// Kinds of message in the crash test and what must become of each.
const (
	kindOK     = iota // delivered to ok.test
	kindFlaky         // 451 on the first try, delivered on a retry
	kindBounce        // 550: a report reaches the sender
	kindNull          // 550, null sender: Badmail
	kindDouble        // 550, and the report is refused too: Badmail
	kindCount
)

// kindOf spreads the kinds: 50 % ok, 20 % flaky, 20 % bounce, 5 % null,
// 5 % double bounce.
func kindOf(i int) int {
	switch r := i % 20; {
	case r < 10:
		return kindOK
	case r < 14:
		return kindFlaky
	case r < 18:
		return kindBounce
	case r < 19:
		return kindNull
	default:
		return kindDouble
	}
}

// Delivery workers are killed at random moments (Node.Kill: the NATS
// connection closes mid-work, nothing is settled) while 1,000 messages go
// through retries, non-delivery reports and double bounces. Every message
// must end exactly as its kind says, with duplicates only from work in
// flight at a kill.
func TestCrashDeliveryWorkers(t *testing.T) {
	count := 1000
	if testing.Short() {
		count = 200
	}
	ns := testutil.StartNATS(t)
	w := newWorld(t)
	okSink := w.mx["remote.test"]
	flaky := w.addMX(t, "flaky.test", 11)
	bounce := w.addMX(t, "bad.test", 12)
	senders := w.addMX(t, "senders.test", 13)
	deadSink := w.addMX(t, "dead.test", 14)
	var seenMu sync.Mutex
	seen := map[string]bool{}
	flaky.RcptFunc = func(to string) error {
		seenMu.Lock()
		defer seenMu.Unlock()
		if !seen[to] {
			seen[to] = true
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again"}
		}
		return nil
	}
	refuse := func(string) error {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	bounce.RcptFunc, deadSink.RcptFunc = refuse, refuse

	cfg := testConfig(t, w, t.TempDir())
	cfg.NATS.URL = ns.URL()
	cfg.Delivery.AckWait = config.Duration(3 * time.Second)
	cfg.Delivery.Concurrency = 16
	logs := &lockedBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("last log lines:\n%s", logs.tail(80))
		}
	})
	ctx := context.Background()
	stable, err := Connect(ctx, cfg, log, Router, Badmail)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stable.Stop)

	// Delivery workers: two at a time, one of them killed every few
	// hundred milliseconds and replaced.
	var mu sync.Mutex
	var workers []*Node
	var killed sync.WaitGroup
	kills := 0
	startWorker := func() {
		n, err := Connect(ctx, cfg, log, Delivery)
		if err != nil {
			t.Error(err)
			return
		}
		workers = append(workers, n)
	}
	mu.Lock()
	startWorker()
	startWorker()
	mu.Unlock()
	stopKilling := make(chan struct{})
	killerDone := make(chan struct{})
	go func() {
		defer close(killerDone)
		for {
			select {
			case <-stopKilling:
				return
			case <-time.After(time.Duration(200+rand.IntN(500)) * time.Millisecond):
			}
			mu.Lock()
			i := rand.IntN(len(workers))
			victim := workers[i]
			workers = append(workers[:i], workers[i+1:]...)
			kills++
			killed.Add(1)
			go func() { defer killed.Done(); victim.Kill() }()
			startWorker()
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		select {
		case <-stopKilling:
		default:
			close(stopKilling)
		}
		<-killerDone
		killed.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, n := range workers {
			n.Stop()
		}
	})

	// The messages, published straight onto mail.in.
	_, js := ns.Connect(t)
	domain := [kindCount]string{"remote.test", "flaky.test", "bad.test", "bad.test", "bad.test"}
	qids := make([]string, count)
	for i := range count {
		k := kindOf(i)
		env := &envelope.Envelope{
			QueueID: envelope.NewQueueID(), From: fmt.Sprintf("s%d@senders.test", i),
			Rcpts: []envelope.Rcpt{{Addr: fmt.Sprintf("r%d@%s", i, domain[k])}}, ReceivedAt: time.Now(), Source: "nats",
		}
		switch k {
		case kindNull:
			env.From = ""
		case kindDouble:
			env.From = fmt.Sprintf("s%d@dead.test", i)
		}
		env.MsgID = env.QueueID
		qids[i] = env.QueueID
		msg, err := env.Msg(bus.SubjIn, fmt.Appendf(nil, "Subject: crash %d\r\n\r\nbody %d\r\n", i, i))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := bus.Publish(ctx, js, msg, env.MsgID); err != nil {
			t.Fatal(err)
		}
	}

	// Wait for every outcome, counting what arrives.
	delivered := map[string]int{} // recipient -> deliveries
	reports := map[string]int{}   // original qid -> reports at the sender
	var okSeen, flakySeen, reportSeen int
	scan := func(s *testutil.Sink, from *int, f func(testutil.Mail)) {
		ms := s.Mails()
		for _, m := range ms[*from:] {
			f(m)
		}
		*from = len(ms)
	}
	countDelivery := func(m testutil.Mail) {
		for _, r := range m.To {
			delivered[r]++
		}
	}
	badFile := func(qid string) bool {
		_, err1 := os.Stat(filepath.Join(cfg.BadmailDir(), qid+".BAD"))
		_, err2 := os.Stat(filepath.Join(cfg.BadmailDir(), qid+".BDR"))
		return err1 == nil && err2 == nil
	}
	badName := func(i int) string {
		if kindOf(i) == kindDouble {
			return envelope.QueueIDFor(qids[i] + ".bad_test.dsn1")
		}
		return qids[i]
	}
	missing := func() []string {
		scan(okSink, &okSeen, countDelivery)
		scan(flaky, &flakySeen, countDelivery)
		scan(senders, &reportSeen, func(m testutil.Mail) {
			p, err := dsn.Parse(bytes.NewReader(m.Data))
			if err != nil {
				t.Errorf("mail at the sender is not a report: %v", err)
				return
			}
			reports[p.Report.QueueID]++
		})
		var out []string
		for i := range count {
			var done bool
			switch kindOf(i) {
			case kindOK, kindFlaky:
				done = delivered[fmt.Sprintf("r%d@%s", i, domain[kindOf(i)])] > 0
			case kindBounce:
				done = reports[qids[i]] > 0
			case kindNull, kindDouble:
				done = badFile(badName(i))
			}
			if !done {
				out = append(out, fmt.Sprintf("#%d (kind %d, %s)", i, kindOf(i), qids[i]))
			}
		}
		return out
	}
	var left []string
	deadline := time.Now().Add(120 * time.Second)
	for {
		if left = missing(); len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	close(stopKilling)
	<-killerDone
	if len(left) > 0 {
		t.Fatalf("%d of %d messages did not arrive where expected, e.g. %v", len(left), count, left[:min(5, len(left))])
	}

	// Nothing is left over or went where it should not have.
	s, err := js.Stream(ctx, bus.StreamMail)
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 30*time.Second, "the queue to drain", func() bool {
		info, err := s.Info(ctx)
		return err == nil && info.State.Msgs == 0
	})
	killed.Wait()
	missing() // count what arrived late
	want := map[int]int{}
	for i := range count {
		want[kindOf(i)]++
	}
	if bounce.Count() != 0 || deadSink.Count() != 0 {
		t.Errorf("refused mail was accepted: %d at bad.test, %d at dead.test", bounce.Count(), deadSink.Count())
	}
	entries, _ := os.ReadDir(cfg.BadmailDir())
	badCount := 0
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".BAD") {
			badCount++
		}
	}
	if badCount != want[kindNull]+want[kindDouble] {
		t.Errorf("%d Badmail entries, want %d (null sender %d + double bounce %d)", badCount, want[kindNull]+want[kindDouble], want[kindNull], want[kindDouble])
	}
	dupDeliveries, dupReports := 0, 0
	for r, n := range delivered {
		if !strings.HasPrefix(r, "r") {
			t.Errorf("unexpected recipient %s", r)
		}
		dupDeliveries += n - 1
	}
	for q, n := range reports {
		dupReports += n - 1
		if q == "" {
			t.Errorf("report without a queue id")
		}
	}
	if len(delivered) != want[kindOK]+want[kindFlaky] || len(reports) != want[kindBounce] {
		t.Errorf("%d recipients delivered, want %d; %d reports, want %d", len(delivered), want[kindOK]+want[kindFlaky], len(reports), want[kindBounce])
	}
	mu.Lock()
	k := kills
	mu.Unlock()
	// Each kill can duplicate at most what that worker had in flight.
	if limit := k * (cfg.Delivery.Concurrency + 4); dupDeliveries+dupReports > limit {
		t.Errorf("%d duplicates after %d kills: more than the %d messages that can be in flight", dupDeliveries+dupReports, k, limit)
	}
	t.Logf("%d messages, %d delivery workers killed: %d delivered (%d duplicate deliveries), %d bounced (%d duplicate reports), %d in Badmail",
		count, k, len(delivered), dupDeliveries, len(reports), dupReports, badCount)
}
