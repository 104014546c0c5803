package smtpclient

import (
	"bufio"
	"bytes"
)

// dotWriter writes a message as DATA content (RFC 5321 §4.5.2): a "." at
// the start of a line is doubled, a line feed not preceded by a carriage
// return goes out as CRLF, and Close ends the content with CRLF "." CRLF.
// It does what textproto's DotWriter does (one difference: in "\r\r\n"
// the line feed follows a CR and is left alone, where textproto adds a
// second CR) a line at a time instead of a byte at a time: the byte loop
// was the largest cost of sending a message in a profile of delivery.
type dotWriter struct {
	w         *bufio.Writer
	lineStart bool // the next byte starts a line
	cr        bool // the last byte written was a CR
}

func newDotWriter(w *bufio.Writer) *dotWriter { return &dotWriter{w: w, lineStart: true} }

func (d *dotWriter) Write(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		if d.lineStart && b[n] == '.' {
			if err := d.w.WriteByte('.'); err != nil {
				return n, err
			}
		}
		line := b[n:]
		i := bytes.IndexByte(line, '\n')
		if i < 0 {
			if _, err := d.w.Write(line); err != nil {
				return n, err
			}
			d.lineStart, d.cr = false, line[len(line)-1] == '\r'
			return len(b), nil
		}
		cr := d.cr
		if i > 0 {
			cr = line[i-1] == '\r'
		}
		if _, err := d.w.Write(line[:i]); err != nil {
			return n, err
		}
		end := "\n"
		if !cr {
			end = "\r\n"
		}
		if _, err := d.w.WriteString(end); err != nil {
			return n, err
		}
		n += i + 1
		d.lineStart, d.cr = true, false
	}
	return n, nil
}

// Close writes the end of the content (a CRLF first when the content did
// not end in a line end) and flushes.
func (d *dotWriter) Close() error {
	end := ".\r\n"
	if !d.lineStart {
		end = "\r\n.\r\n"
	}
	if _, err := d.w.WriteString(end); err != nil {
		return err
	}
	return d.w.Flush()
}
