package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/testutil"
)

// Mail from the null sender to a domain that does not exist has no one
// to be returned to: it lands in Badmail. list shows it with its reason,
// sender and recipient; show prints its report; requeue submits it again
// (it lands in Badmail again, under its new queue id, the domain still
// not existing) and removes the old entry; delete removes an entry; an
// unknown name exits 1 naming it.
func TestBadmailCommands(t *testing.T) {
	dir := t.TempDir()
	n, cfg, _ := queueNode(t, dir, nil)
	c, err := smtp.Dial(n.Ingress.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	body := "From: mailer-daemon@local.test\r\nSubject: lost\r\n\r\nnobody home\r\n"
	if err := c.SendMail("", []string{"x@nowhere.test"}, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	bad := cfg.BadmailDir()
	var list []badEntry
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		rc := badmailCommand(append(args, "-data", cfg.DataDir), &out, &errb)
		return rc, out.String(), errb.String()
	}
	entriesNow := func() []badEntry {
		rc, out, errs := run("list", "-json")
		if rc != 0 {
			t.Fatalf("list: %d %s", rc, errs)
		}
		var l []badEntry
		dec := json.NewDecoder(strings.NewReader(out))
		for dec.More() {
			var e badEntry
			if err := dec.Decode(&e); err != nil {
				t.Fatal(err)
			}
			l = append(l, e)
		}
		return l
	}
	testutil.WaitFor(t, 30*time.Second, "the mail in Badmail", func() bool { list = entriesNow(); return len(list) == 1 })
	e := list[0]
	if e.Sender != "" || len(e.Recipients) != 1 || e.Recipients[0] != "x@nowhere.test" || !strings.Contains(e.Reason, "nowhere.test") {
		t.Errorf("entry %+v", e)
	}
	if rc, out, _ := run("list"); rc != 0 || !strings.Contains(out, e.Name) || !strings.Contains(out, "nowhere.test") {
		t.Errorf("list: %d %s", rc, out)
	}
	if rc, out, _ := run("show", e.Name); rc != 0 || !strings.Contains(out, "Badmail report") || !strings.Contains(out, "x@nowhere.test") {
		t.Errorf("show: %d %s", rc, out)
	}
	rc, out, errs := run("requeue", e.Name)
	if rc != 0 || !strings.Contains(out, "requeued as ") {
		t.Fatalf("requeue: %d %s %s", rc, out, errs)
	}
	if _, err := os.Stat(filepath.Join(bad, e.Name+".BAD")); !os.IsNotExist(err) {
		t.Errorf("old entry still there: %v", err)
	}
	qid := strings.TrimSpace(out[strings.Index(out, "requeued as ")+len("requeued as "):])
	testutil.WaitFor(t, 30*time.Second, "the requeued mail back in Badmail", func() bool {
		list = entriesNow()
		return len(list) == 1 && strings.HasPrefix(list[0].Name, qid)
	})
	data, err := os.ReadFile(filepath.Join(bad, list[0].Name+".BAD"))
	if err != nil || !bytes.HasSuffix(data, []byte(body)) {
		t.Errorf("requeued message %q: %v", data, err)
	}
	if rc, out, _ := run("delete", list[0].Name); rc != 0 || !strings.Contains(out, "deleted") {
		t.Errorf("delete: %d %s", rc, out)
	}
	if l := entriesNow(); len(l) != 0 {
		t.Errorf("after delete: %+v", l)
	}
	for _, args := range [][]string{{"show", "NOPE"}, {"delete", "NOPE"}, {"requeue", "NOPE"}} {
		if rc, _, errs := run(args...); rc != 1 || !strings.Contains(errs, "no such message: NOPE") {
			t.Errorf("%v: %d %s", args, rc, errs)
		}
	}
	if rc, _, errs := run("show", "../x"); rc != 1 || !strings.Contains(errs, "bad entry name") {
		t.Errorf("path in a name: %d %s", rc, errs)
	}
}
