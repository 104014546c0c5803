package router

import (
	"errors"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
)

// FuzzPlan feeds the router's validation what any publisher could put on
// mail.in: it must never panic, reject only with errReject, and every part
// it plans must be a valid envelope for exactly one destination.
func FuzzPlan(f *testing.F) {
	f.Add("Q1", "<a@b.test>", "<c@local.test>", "<d@remote.test> NOTIFY=FAILURE", "", "Subject: x\r\n\r\nbody\r\n")
	f.Add("", "<>", "<x@y.test>", "", "key-1", "Received: a\r\n\r\n")
	f.Add("Q2", "<a@b.test>", "<\"q>x\"@z.test>", "<e@[192.0.2.1]>", "", "x")
	f.Add("Q3", "<a\r\n@b.test>", "<c@d.test>", "", "", "")
	cfg := config.Default()
	cfg.LocalDomains = []string{"local.test"}
	if err := cfg.Validate(); err != nil {
		f.Fatal(err)
	}
	s, _ := New(cfg, testutil.Discard(), nil)
	f.Fuzz(func(t *testing.T, qid, from, rcpt1, rcpt2, msgID, data string) {
		h := nats.Header{}
		h.Set(envelope.HdrQueueID, qid)
		h.Set(envelope.HdrMailFrom, from)
		h.Add(envelope.HdrRcpt, rcpt1)
		if rcpt2 != "" {
			h.Add(envelope.HdrRcpt, rcpt2)
		}
		if msgID != "" {
			h.Set(envelope.HdrMsgID, msgID)
		}
		env, parts, err := s.plan(h, []byte(data))
		if err != nil {
			if !errors.Is(err, errReject) {
				t.Fatalf("error without errReject: %v", err)
			}
			return
		}
		if len(parts) == 0 {
			t.Fatalf("accepted with no parts: %+v", env)
		}
		for _, p := range parts {
			ph, err := p.env.Header()
			if err != nil {
				t.Fatalf("planned part does not encode: %v", err)
			}
			if _, err := envelope.Decode(ph); err != nil {
				t.Fatalf("planned part does not decode: %v", err)
			}
			for _, r := range p.env.Rcpts {
				if envelope.Domain(r.Addr) != p.env.Domain {
					t.Fatalf("part for %s holds %s", p.env.Domain, r.Addr)
				}
			}
		}
	})
}
