package router

import (
	"context"
	"testing"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/testutil"
)

// Mail for a remote domain marked hold waits on mail.hold.<tok> for
// ETRN/ATRN; other remote domains still go to mail.out.<tok>.
func TestHeldDomainGoesToHold(t *testing.T) {
	n := testutil.StartNATS(t)
	_, js := n.Connect(t)
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.LocalDomains = []string{"local.test"}
	cfg.Domains = []config.Domain{{Name: "Dialup.Test", Type: config.DomainRemote, Hold: true}, {Name: "smart.test", Type: config.DomainRemote, SmartHost: "127.0.0.1:1"}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx := testutil.Context(t)
	r, err := New(cfg, testutil.Logger(t), js)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = r.Run(rctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	env := &envelope.Envelope{QueueID: envelope.NewQueueID(), From: "s@remote.test",
		Rcpts: []envelope.Rcpt{{Addr: "a@dialup.test"}, {Addr: "b@smart.test"}}}
	publishIn(t, js, env, "Subject: held\r\n\r\nbody\r\n")
	for subj, rcpt := range map[string]string{bus.Hold("dialup_test"): "a@dialup.test", bus.Out("smart_test"): "b@smart.test"} {
		m := waitSubject(t, js, subj)
		got, err := envelope.Decode(m.Header)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Rcpts) != 1 || got.Rcpts[0].Addr != rcpt || got.MsgID != env.QueueID+"."+bus.Token(rcpt[2:]) {
			t.Errorf("%s: %+v", subj, got)
		}
	}
}
