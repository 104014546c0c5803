package mtasts

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want *Policy // nil: invalid
	}{
		{"rfc example", "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n",
			&Policy{Mode: Enforce, MX: []string{"mail.example.com", "*.example.net", "backupmx.example.com"}, MaxAge: 604800 * time.Second}},
		{"LF, spaces, unknown key, case and dot", "version:STSv1\nmode:  testing \nfoo: bar\nmx: MX.Example.COM.\nmax_age: 86400\n",
			&Policy{Mode: Testing, MX: []string{"mx.example.com"}, MaxAge: 86400 * time.Second}},
		{"none without mx", "version: STSv1\nmode: none\nmax_age: 0\n", &Policy{Mode: None, MaxAge: 0}},
		{"max_age of more than ten digits", "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 99999999999\n", nil},
		{"max_age above a year taken as a year", "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 40000000\n",
			&Policy{Mode: Enforce, MX: []string{"a.test"}, MaxAge: MaxAge}},
		{"no version", "mode: enforce\nmx: a.test\nmax_age: 1\n", nil},
		{"wrong version", "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n", nil},
		{"bad mode", "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n", nil},
		{"no mx in enforce", "version: STSv1\nmode: enforce\nmax_age: 1\n", nil},
		{"no max_age", "version: STSv1\nmode: enforce\nmx: a.test\n", nil},
		{"negative max_age", "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n", nil},
		{"bad mx", "version: STSv1\nmode: enforce\nmx: a..test\nmax_age: 1\n", nil},
		{"star inside", "version: STSv1\nmode: enforce\nmx: a.*.test\nmax_age: 1\n", nil},
		{"line without colon", "version: STSv1\nmode enforce\nmx: a.test\nmax_age: 1\n", nil},
		{"mode twice", "version: STSv1\nmode: enforce\nmode: none\nmx: a.test\nmax_age: 1\n", nil},
		{"html", "<html><body>hello</body></html>", nil},
		{"too large", "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 1\n" + strings.Repeat("x: y\n", MaxPolicySize/5), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse([]byte(tc.in))
			if tc.want == nil {
				if err == nil || !errors.Is(err, ErrPolicy) {
					t.Fatalf("Parse = %+v, %v; want an ErrPolicy", p, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if p.Mode != tc.want.Mode || p.MaxAge != tc.want.MaxAge || !slices.Equal(p.MX, tc.want.MX) {
				t.Errorf("Parse = %+v, want %+v", p, tc.want)
			}
			// String renders a policy that parses back to the same.
			q, err := Parse([]byte(p.String()))
			if err != nil || q.Mode != p.Mode || q.MaxAge != p.MaxAge || !slices.Equal(q.MX, p.MX) {
				t.Errorf("String() %q parses to %+v, %v", p.String(), q, err)
			}
		})
	}
}

// A "*." pattern matches exactly one label in place of the star (RFC 8461
// §4.1).
func TestMatch(t *testing.T) {
	p := &Policy{Mode: Enforce, MX: []string{"mail.example.com", "*.example.net"}}
	for host, want := range map[string]bool{
		"mail.example.com":           true,
		"MAIL.example.com.":          true,
		"mx1.example.net":            true,
		"mx1.EXAMPLE.net.":           true,
		"example.net":                false,
		"a.b.example.net":            false,
		".example.net":               false,
		"other.example.com":          false,
		"mail.example.com.evil.test": false,
		"xexample.net":               false,
	} {
		if got := p.Match(host); got != want {
			t.Errorf("Match(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestParseRecord(t *testing.T) {
	for _, tc := range []struct {
		name  string
		txts  []string
		id    string
		found bool
		bad   bool
	}{
		{"rfc example", []string{"v=STSv1; id=20160831085700Z;"}, "20160831085700Z", true, false},
		{"no spaces, other records", []string{"v=spf1 -all", "v=STSv1;id=abc"}, "abc", true, false},
		{"extension field", []string{"v=STSv1; ext=1; id=x1"}, "x1", true, false},
		{"none", []string{"v=spf1 -all"}, "", false, false},
		{"empty", nil, "", false, false},
		{"two records", []string{"v=STSv1; id=a", "v=STSv1; id=b"}, "", true, true},
		{"no id", []string{"v=STSv1;"}, "", true, true},
		{"bad id", []string{"v=STSv1; id=a-b"}, "", true, true},
		{"long id", []string{"v=STSv1; id=" + strings.Repeat("a", 33)}, "", true, true},
		{"v not first", []string{"id=abc; v=STSv1"}, "", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, found, err := ParseRecord(tc.txts)
			if id != tc.id || found != tc.found || (err != nil) != tc.bad {
				t.Errorf("ParseRecord = %q, %v, %v; want %q, %v, error %v", id, found, err, tc.id, tc.found, tc.bad)
			}
			if err != nil && !errors.Is(err, ErrRecord) {
				t.Errorf("error %v is not ErrRecord", err)
			}
		})
	}
}

// FuzzParse: no input makes Parse panic, and what it accepts is a policy
// that renders and parses back to itself and matches its own names.
func FuzzParse(f *testing.F) {
	f.Add([]byte("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n"))
	f.Add([]byte("version: STSv1\nmode: none\nmax_age: 0\n"))
	f.Add([]byte("version: STSv1\nmode: testing\nmx: a.test.\nmax_age: 99999999\nx: y"))
	f.Add([]byte("mode: enforce\n:\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil {
			return
		}
		if p.MaxAge < 0 || p.MaxAge > MaxAge {
			t.Fatalf("max_age %v out of range", p.MaxAge)
		}
		q, err := Parse([]byte(p.String()))
		if err != nil || q.Mode != p.Mode || q.MaxAge != p.MaxAge || !slices.Equal(q.MX, p.MX) {
			t.Fatalf("%q renders as %q, which parses to %+v, %v", b, p.String(), q, err)
		}
		for _, mx := range p.MX {
			if !strings.HasPrefix(mx, "*.") && !p.Match(mx) {
				t.Fatalf("policy does not match its own mx %q", mx)
			}
		}
	})
}

// FuzzParseRecord: no TXT record makes ParseRecord panic, and an id it
// returns is 1 to 32 letters and digits.
func FuzzParseRecord(f *testing.F) {
	f.Add("v=STSv1; id=20160831085700Z;")
	f.Add("v=STSv1;id=")
	f.Add("v=spf1 -all")
	f.Fuzz(func(t *testing.T, txt string) {
		id, _, err := ParseRecord([]string{txt})
		if err == nil && id != "" && (len(id) > 32 || strings.ContainsAny(id, "; =\t")) {
			t.Fatalf("id %q from %q", id, txt)
		}
	})
}
