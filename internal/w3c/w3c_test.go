package w3c

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailroot/mailroot/internal/testutil"
)

// clock is an injected clock that tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

func readLog(t *testing.T, name string) []Record {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := Parse(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%s does not parse: %v\n%s", name, err, b)
	}
	return recs
}

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		"":                           "-",
		"-":                          "%2D",
		"EHLO":                       "EHLO",
		"FROM:<a@b.test> SIZE=10":    "FROM:<a@b.test>+SIZE=10",
		"TO:<user+tag@b.test>":       "TO:<user%2Btag@b.test>",
		"100%":                       "100%25",
		"tab\there\r\n":              "tab%09here%0D%0A",
		"jörg":                       "j%C3%B6rg",
		"--":                         "--",
		"  ":                         "++",
		"\x7f":                       "%7F",
		"<Q1ABC@mailroot.test>":      "<Q1ABC@mailroot.test>",
		"PLAIN":                      "PLAIN",
		"mail.example.com (a comma)": "mail.example.com+(a+comma)",
	} {
		got := Escape(in)
		if got != want {
			t.Errorf("Escape(%q) = %q, want %q", in, got, want)
		}
		back, err := Unescape(got)
		if err != nil || back != in {
			t.Errorf("Unescape(%q) = %q, %v; want %q", got, back, err, in)
		}
	}
	for _, bad := range []string{"", "a b", "%", "%4", "%zz", "%4g", "a\tb", "é"} {
		if v, err := Unescape(bad); err == nil {
			t.Errorf("Unescape(%q) = %q, want an error", bad, v)
		}
	}
}

// Every string escapes to one field that reads back as the string.
func FuzzEscape(f *testing.F) {
	for _, s := range []string{"", "-", "a b", "+%", "FROM:<x@y> BODY=8BITMIME", "\x00\xff", "ünï cödé", "%2B"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e := Escape(s)
		if e == "" {
			t.Fatalf("Escape(%q) is empty", s)
		}
		for i := 0; i < len(e); i++ {
			if c := e[i]; c <= ' ' || c >= 0x7f {
				t.Fatalf("Escape(%q) = %q holds byte %#x", s, e, c)
			}
		}
		if (e == None) != (s == "") {
			t.Fatalf("Escape(%q) = %q: None only for the empty string", s, e)
		}
		back, err := Unescape(e)
		if err != nil || back != s {
			t.Fatalf("Unescape(Escape(%q)) = %q, %v", s, back, err)
		}
	})
}

