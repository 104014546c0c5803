package authcheck

import (
	"bytes"
	"strings"
	"testing"

	"blitiri.com.ar/go/spf"
	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dmarc"
)

var headerSeeds = []string{
	"From: a@x.test\r\nAuthentication-Results: mx.test; spf=pass\r\n\r\nbody\r\n",
	"Authentication-Results: (c) mx.test\r\n\t(more); dkim=pass\r\nSubject: x\r\n\r\n",
	"authentication-results:mx.test;\n dmarc=fail\nFrom: \"q\" <a@b.test>\n\nAuthentication-Results: mx.test; x\n",
	" leading continuation: x\r\nAuthentication-Results: \"mx.test\"; none\r\n",
	"no colon line\r\nAuthentication-Results: mx.test",
	"\r\n\r\n",
	"From: =?utf-8?q?J=C3=B6rg?= <j@x.test>, b@X.TEST.\r\n\r\n",
}

// FuzzStripOwn: removing our fields keeps every other byte in order, the
// body untouched, leaves no field claiming our id, and is idempotent.
func FuzzStripOwn(f *testing.F) {
	for _, s := range headerSeeds {
		f.Add([]byte(s), "mx.test")
	}
	f.Fuzz(func(t *testing.T, msg []byte, id string) {
		out, n := StripOwn(msg, id)
		if n == 0 && !bytes.Equal(out, msg) {
			t.Fatal("changed with nothing removed")
		}
		if len(out) > len(msg) {
			t.Fatal("grew")
		}
		_, at := fields(msg)
		_, outAt := fields(out)
		if !bytes.Equal(msg[at:], out[outAt:]) {
			t.Fatalf("body changed: %q -> %q", msg[at:], out[outAt:])
		}
		if !isSubsequence(out, msg) {
			t.Fatal("output is not the input less some bytes")
		}
		fs, _ := fields(out)
		for _, f := range fs {
			if strings.EqualFold(f.name, HeaderName) && strings.EqualFold(ServID(value(out, f)), id) {
				t.Fatalf("field %q claiming %q left", out[f.start:f.end], id)
			}
		}
		if again, m := StripOwn(out, id); m != 0 || !bytes.Equal(again, out) {
			t.Fatalf("not idempotent: %d more removed", m)
		}
	})
}

func isSubsequence(sub, s []byte) bool {
	i := 0
	for j := 0; j < len(s) && i < len(sub); j++ {
		if s[j] == sub[i] {
			i++
		}
	}
	return i == len(sub)
}

// FuzzFromDomains: any header section gives distinct lower-case domains
// or an error, never a panic.
func FuzzFromDomains(f *testing.F) {
	for _, s := range headerSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, header []byte) {
		ds, err := FromDomains(header)
		if (err != nil) != (len(ds) == 0) {
			t.Fatalf("domains %q with error %v", ds, err)
		}
		seen := map[string]bool{}
		for _, d := range ds {
			if d == "" || d != strings.ToLower(d) || seen[d] {
				t.Fatalf("domains %q", ds)
			}
			seen[d] = true
			_ = OrgDomain(d)
		}
	})
}

// FuzzHeader: whatever the client controls (HELO, the MAIL FROM domain,
// DKIM d= and i=, the From domain, reasons), the header is lines of at
// most 998 bytes that go-msgauth parses back to the same results.
func FuzzHeader(f *testing.F) {
	f.Add("mx.test", "org.test", "client.test", "d.test", "@d.test", "bad signature", "from.test")
	f.Add("a b;c", "x; y\r\nz", "[1.2.3.4]", "\"q\"", "i=@x;", strings.Repeat("r", 500), "é.test")
	f.Fuzz(func(t *testing.T, id, mailFrom, helo, d, i, reason, from string) {
		v := Verdict{
			SPF:   SPFResult{Result: spf.Pass, Domain: mailFrom},
			Helo:  SPFResult{Result: spf.Fail, Domain: helo},
			DKIM:  []DKIMResult{{Result: "fail", Domain: d, Identifier: i, Reason: reason}},
			DMARC: DMARCResult{Result: "permerror", From: from, Reason: reason, Policy: dmarc.PolicyReject},
		}
		h := Header(id, v)
		if !strings.HasPrefix(h, HeaderName+": ") || !strings.HasSuffix(h, "\r\n") {
			t.Fatalf("header %q", h)
		}
		lines := strings.Split(strings.TrimSuffix(h, "\r\n"), "\r\n")
		for n, l := range lines {
			if len(l) > 998 || strings.ContainsAny(l, "\r\n") || (n > 0 && !strings.HasPrefix(l, "\t")) {
				t.Fatalf("line %q", l)
			}
		}
		unfolded := strings.TrimPrefix(strings.Join(lines, ""), HeaderName+": ")
		gotID, rs, err := authres.Parse(unfolded)
		if err != nil || len(rs) != 4 {
			t.Fatalf("Parse(%q) = %d results, %v", unfolded, len(rs), err)
		}
		if gotID != clean(id, maxDomain) && !(id == "" && gotID == "") {
			t.Fatalf("id %q, want %q", gotID, clean(id, maxDomain))
		}
		if r, ok := rs[2].(*authres.DKIMResult); !ok || r.Value != authres.ResultFail {
			t.Fatalf("dkim %#v", rs[2])
		}
	})
}
