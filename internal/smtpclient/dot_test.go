package smtpclient

import (
	"bufio"
	"bytes"
	"io"
	"net/textproto"
	"strings"
	"testing"
)

// stuffByByte is the specification of dotWriter, a byte at a time: a "."
// starting a line is doubled, an LF not right after a CR becomes CRLF,
// and the end is CRLF "." CRLF (the CRLF only if the content did not end
// a line).
func stuffByByte(b []byte) []byte {
	var out []byte
	lineStart, cr := true, false
	for _, c := range b {
		if lineStart && c == '.' {
			out = append(out, '.')
		}
		if c == '\n' && !cr {
			out = append(out, '\r')
		}
		out = append(out, c)
		lineStart, cr = c == '\n', c == '\r'
	}
	if !lineStart {
		out = append(out, '\r', '\n')
	}
	return append(out, '.', '\r', '\n')
}

// stuffInChunks runs dotWriter over b cut into writes of the sizes in cuts
// (cycled), as io.Copy and the body reader cut a message.
func stuffInChunks(t testing.TB, b []byte, cuts []int) []byte {
	var out bytes.Buffer
	bw := bufio.NewWriterSize(&out, 16)
	d := newDotWriter(bw)
	for k := 0; len(b) > 0; k++ {
		n := len(b)
		if len(cuts) > 0 {
			n = min(max(cuts[k%len(cuts)], 1), len(b))
		}
		if w, err := d.Write(b[:n]); err != nil || w != n {
			t.Fatalf("Write(%q) = %d, %v", b[:n], w, err)
		}
		b = b[n:]
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func TestDotWriter(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ".\r\n"},
		{"a\r\n", "a\r\n.\r\n"},
		{"a", "a\r\n.\r\n"},
		{".\r\n", "..\r\n.\r\n"},
		{"a\r\n.b\r\n..c\r\n", "a\r\n..b\r\n...c\r\n.\r\n"},
		{"bare\nlf\n.dot\n", "bare\r\nlf\r\n..dot\r\n.\r\n"},
		{"x.\r\ny", "x.\r\ny\r\n.\r\n"},
		{"cr\r", "cr\r\r\n.\r\n"},
		{"\n\n", "\r\n\r\n.\r\n"},
	} {
		for _, cuts := range [][]int{nil, {1}, {2, 1}, {3}} {
			if got := string(stuffInChunks(t, []byte(tc.in), cuts)); got != tc.want {
				t.Errorf("%q in writes of %v: %q, want %q", tc.in, cuts, got, tc.want)
			}
		}
	}
}

// The content that Mailroot stores is CRLF-canonical (ingress, Pickup and
// submission make it so); for that, dotWriter's output is textproto's.
func TestDotWriterMatchesTextprotoOnCanonicalContent(t *testing.T) {
	body := "Subject: x\r\n\r\n.one\r\n..two\r\nthree.\r\n.\r\n\r\n" + strings.Repeat("line of text\r\n", 500) + "no end"
	var want bytes.Buffer
	tw := textproto.NewWriter(bufio.NewWriter(&want)).DotWriter()
	if _, err := io.Copy(tw, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if got := stuffInChunks(t, []byte(body), []int{4096, 7, 1}); !bytes.Equal(got, want.Bytes()) {
		t.Errorf("dotWriter and textproto differ:\n%q\n%q", got, want.Bytes())
	}
}

func FuzzDotWriter(f *testing.F) {
	f.Add([]byte("a\r\n.b\r\n"), uint8(3), uint8(1))
	f.Add([]byte("\r\r\n.\n.\r"), uint8(1), uint8(2))
	f.Add([]byte(".."), uint8(0), uint8(0))
	f.Fuzz(func(t *testing.T, b []byte, c1, c2 uint8) {
		want := stuffByByte(b)
		if got := stuffInChunks(t, b, []int{int(c1), int(c2)}); !bytes.Equal(got, want) {
			t.Fatalf("%q in writes of %d,%d: %q, want %q", b, c1, c2, got, want)
		}
	})
}

func BenchmarkDotWriter(b *testing.B) {
	body := []byte(strings.Repeat("a line of a message, about seventy characters long, as most are....\r\n", 60))
	b.Run("dotWriter", func(b *testing.B) {
		bw := bufio.NewWriterSize(io.Discard, dataBuffer)
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			d := newDotWriter(bw)
			_, _ = d.Write(body)
			_ = d.Close()
		}
	})
	b.Run("textproto", func(b *testing.B) {
		bw := bufio.NewWriterSize(io.Discard, dataBuffer)
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			d := textproto.NewWriter(bw).DotWriter()
			_, _ = d.Write(body)
			_ = d.Close()
		}
	})
}
