package delivery

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
)

// Quarantined mail is written to Quarantine/ byte for byte, with a reason
// file, and acked only then: a directory that cannot be written keeps
// the message queued until it can. Large bodies are read from the Object
// Store and released after.
func TestQuarantineFiles(t *testing.T) {
	h := newHarness(t)
	dir := h.cfg.QuarantineDir()
	// A file where the directory should be: every write fails.
	if err := os.WriteFile(dir, []byte("in the way"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.start(func(s *Service) { s.DropRetryDelay = 100 * time.Millisecond })

	small := []byte("Received: from x\r\nAuthentication-Results: mx.test; dmarc=fail header.from=bad.test\r\nFrom: a@bad.test\r\n\r\nbody without final newline")
	env := newEnv("local.test", "b@local.test", "c@local.test")
	env.Reason = "DMARC policy of bad.test is quarantine"
	env.Body = envelope.BodyInline
	h.publish(bus.SubjQuarantine, env, small)

	b, err := bus.OpenBodies(h.t.Context(), h.js)
	if err != nil {
		t.Fatal(err)
	}
	large := bytes.Repeat([]byte("0123456789abcdef\r\n"), 10000)
	big := newEnv("local.test", "b@local.test")
	big.Reason = "DMARC policy of bad.test is reject"
	big.Body = envelope.BodyObject
	if big.BodySize, err = b.Put(h.t.Context(), big.QueueID, bytes.NewReader(large)); err != nil {
		t.Fatal(err)
	}
	h.publish(bus.SubjQuarantine, big, nil)

	// Still queued while the directory cannot be made.
	testutil.WaitFor(t, wait, "a failed write to be retried", func() bool {
		c, err := h.js.Consumer(t.Context(), bus.StreamMail, bus.ConsumerQuarantine)
		if err != nil {
			return false
		}
		info, err := c.Info(t.Context())
		return err == nil && info.NumRedelivered == 2 && info.NumPending+uint64(info.NumAckPending) == 2
	})
	if _, err := os.Stat(filepath.Join(dir, env.QueueID+".eml")); err == nil {
		t.Fatal("written through a file")
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		env  *envelope.Envelope
		data []byte
	}{{env, small}, {big, large}} {
		eml := filepath.Join(dir, tc.env.QueueID+".eml")
		testutil.WaitFor(t, wait, "quarantine file "+eml, func() bool { _, err := os.Stat(filepath.Join(dir, tc.env.QueueID+".txt")); return err == nil })
		got, err := os.ReadFile(eml)
		if err != nil || !bytes.Equal(got, tc.data) {
			t.Fatalf("%s: %d bytes, %v; want the message byte for byte", eml, len(got), err)
		}
		reason, _ := os.ReadFile(filepath.Join(dir, tc.env.QueueID+".txt"))
		for _, want := range []string{"Reason: " + tc.env.Reason + "\n", "Queue-Id: " + tc.env.QueueID, "Sender: sender@origin.test", "Recipient: b@local.test"} {
			if !strings.Contains(string(reason), want) {
				t.Errorf("reason file lacks %q:\n%s", want, reason)
			}
		}
	}
	h.waitEmpty()
	testutil.WaitFor(t, wait, "a quarantined event per message", func() bool {
		n := 0
		_ = bus.ReadEvents(t.Context(), h.js, bus.EventFilter{Type: bus.EventQuarantined}, false, func(e bus.Event) error {
			if (e.QueueID == env.QueueID || e.QueueID == big.QueueID) && strings.HasPrefix(e.Reason, "DMARC policy") && strings.HasPrefix(e.File, dir) {
				n++
			}
			return nil
		})
		return n == 2
	})
	testutil.WaitFor(t, wait, "the large body released", func() bool {
		_, err := b.Open(t.Context(), big, nil)
		return err != nil
	})
}
