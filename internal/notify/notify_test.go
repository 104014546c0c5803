package notify

import (
	"strings"
	"testing"

	"github.com/mailroot/mailroot/internal/dsn"
	"github.com/mailroot/mailroot/internal/envelope"
)

func TestWants(t *testing.T) {
	for _, tc := range []struct {
		notify                  []string
		failure, delay, success bool
	}{
		{nil, true, true, false},
		{[]string{"NEVER"}, false, false, false},
		{[]string{"FAILURE"}, true, false, false},
		{[]string{"DELAY"}, false, true, false},
		{[]string{"SUCCESS"}, false, false, true},
		{[]string{"SUCCESS", "FAILURE", "DELAY"}, true, true, true},
	} {
		r := envelope.Rcpt{Addr: "a@b.test", Notify: tc.notify}
		if Wants(r, dsn.Failure) != tc.failure || Wants(r, dsn.Delay) != tc.delay || Wants(r, dsn.Success) != tc.success {
			t.Errorf("NOTIFY=%v: failure %v delay %v success %v", tc.notify, Wants(r, dsn.Failure), Wants(r, dsn.Delay), Wants(r, dsn.Success))
		}
	}
}

func TestHeaderSection(t *testing.T) {
	long := "X-Long: " + strings.Repeat("a", 40<<10) + "\r\n"
	for _, tc := range []struct {
		name, in, want string
		limit          int
	}{
		{"crlf", "A: 1\r\nB: 2\r\n\r\nbody\r\n", "A: 1\r\nB: 2\r\n", 1000},
		{"lf", "A: 1\nB: 2\n\nbody\n", "A: 1\nB: 2\n", 1000},
		{"no body", "A: 1\r\nB: 2", "A: 1\r\nB: 2\r\n", 1000},
		{"limit keeps whole lines", "A: 1\r\nB: 2\r\n\r\n", "A: 1\r\n", 8},
		{"overlong line is cut", long + "B: 2\r\n\r\n", long[:16<<10] + "\r\nB: 2\r\n", 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := HeaderSection(strings.NewReader(tc.in), tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got %q, want %q", shorten(string(got)), shorten(tc.want))
			}
		})
	}
}

func shorten(s string) string {
	if len(s) > 80 {
		return s[:40] + "…" + s[len(s)-40:]
	}
	return s
}
