package ingress

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
)

// withSync gives the service a Room whose syncs run fn (the group commit
// with an injected sync) and whose PubAcks are recorded.
func withSync(log *testutil.Events, fn func() error) func(*Service) {
	return func(s *Service) {
		syncer := bus.NewSyncer(fn)
		s.Room = &bus.Room{JS: testutil.AckRecorder{JetStream: s.js, Events: log, Header: envelope.HdrQueueID}, Reserve: s.conf().NATS.Reserve, Sync: syncer.Sync}
	}
}

// No 250 is written before a sync of the store that started after the
// message's PubAck has completed, with 10 sessions sending at once.
func TestNo250BeforeTheSync(t *testing.T) {
	log := &testutil.Events{}
	var syncs atomic.Int64
	f := startLogged(t, nil, nil, testutil.Logger(t), withSync(log, log.Sync(func(int) error { syncs.Add(1); return nil })))
	var wg sync.WaitGroup
	for g := 0; g < 10; g++ {
		wg.Go(func() {
			c, err := smtp.Dial(f.addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			for i := 0; i < 5; i++ {
				qid, err := sendTracked(c, fmt.Sprintf("r%d-%d@remote.test", g, i))
				if err != nil {
					t.Error(err)
					return
				}
				log.Done("puback "+qid, "250 "+qid)
			}
		})
	}
	wg.Wait()
	t.Logf("%d syncs for %d messages", syncs.Load(), log.CheckSynced(t))
}

// sendTracked sends one message and returns the queue id from the 250.
func sendTracked(c *smtp.Client, rcpt string) (string, error) {
	if err := c.Mail("a@remote.test", nil); err != nil {
		return "", err
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return "", err
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := w.Write([]byte("Subject: s\r\n\r\nbody\r\n")); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	_, qid, ok := strings.Cut(resp.StatusText, "queued as ")
	if !ok {
		return "", fmt.Errorf("no queue id in %q", resp.StatusText)
	}
	return qid, nil
}

// A sync that fails is 451 4.3.0: the message was written but is not
// known to be durable, so no 250.
func TestFailedSyncIs451(t *testing.T) {
	f := startLogged(t, nil, nil, testutil.Logger(t), withSync(&testutil.Events{}, func() error { return errors.New("EIO") }))
	c, err := smtp.Dial(f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = sendTracked(c, "b@local.test")
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 451 || (se.EnhancedCode != smtp.EnhancedCode{4, 3, 0}) {
		t.Fatalf("message with a failing sync: %v, want 451 4.3.0", err)
	}
}
