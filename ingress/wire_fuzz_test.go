package ingress

import (
	"bufio"
	"bytes"
	"testing"
)

// runData feeds in through wire's DATA filter and returns what go-smtp
// would read, and whether the end of data was found.
func runData(in []byte) (out []byte, ended bool, bare uint32) {
	w := &wire{br: bufio.NewReader(bytes.NewReader(in)), mode: modeData, dataPrevCRLF: true, dataLineStart: true}
	for w.mode == modeData {
		if err := w.fillData(); err != nil {
			break
		}
		out = append(out, w.out...)
		w.out = w.out[:0]
	}
	return out, w.mode == modeCommand, w.bare.Load()
}

// FuzzDataFilter checks the smuggling invariants of the DATA filter for any
// input: the output has only CRLF line ends, go-smtp's end marker
// CRLF.CRLF appears only where the filter ended the message, and input
// without bare CR or LF passes unchanged.
func FuzzDataFilter(f *testing.F) {
	for _, s := range []string{
		"Subject: x\r\n\r\nbody\r\n.\r\n",
		"a\n.\nb\r\n.\r\n",
		"a\r\n.\nb\r\n.\r\n",
		"a\r.\rb\r\n.\r\n",
		".\r\n",
		"..\r\n.x\r\n.\r\n",
		"a\r\r\n.\r\n",
		"\r\n.\r\r\n.\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, ended, bare := runData(in)
		for i, c := range out {
			if c == '\n' && (i == 0 || out[i-1] != '\r') || c == '\r' && (i+1 >= len(out) || out[i+1] != '\n') {
				t.Fatalf("bare line end at %d in %q", i, out)
			}
		}
		full := append([]byte("\r\n"), out...)
		if i := bytes.Index(full, []byte("\r\n.\r\n")); i >= 0 && (!ended || i+5 != len(full)) {
			t.Fatalf("end of data at %d of %d (ended %v): %q", i, len(full), ended, out)
		}
		if ended && !bytes.HasSuffix(full, []byte("\r\n.\r\n")) {
			t.Fatalf("ended without the marker: %q", out)
		}
		if bare == 0 && !bytes.HasPrefix(in, out) {
			t.Fatalf("clean input changed:\n%q\n%q", in, out)
		}
	})
}
