package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// keygen writes the key under data_dir/dkim with mode 0600 and prints a
// TXT record a DNS server accepts; list shows it; a second keygen for
// the same selector fails naming the file; bad input exits 2 naming it.
func TestDKIMKeygenAndList(t *testing.T) {
	data := t.TempDir()
	var out, errb bytes.Buffer
	if rc := dkimCommand([]string{"keygen", "-data", data, "-domain", "Example.TEST", "-selector", "s2026", "-algorithm", "ed25519"}, &out, &errb); rc != 0 {
		t.Fatalf("keygen: rc %d: %s", rc, errb.String())
	}
	path := filepath.Join(data, "dkim", "example.test", "s2026.key")
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", err, fi)
	}
	var record string
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(l, "s2026._domainkey.example.test. IN TXT ") {
			record = l
		}
	}
	rr, err := dns.NewRR(record)
	if err != nil || !strings.HasPrefix(strings.Join(rr.(*dns.TXT).Txt, ""), "v=DKIM1; k=ed25519; p=") {
		t.Fatalf("record %q: %v", record, err)
	}
	out.Reset()
	if rc := dkimCommand([]string{"list", "-data", data}, &out, &errb); rc != 0 || !strings.Contains(out.String(), record) || !strings.Contains(out.String(), path) {
		t.Errorf("list: rc %d:\n%s", rc, out.String())
	}
	errb.Reset()
	if rc := dkimCommand([]string{"keygen", "-data", data, "-domain", "example.test", "-selector", "s2026"}, &out, &errb); rc != 1 || !strings.Contains(errb.String(), path) {
		t.Errorf("second keygen: rc %d: %s", rc, errb.String())
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"keygen", "-data", data}, "-domain"},
		{[]string{"keygen", "-data", data, "-domain", "example.test", "-algorithm", "dsa"}, "dsa"},
		{[]string{"keygen", "-data", data, "-domain", "example.test", "-selector", "bad_sel"}, "bad_sel"},
		{[]string{"rotate"}, "rotate"},
	} {
		errb.Reset()
		if rc := dkimCommand(tc.args, &out, &errb); rc == 0 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: rc %d: %s", tc.args, rc, errb.String())
		}
	}
}
