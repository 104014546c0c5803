package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/testutil"
)

// bigBody generates a message of exactly size bytes: a header, then
// 78-character lines.
type bigBody struct {
	size, off int64
}

func (b *bigBody) Read(p []byte) (int, error) {
	const header = "From: big@local.test\r\nTo: rcpt@big.test\r\nSubject: 50 MB\r\n\r\n"
	if b.off >= b.size {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && b.off < b.size {
		var c byte
		switch {
		case b.off < int64(len(header)):
			c = header[b.off]
		case b.size-b.off <= 2:
			c = "\r\n"[2-(b.size-b.off)]
		default:
			switch i := (b.off - int64(len(header))) % 78; i {
			case 76:
				c = '\r'
			case 77:
				c = '\n'
			default:
				c = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(b.off/78+i)%64]
			}
		}
		p[n] = c
		n++
		b.off++
	}
	return n, nil
}

// vmHWM reads a process's peak resident set size from /proc.
func vmHWM(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

// A 50 MiB message goes through `mailroot all` (SMTP in, Object Store,
// router, delivery streaming to the remote MX) byte for byte, and the
// process's peak RSS stays under 150 MB.
func TestBigMessageRSS(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and moves 50 MiB")
	}
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("needs /proc")
	}
	const size = 50 << 20
	bin := buildBinary(t)
	sink := testutil.StartSink(t)
	dns := testutil.StartDNS(t, "big.test. MX 10 mx.big.test.", "mx.big.test. A 127.0.0.1")
	dir := t.TempDir()
	port := freePort(t)
	cfgPath := filepath.Join(dir, "mailroot.toml")
	cfg := fmt.Sprintf(`hostname = "mailroot.test"
data_dir = %q
local_domains = ["local.test"]
[ingress]
listen = ["127.0.0.1:%d"]
max_message_size = %d
[delivery]
port = %d
dns_server = %q
retry = ["1s"]
`, filepath.Join(dir, "data"), port, 60<<20, sink.Port, dns.Addr)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := startProcess(t, "mailroot all", 30*time.Second, bin, "all", "-config", cfgPath)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	var conn net.Conn
	testutil.WaitFor(t, 30*time.Second, "mailroot listening", func() bool {
		var err error
		conn, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err == nil
	})
	// A stalled server fails the test instead of hanging it.
	_ = conn.SetDeadline(time.Now().Add(2 * time.Minute))
	c := smtp.NewClient(conn)
	defer c.Close()
	idle, _ := vmHWM(cmd.Process.Pid)
	start := time.Now()
	want := sha256.New()
	if err := c.SendMail("big@local.test", []string{"rcpt@big.test"}, io.TeeReader(&bigBody{size: size}, want)); err != nil {
		t.Fatal(err)
	}
	accepted := time.Since(start)
	testutil.WaitFor(t, 120*time.Second, "the 50 MiB message at the remote MX", func() bool { return sink.Count() == 1 })
	total := time.Since(start)
	m := sink.Mails()[0]
	// Our Received: header comes first, then the message byte for byte.
	i := bytes.Index(m.Data, []byte("From: big@local.test\r\n"))
	if i < 0 || sha256.Sum256(m.Data[i:]) != [32]byte(want.Sum(nil)) || len(m.Data)-i != size {
		t.Fatalf("remote got %d bytes, not the message", len(m.Data))
	}
	peak, err := vmHWM(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("50 MiB message: accepted in %v, at the remote MX after %v; mailroot all peak RSS (VmHWM) %.1f MB (%.1f MB before the message)",
		accepted.Round(time.Millisecond), total.Round(time.Millisecond), float64(peak)/1e6, float64(idle)/1e6)
	if peak >= 150e6 {
		t.Errorf("peak RSS %.1f MB, want under 150 MB", float64(peak)/1e6)
	}
}