// Parse never panics, and what it accepts has every declared field.
func FuzzParse(f *testing.F) {
	f.Add("#Software: Mailroot\r\n#Version: 1.0\r\n#Date: 2026-01-02 03:04:05\r\n#Fields: date time sc-status cs-method\r\n2026-01-02 03:04:05 250 EHLO\r\n")
	f.Add("#Version: 1.0\r\n#Fields: date time\r\n2026-01-02 03:04:05\r\n#Fields: date time s-port\r\n2026-01-02 03:04:06 -\r\n")
	f.Add("2026-01-02 03:04:05 250\r\n")
	f.Add("#Fields: date time\n")
	f.Fuzz(func(t *testing.T, s string) {
		recs, err := Parse(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, r := range recs {
			_, d := r.Fields["date"]
			_, tm := r.Fields["time"]
			if !d || !tm || r.Time.Format("2006-01-02") != r.Fields["date"] {
				t.Fatalf("record without its date and time: %+v", r)
			}
		}
	})
}

// Lines have every field, in the order of #Fields, with the values given,
// None for what is missing; the file starts with the directives.
func TestWriteAndParse(t *testing.T) {
	dir := t.TempDir()
	c := &clock{t: time.Date(2026, 3, 4, 10, 11, 12, 0, time.UTC)}
	w, err := Open(Options{Dir: dir, Site: "default", Computer: "mx.test", Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	w.Log(Entry{ClientIP: "127.0.0.1", ServerIP: "127.0.0.2", ServerPort: 25, Method: "EHLO", Query: "client.test", Status: 250, BytesSent: 120, BytesReceived: 18, TimeTaken: 3 * time.Millisecond, Version: "ESMTP"})
	w.Log(Entry{ClientIP: "::1", Username: "client.test", Method: "MAIL", Query: "FROM:<a+b@c.test> SIZE=10", Status: 250, Version: "ESMTP"})
	w.Log(Entry{Time: time.Date(2026, 3, 4, 10, 11, 13, 0, time.Local), Method: "QUIT", Status: 221})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	w.Log(Entry{Method: "NOOP", Status: 250}) // after Close: dropped, no panic
	if w.Dropped() != 1 || w.Lines() != 3 {
		t.Fatalf("dropped %d lines %d, want 1 and 3", w.Dropped(), w.Lines())
	}
	name := filepath.Join(dir, "ex260304.log")
	raw, _ := os.ReadFile(name)
	wantHead := "#Software: Mailroot\r\n#Version: 1.0\r\n#Date: 2026-03-04 10:11:12\r\n#Fields: date time c-ip cs-username s-sitename s-computername s-ip s-port cs-method cs-uri-query sc-status sc-bytes cs-bytes time-taken cs-version cs(User-Agent)\r\n"
	if !strings.HasPrefix(string(raw), wantHead) {
		t.Fatalf("file starts:\n%s\nwant:\n%s", raw, wantHead)
	}
	if want := "2026-03-04 10:11:12 ::1 client.test default mx.test - 0 MAIL FROM:<a%2Bb@c.test>+SIZE=10 250 0 0 0 ESMTP -\r\n"; !strings.Contains(string(raw), want) {
		t.Errorf("MAIL line is not\n%s\nin\n%s", want, raw)
	}
	recs := readLog(t, name)
	if len(recs) != 3 {
		t.Fatalf("%d records, want 3", len(recs))
	}
	want := map[string]string{"date": "2026-03-04", "time": "10:11:12", "c-ip": "127.0.0.1", "cs-username": "", "s-sitename": "default", "s-computername": "mx.test",
		"s-ip": "127.0.0.2", "s-port": "25", "cs-method": "EHLO", "cs-uri-query": "client.test", "sc-status": "250", "sc-bytes": "120", "cs-bytes": "18",
		"time-taken": "3", "cs-version": "ESMTP", "cs(User-Agent)": ""}
	if !reflect.DeepEqual(want, recs[0].Fields) {
		t.Errorf("EHLO record:\n%v\nwant\n%v", recs[0].Fields, want)
	}
	if got := recs[1].Fields["cs-uri-query"]; got != "FROM:<a+b@c.test> SIZE=10" {
		t.Errorf("MAIL query read back as %q", got)
	}
	if got := recs[2].Time; !got.Equal(time.Date(2026, 3, 4, 10, 11, 13, 0, time.UTC)) || recs[2].Fields["sc-status"] != "221" {
		t.Errorf("QUIT record %v %v: the entry's own time, in UTC", got, recs[2].Fields)
	}
}

// A line of a new UTC day goes into that day's file, which starts with
// its own directives; reopening a day's file appends a new directive
// block, as IIS did after a restart.
func TestRotationAtMidnight(t *testing.T) {
	dir := t.TempDir()
	c := &clock{t: time.Date(2026, 12, 31, 23, 59, 58, 0, time.UTC)}
	w, err := Open(Options{Dir: dir, Site: "s1", Computer: "mx.test", Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	w.Log(Entry{Method: "EHLO", Status: 250})
	c.Set(time.Date(2026, 12, 31, 23, 59, 59, 999e6, time.UTC))
	w.Log(Entry{Method: "MAIL", Status: 250})
	c.Set(time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC))
	w.Log(Entry{Method: "RCPT", Status: 250})
	// A zone east of UTC is already on the next day: the file follows UTC.
	w.Log(Entry{Time: time.Date(2027, 1, 1, 0, 30, 0, 0, time.FixedZone("CET", 3600)), Method: "DATA", Status: 250})
	w.Close()

	old := readLog(t, filepath.Join(dir, "ex261231.log"))
	if len(old) != 3 || old[0].Fields["cs-method"] != "EHLO" || old[1].Fields["cs-method"] != "MAIL" || old[2].Fields["cs-method"] != "DATA" {
		t.Fatalf("ex261231.log: %+v", old)
	}
	if old[2].Fields["time"] != "23:30:00" {
		t.Errorf("DATA at 00:30 CET logged at %s, want 23:30:00 UTC", old[2].Fields["time"])
	}
	nw := readLog(t, filepath.Join(dir, "ex270101.log"))
	if len(nw) != 1 || nw[0].Fields["cs-method"] != "RCPT" || nw[0].Fields["date"] != "2027-01-01" {
		t.Fatalf("ex270101.log: %+v", nw)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, "ex270101.log"))
	if !strings.HasPrefix(string(raw), "#Software: Mailroot\r\n#Version: 1.0\r\n#Date: 2027-01-01 00:00:00\r\n") {
		t.Errorf("the new day's file starts:\n%s", raw)
	}
	raw, _ = os.ReadFile(filepath.Join(dir, "ex261231.log"))
	if n := strings.Count(string(raw), "#Fields: "); n != 2 {
		t.Errorf("ex261231.log has %d #Fields directives, want 2 (opened, reopened for the CET line):\n%s", n, raw)
	}

	// A restart on the same day appends.
	w, err = Open(Options{Dir: dir, Site: "s1", Computer: "mx.test", Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	w.Log(Entry{Method: "QUIT", Status: 221})
	w.Close()
	if nw := readLog(t, filepath.Join(dir, "ex270101.log")); len(nw) != 2 || nw[1].Fields["cs-method"] != "QUIT" {
		t.Fatalf("after the restart: %+v", nw)
	}
}

// A full disk: the error is logged once, lines are dropped and counted,
// Log never blocks nor fails; once RetryAfter has passed and the file can
// be written, logging resumes and says so.
func TestFullDisk(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	dir := t.TempDir()
	c := &clock{t: time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)}
	name := filepath.Join(dir, "ex260506.log")
	if err := os.Symlink("/dev/full", name); err != nil {
		t.Fatal(err)
	}
	var logs testutil.Logs
	w, err := Open(Options{Dir: dir, Site: "s1", Now: c.Now, FlushInterval: 5 * time.Millisecond, Log: logs.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	w.Log(Entry{Method: "EHLO", Status: 250})
	testutil.WaitFor(t, 10*time.Second, "the write error logged", func() bool { return logs.Count("transaction log write failed") == 1 })
	start := time.Now()
	for range 10000 {
		w.Log(Entry{Method: "NOOP", Status: 250})
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("10000 Log calls on a failing disk took %v", d)
	}
	testutil.WaitFor(t, 10*time.Second, "the lines dropped", func() bool { return w.Dropped() >= 10000 })
	if n := logs.Count("transaction log write failed"); n != 1 {
		t.Fatalf("write error logged %d times, want once:\n%s", n, logs.String())
	}
	// A retry while the disk is still full says nothing new.
	c.Set(c.Now().Add(RetryAfter))
	before := w.Dropped()
	w.Log(Entry{Method: "NOOP", Status: 250})
	testutil.WaitFor(t, 10*time.Second, "the retry's line dropped", func() bool { return w.Dropped() == before+1 })
	if n := logs.Count("transaction log write failed"); n != 1 || logs.Count("writable again") != 0 {
		t.Fatalf("after a failed retry:\n%s", logs.String())
	}
	// The disk has room again.
	if err := os.Remove(name); err != nil {
		t.Fatal(err)
	}
	c.Set(c.Now().Add(RetryAfter))
	w.Log(Entry{Method: "QUIT", Status: 221})
	w.Close()
	recs := readLog(t, name)
	if len(recs) != 1 || recs[0].Fields["cs-method"] != "QUIT" {
		t.Fatalf("after the retry: %+v", recs)
	}
	if logs.Count("transaction log writable again") != 1 {
		t.Errorf("recovery not logged:\n%s", logs.String())
	}
}

// The strict parser refuses what a tool reading the file could not use.
func TestParseStrict(t *testing.T) {
	head := "#Software: Mailroot\r\n#Version: 1.0\r\n#Date: 2026-01-02 03:04:05\r\n#Fields: date time c-ip sc-status s-port\r\n"
	if recs, err := Parse(strings.NewReader(head + "2026-01-02 03:04:05 127.0.0.1 250 25\r\n")); err != nil || len(recs) != 1 {
		t.Fatalf("a good file: %v %v", recs, err)
	}
	for what, s := range map[string]string{
		"entry first":       "2026-01-02 03:04:05 127.0.0.1 250 25\r\n",
		"no #Fields":        "#Version: 1.0\r\n2026-01-02 03:04:05 127.0.0.1 250 25\r\n",
		"no #Version":       "#Fields: date time\r\n2026-01-02 03:04:05\r\n",
		"version 2":         "#Version: 2.0\r\n",
		"bad #Date":         "#Version: 1.0\r\n#Date: yesterday\r\n",
		"field missing":     head + "2026-01-02 03:04:05 127.0.0.1 250\r\n",
		"field extra":       head + "2026-01-02 03:04:05 127.0.0.1 250 25 x\r\n",
		"blank field":       head + "2026-01-02 03:04:05  250 25\r\n",
		"status two digits": head + "2026-01-02 03:04:05 127.0.0.1 25 25\r\n",
		"status none":       head + "2026-01-02 03:04:05 127.0.0.1 - 25\r\n",
		"bad date":          head + "2026-13-02 03:04:05 127.0.0.1 250 25\r\n",
		"bad port":          head + "2026-01-02 03:04:05 127.0.0.1 250 x\r\n",
		"bad escape":        head + "2026-01-02 03:04:05 127.0.0.%zz 250 25\r\n",
		"LF only":           strings.ReplaceAll(head, "\r\n", "\n"),
		"unknown directive": "#Version: 1.0\r\n#Colour: blue\r\n",
	} {
		if _, err := Parse(strings.NewReader(s)); err == nil {
			t.Errorf("%s: no error for\n%s", what, s)
		}
	}
}

// BenchmarkLog is what a command pays on the SMTP path: Log alone, from
// many goroutines; the writer goroutine formats and writes.
func BenchmarkLog(b *testing.B) {
	w, err := Open(Options{Dir: b.TempDir(), Site: "default", Computer: "mx.test", QueueLen: 1 << 16})
	if err != nil {
		b.Fatal(err)
	}
	e := Entry{ClientIP: "192.0.2.7", ServerIP: "192.0.2.1", ServerPort: 25, Username: "client.example.net", Method: "RCPT",
		Query: "TO:<bob+news@example.org>", Status: 250, BytesSent: 24, BytesReceived: 33, Version: "SMTP"}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w.Log(e)
		}
	})
	b.StopTimer()
	w.Close()
	b.ReportMetric(float64(w.Dropped())/float64(b.N), "dropped/op")
}

// Two writers on one file (two ingress processes with the same log_dir
// and site) never split each other's lines: each write is whole lines,
// appended.
func TestTwoWritersOneFile(t *testing.T) {
	dir := t.TempDir()
	c := &clock{t: time.Date(2026, 7, 8, 9, 10, 11, 0, time.UTC)}
	const n = 5000
	var wg sync.WaitGroup
	for i := range 2 {
		w, err := Open(Options{Dir: dir, Site: "default", Computer: fmt.Sprintf("node%d", i), Now: c.Now, QueueLen: n})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range n {
				w.Log(Entry{ClientIP: "192.0.2.7", Method: "RCPT", Query: fmt.Sprintf("TO:<user%d@example.org> NOTIFY=NEVER", j), Status: 250})
			}
			w.Close()
			if w.Dropped() != 0 {
				t.Errorf("writer %d dropped %d", i, w.Dropped())
			}
		}()
	}
	wg.Wait()
	recs := readLog(t, filepath.Join(dir, "ex260708.log"))
	if len(recs) != 2*n {
		t.Fatalf("%d records, want %d", len(recs), 2*n)
	}
}

// Whatever a client sends, its line has every field and reads back with
// the values given.
func FuzzLine(f *testing.F) {
	f.Add("EHLO", "client.test", "", 250, int64(10), 3)
	f.Add("MAIL", "FROM:<a+b@c> SIZE=1", "hélo name", 550, int64(-1), 0)
	f.Add("", "", "-", 0, int64(0), 99999)
	f.Fuzz(func(t *testing.T, method, query, user string, status int, bytes int64, port int) {
		o := Options{Site: "default", Computer: "mx.test"}
		tm := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
		e := Entry{ClientIP: "192.0.2.1", Username: user, Method: method, Query: query, Status: status, BytesSent: bytes, ServerPort: port}
		head := "#Version: 1.0\r\n#Fields: " + strings.Join(Fields, " ") + "\r\n"
		line := appendLine(nil, &o, &e, tm)
		recs, err := Parse(strings.NewReader(head + string(line)))
		if status < 100 || status > 599 {
			// Not a reply code: "-", which the strict parser refuses.
			if err == nil && (status < 100 || status > 999) {
				t.Fatalf("status %d: parsed %v", status, recs)
			}
			return
		}
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		r := recs[0].Fields
		if r["cs-method"] != method || r["cs-uri-query"] != query || r["cs-username"] != user || r["sc-status"] != fmt.Sprint(status) {
			t.Fatalf("read back %v from %q", r, line)
		}
		if bytes >= 0 && r["sc-bytes"] != fmt.Sprint(bytes) || bytes < 0 && r["sc-bytes"] != "" {
			t.Fatalf("sc-bytes %q for %d", r["sc-bytes"], bytes)
		}
	})
}

// With the queue full, Log drops rather than waits, and every entry is
// either a line of the file or counted as dropped.
func TestQueueFullDrops(t *testing.T) {
	dir := t.TempDir()
	c := &clock{t: time.Date(2026, 2, 3, 4, 5, 6, 0, time.UTC)}
	w, err := Open(Options{Dir: dir, Site: "s", Now: c.Now, QueueLen: 1})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20000
	for range n {
		w.Log(Entry{Method: "NOOP", Status: 250})
	}
	w.Close()
	if w.Dropped() == 0 {
		t.Skip("the writer kept up with a queue of one: nothing dropped to check")
	}
	recs := readLog(t, filepath.Join(dir, "ex260203.log"))
	if uint64(len(recs)) != w.Lines() || w.Lines()+w.Dropped() != n {
		t.Fatalf("%d lines in the file, %d written, %d dropped, of %d", len(recs), w.Lines(), w.Dropped(), n)
	}
}
