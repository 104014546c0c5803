package queue

import (
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/envelope"
)

func header(t *testing.T) nats.Header {
	t.Helper()
	h, err := (&envelope.Envelope{QueueID: "Q1", From: "a@b.test", Rcpts: []envelope.Rcpt{{Addr: "c@d.test"}}}).Header()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestEntryOfSubjects(t *testing.T) {
	h := header(t)
	for _, c := range []struct{ subj, tok, origin string }{
		{"mail.out.d_test", "d_test", "out"},
		{"mail.defer.d_test.Q1", "d_test", "out"},
		{"mail.hold.d_test", "d_test", "hold"},
		{"mail.drop", "d_test", "drop"},
		{"mail.adminhold.hold.d_test.Q1", "d_test", ""},
		{"mail.in", "", "out"},
		{"mail.bad", "", "out"},
	} {
		e := entryOf(&jetstream.RawStreamMsg{Subject: c.subj, Header: h, Sequence: 7})
		if e.Tok != c.tok || e.QueueID != "Q1" || e.Env == nil {
			t.Errorf("%s: tok %q qid %q env %v, want tok %q", c.subj, e.Tok, e.QueueID, e.Env, c.tok)
		}
		if c.origin != "" && origin(c.subj) != c.origin {
			t.Errorf("%s: origin %q, want %q", c.subj, origin(c.subj), c.origin)
		}
	}
	if o, tok, qid := cut("mail.adminhold.drop.d_test.Q1"); o != "drop" || tok != "d_test" || qid != "Q1" {
		t.Errorf("cut: %q %q %q", o, tok, qid)
	}
}

func TestSelection(t *testing.T) {
	h := header(t)
	e := entryOf(&jetstream.RawStreamMsg{Subject: "mail.out.d_test", Header: h})
	for _, c := range []struct {
		sel  Selection
		want bool
	}{
		{Selection{IDs: []string{"Q1"}}, true},
		{Selection{IDs: []string{"Q2"}}, false},
		{Selection{Domain: "D.test"}, true},
		{Selection{Domain: "e.test"}, false},
		{Selection{All: true}, true},
		{Selection{}, false},
	} {
		if got := c.sel.match(e); got != c.want {
			t.Errorf("%+v: %v, want %v", c.sel, got, c.want)
		}
	}
}

// FuzzEntryOf: any stored subject and headers describe an entry without
// a panic; a token found is one subject token, and an admin-hold subject
// splits back into what it was built from.
func FuzzEntryOf(f *testing.F) {
	for _, s := range []string{"mail.out.x_test", "mail.defer.x_test.Q", "mail.adminhold.out.x_test.Q", "mail.adminhold.", "mail.adminhold.a", "mail.drop", "mail.hold.", "mail.defer."} {
		f.Add(s, "Q", "<a@b.test>", "c@x.test")
	}
	f.Fuzz(func(t *testing.T, subj, qid, from, rcpt string) {
		h := nats.Header{envelope.HdrQueueID: []string{qid}, envelope.HdrMailFrom: []string{from}, envelope.HdrRcpt: []string{rcpt}}
		e := entryOf(&jetstream.RawStreamMsg{Subject: subj, Header: h})
		if strings.HasPrefix(subj, bus.SubjOutPrefix) && e.Tok != strings.TrimPrefix(subj, bus.SubjOutPrefix) {
			t.Fatalf("%q: tok %q", subj, e.Tok)
		}
		if AdminHeld(subj) {
			o, tok, q := cut(subj)
			if e.Tok != "" && (SubjAdminHoldPrefix+o+"."+tok+"."+q != subj) {
				t.Fatalf("%q: cut to %q %q %q", subj, o, tok, q)
			}
		}
	})
}
