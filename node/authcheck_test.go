package node

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

// End to end in one `mailroot all`: mail from outside relay_networks
// whose From domain publishes p=reject, with dmarc_reject = "quarantine",
// is accepted, written to Quarantine/ with our Authentication-Results and
// a reason file, and never reaches the Drop directory; mail that passes
// DMARC is dropped with its header.
func TestQuarantineEndToEnd(t *testing.T) {
	w := newWorld(t)
	k := testutil.NewDKIMKey(t, "good.test", "s")
	for _, rr := range []string{k.Record(), `_dmarc.evil.test. TXT "v=DMARC1; p=reject"`, `evil.test. TXT "v=spf1 -all"`, `_dmarc.good.test. TXT "v=DMARC1; p=reject"`} {
		w.dns.Add(t, rr)
	}
	cfg := testConfig(t, w, t.TempDir())
	cfg.Ingress.DMARCReject = config.ActionQuarantine
	n := startNode(t, cfg)
	addr := n.Ingress.Addrs()[0]

	bad := "From: <ceo@evil.test>\r\nTo: <a@local.test>\r\nSubject: wire money\r\n\r\nNow.\r\n"
	qid, err := submitFrom(addr, "127.0.0.2", "ceo@evil.test", []string{"a@local.test"}, bad)
	if err != nil {
		t.Fatal(err)
	}
	eml := filepath.Join(cfg.QuarantineDir(), qid+".eml")
	testutil.WaitFor(t, 20*time.Second, "quarantine files", func() bool {
		_, err := os.Stat(filepath.Join(cfg.QuarantineDir(), qid+".txt"))
		return err == nil
	})
	got, err := os.ReadFile(eml)
	if err != nil || !bytes.HasSuffix(got, []byte(bad)) || !bytes.Contains(got, []byte("dmarc=fail")) || !bytes.HasPrefix(got, []byte("Received: ")) {
		t.Fatalf("quarantined message (%v):\n%s", err, got)
	}
	reason, _ := os.ReadFile(filepath.Join(cfg.QuarantineDir(), qid+".txt"))
	if !strings.Contains(string(reason), "DMARC policy of evil.test is reject") {
		t.Errorf("reason file:\n%s", reason)
	}

	good := string(k.Sign(t, "From: <ceo@good.test>\r\nTo: <a@local.test>\r\nSubject: hi\r\n\r\nHello.\r\n"))
	qid2, err := submitFrom(addr, "127.0.0.2", "ceo@good.test", []string{"a@local.test"}, good)
	if err != nil {
		t.Fatal(err)
	}
	drop := filepath.Join(cfg.DropDir(), "local.test", qid2+".eml")
	testutil.WaitFor(t, 20*time.Second, "drop file", func() bool { _, err := os.Stat(drop); return err == nil })
	if got, _ := os.ReadFile(drop); !bytes.Contains(got, []byte("dmarc=pass")) {
		t.Errorf("dropped message:\n%s", got)
	}
	if _, err := os.Stat(filepath.Join(cfg.DropDir(), "local.test", qid+".eml")); err == nil {
		t.Error("quarantined mail reached the Drop directory")
	}
}
