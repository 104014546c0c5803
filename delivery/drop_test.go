package delivery

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestDropGolden checks Drop files against golden files: the message byte
// for byte after the IIS envelope lines (Bcc recipients included), no
// blank line added, a per-domain drop_dir honoured. On a mismatch the
// actual output is written beside the golden file as .got.
func TestDropGolden(t *testing.T) {
	h := newHarness(t)
	ownDir := filepath.Join(t.TempDir(), "b-mailboxes")
	h.cfg.LocalDomains = []string{"local.test"}
	h.cfg.Domains = []config.Domain{{Name: "b.test", Type: config.DomainLocal, DropDir: ownDir}}
	if err := h.cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	h.start(nil)
	tests := []struct {
		name, domain, from string
		rcpts              []string
		dir                string
	}{
		{"drop-two-rcpts", "local.test", "sender@origin.test", []string{"to@local.test", "hidden-bcc@local.test"}, filepath.Join(h.cfg.DropDir(), "local.test")},
		{"drop-null-sender", "b.test", "", []string{"postmaster@b.test"}, ownDir},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, err := os.ReadFile(filepath.Join("testdata", tt.name+".in.eml"))
			if err != nil {
				t.Fatal(err)
			}
			env := &envelope.Envelope{QueueID: envelope.NewQueueID(), From: tt.from, Domain: tt.domain, ReceivedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)}
			for _, r := range tt.rcpts {
				env.Rcpts = append(env.Rcpts, envelope.Rcpt{Addr: r})
			}
			h.publish(bus.SubjDrop, env, in)
			path := filepath.Join(tt.dir, env.QueueID+".eml")
			testutil.WaitFor(t, wait, "drop file "+path, func() bool { _, err := os.Stat(path); return err == nil })
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", tt.name+".golden.eml")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				_ = os.WriteFile(filepath.Join("testdata", tt.name+".got.eml"), got, 0o644)
				t.Errorf("drop file differs from %s (actual written to .got.eml):\n%q", golden, got)
			}
			if !bytes.HasSuffix(got, in) {
				t.Errorf("the message is not byte-exact after the envelope lines")
			}
		})
	}
	h.waitEmpty()
}
