package admin

import (
	"net/http"
	"strings"
	"testing"

	"github.com/mailroot/mailroot/internal/liveconfig"
	"github.com/mailroot/mailroot/internal/testutil"
)

func diffText(d []DiffLine) string {
	var b strings.Builder
	for _, l := range d {
		b.WriteString(l.Mark() + l.Text + "|")
	}
	return b.String()
}

func TestLineDiff(t *testing.T) {
	for _, c := range []struct{ a, b, want string }{
		{"", "", ""},
		{"x", "x", " x|"},
		{"1", "2", "-1|+2|"},
		{"", "a\nb", "+a|+b|"},
		{"a\nb\n", "", "-a|-b|"},
		{"a\nb\nc\nd", "a\nc\nd\ne", " a|-b| c| d|+e|"},
		{"[\n  \"x\",\n  \"y\",\n]", "[\n  \"x\",\n  \"z\",\n  \"y\",\n]", ` [|   "x",|+  "z",|   "y",| ]|`},
	} {
		if got := diffText(LineDiff(c.a, c.b)); got != c.want {
			t.Errorf("LineDiff(%q, %q) = %q, want %q", c.a, c.b, got, c.want)
		}
	}
	// Past the bound: all removed, then all added.
	big := strings.Repeat("x\n", maxDiffLines+1)
	if d := LineDiff(big, "x"); len(d) != maxDiffLines+2 || d[0].Op != "del" || d[len(d)-1] != (DiffLine{"add", "x"}) {
		t.Errorf("long diff: %d lines, first %+v last %+v", len(d), d[0], d[len(d)-1])
	}
}

func TestRevisionDiff(t *testing.T) {
	r := func(before string, file bool, value string, unset bool) string {
		return diffText(Revision{Entry: liveconfig.Entry{Change: liveconfig.Change{Value: value, Unset: unset}}, Before: before, BeforeFile: file}.Diff())
	}
	if got := r("", true, "5", false); got != " (before: the file's value or the default)|+5|" {
		t.Errorf("first revision: %q", got)
	}
	if got := r("5", false, "", true); got != "-5| (after: the file's value or the default)|" {
		t.Errorf("unset: %q", got)
	}
	if got := r("5", false, "6", false); got != "-5|+6|" {
		t.Errorf("change: %q", got)
	}
}

// The history page shows each revision as a diff, and keeps its rollback
// button.
func TestHistoryDiff(t *testing.T) {
	srv, hs := startConsole(t, "")
	ctx := testutil.Context(t)
	for _, v := range []string{"100", "200"} {
		if _, err := srv.opt.Config.Set(ctx, "ingress.max_recipients", v, false, "alice (test)", "raise"); err != nil {
			t.Fatal(err)
		}
	}
	c := newClient(t)
	if code, _ := logIn(t, c, hs.URL, "root", "rootpw"); code != http.StatusSeeOther {
		t.Fatalf("login: %d", code)
	}
	code, body, _ := get(t, c, hs.URL, "/history")
	for _, w := range []string{`<pre class="diff"><span class="del">- 100</span><span class="add">&#43; 200</span></pre>`,
		`<pre class="diff"><span class="file">  (before: the file&#39;s value or the default)</span><span class="add">&#43; 100</span></pre>`,
		`name="rollback"`} {
		if code != 200 || !strings.Contains(body, w) {
			t.Errorf("history page (%d) lacks %s", code, w)
		}
	}
}
