package ingress

import (
	"bufio"
	"bytes"
	"io"
	"testing"
)

// runData reads in through the DATA reader and returns the message, how
// many input bytes it consumed, whether it found the end and the bare
// line ends it noted.
func runData(in []byte) (out []byte, consumed int, ended bool, bare uint32) {
	rd := bytes.NewReader(in)
	ss := &session{br: bufio.NewReader(rd)}
	r := &dataReader{content: content{ss: ss}, prevCRLF: true, lineStart: true}
	out, _ = io.ReadAll(r)
	return out, len(in) - rd.Len() - ss.br.Buffered(), r.done, ss.bare
}

// unstuff is RFC 5321 §4.5.2 done plainly, for input with CRLF line ends
// only: a leading dot of each line is dropped.
func unstuff(in []byte) []byte {
	var out []byte
	for _, l := range bytes.SplitAfter(in, []byte("\r\n")) {
		out = append(out, bytes.TrimPrefix(l, []byte("."))...)
	}
	return out
}

// FuzzDataReader checks the smuggling invariants of DATA for any input:
// the message has only CRLF line ends; it ends exactly at the first
// CRLF.CRLF of the input (the start counting as after a CRLF), as any
// other server would see it, and nowhere else; input without bare CR or
// LF is unstuffed and otherwise unchanged.
func FuzzDataReader(f *testing.F) {
	for _, s := range []string{
		"Subject: x\r\n\r\nbody\r\n.\r\n",
		"a\n.\nb\r\n.\r\n",
		"a\r\n.\nb\r\n.\r\n",
		"a\r.\rb\r\n.\r\n",
		".\r\n",
		"..\r\n.x\r\n.\r\n",
		"a\r\r\n.\r\n",
		"\r\n.\r\r\n.\r\n",
		".\r\r\n.\r\n",
		"a\n.\r\n.\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, consumed, ended, bare := runData(in)
		for i, c := range out {
			if c == '\n' && (i == 0 || out[i-1] != '\r') || c == '\r' && (i+1 >= len(out) || out[i+1] != '\n') {
				t.Fatalf("bare line end at %d in %q", i, out)
			}
		}
		end := bytes.Index(append([]byte("\r\n"), in...), []byte("\r\n.\r\n"))
		switch {
		case end < 0 && ended:
			t.Fatalf("ended at %d without an end marker in %q", consumed, in)
		case end >= 0 && !ended:
			t.Fatalf("end marker at %d not seen in %q", end, in)
		case ended && consumed != end+3:
			t.Fatalf("ended after %d bytes, the marker ends at %d: %q", consumed, end+3, in)
		}
		if ended && bare == 0 {
			if want := unstuff(in[:consumed-3]); !bytes.Equal(out, want) {
				t.Fatalf("clean input changed:\n%q\n%q", want, out)
			}
		}
	})
}
