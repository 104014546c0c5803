package ingress

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Message content: DATA (RFC 5321 §4.1.1.4) and BDAT (RFC 3030). Both hand
// session.Data a reader of the message as it is to be stored, with CRLF
// line ends; the reader notes what the session must refuse (bare line
// ends, a message over max_message_size) and how the read ended.

var (
	// errTooBig: the message passed max_message_size; the rest is
	// discarded and the client gets 552 5.3.4.
	errTooBig = errors.New("ingress: message too big")
	// errAborted: the client left BDAT for another command (RSET, QUIT,
	// EHLO, …), which the loop handles next; the message has no reply.
	errAborted = errors.New("ingress: message transfer aborted")
)

// content is what both readers share: the size limit and how the read
// ended.
type content struct {
	ss     *session
	n, max int64
	err    error     // errTooBig, errAborted, or the connection's error
	ended  time.Time // when the end of the data was read
}

// count adds n bytes of content; false once the message is too big.
func (c *content) count(n int) bool {
	c.n += int64(n)
	if c.max > 0 && c.n > c.max && c.err == nil {
		c.err = errTooBig
	}
	return !errors.Is(c.err, errTooBig)
}

// finish replies to the message: rep is session.Data's answer, used when
// the content itself was fine.
func (c *content) finish(rep *reply) {
	ss := c.ss
	switch {
	case errors.Is(c.err, errAborted), errors.Is(c.err, errClosed):
		// Another command ended the transfer and is handled next, or the
		// connection is over (readCommand answered).
	case errors.Is(c.err, errTooBig):
		ss.site.m.Refused5xx.Inc()
		ss.reply(552, "5.3.4", "Message too big")
	case c.err != nil:
		// The connection failed or timed out in the content.
		ss.site.m.Refused4xx.Inc()
		ss.reply(451, "4.3.0", "Error reading message data")
		_ = ss.readFailed(c.err)
	default:
		switch {
		case rep.Code < 300:
			ss.site.m.Received.Inc()
			ss.site.m.Bytes.Add(float64(c.n))
			if !c.ended.IsZero() {
				ss.site.m.AcceptDuration.Observe(time.Since(c.ended).Seconds())
			}
		case rep.Code < 500:
			ss.site.m.Refused4xx.Inc()
		default:
			ss.site.m.Refused5xx.Inc()
		}
		ss.replyWith(rep)
	}
	ss.tx.content = c.n
	ss.resetTx()
}

// dataCmd answers DATA: 354, then the content up to the end marker.
func (ss *session) dataCmd(arg string) {
	switch {
	case arg != "":
		ss.reply(501, "5.5.4", "Syntax: DATA")
		return
	case !ss.inTx || len(ss.rcpts) == 0:
		ss.reply(502, "5.5.1", "Send RCPT first")
		return
	case ss.mail.Body == bodyBinary:
		ss.reply(502, "5.5.1", "Use BDAT for BINARYMIME")
		return
	}
	ss.reply(354, "", "Start mail input; end with <CRLF>.<CRLF>")
	buf := dataBufs.Get().(*[]byte)
	defer dataBufs.Put(buf)
	r := &dataReader{content: content{ss: ss, max: ss.sp.cfg.MaxMessageSize}, buf: (*buf)[:0], prevCRLF: true, lineStart: true}
	ss.inContent = true
	ss.startRequest()
	rep := ss.Data(r)
	// Whatever the answer, the content is read to its end first.
	for r.err == nil || errors.Is(r.err, errTooBig) {
		if !r.fill() {
			break
		}
		r.out = r.out[:0]
	}
	ss.inContent = false
	r.finish(rep)
	*buf = r.buf[:0]
}

// dataReader reads DATA in canonical form and unstuffed: every line ends
// in CRLF, and only a "." line after a genuine CRLF, itself ended by CRLF,
// ends the message. A bare LF or CR is a line end, noted in session.bare;
// a "." line made with one is content, so a message can never end where
// another server would see its end (SMTP smuggling).
type dataReader struct {
	content
	out       []byte // content prepared, not yet read
	buf       []byte // out's storage, refilled from its start once out is read
	done      bool
	prevCRLF  bool // the last line ended with a genuine CRLF
	lineStart bool
}

// dataChunk is how much content one fill prepares at most.
const dataChunk = 32 << 10

// dataBufs hold the storage of dataReader.out, so that reading DATA
// allocates nothing per message: one fill prepares up to dataChunk bytes,
// and its last line may add what the session's reader buffers (8 KiB).
var dataBufs = sync.Pool{New: func() any { b := make([]byte, 0, dataChunk+8<<10+4); return &b }}

func (r *dataReader) Read(p []byte) (int, error) {
	for len(r.out) == 0 {
		if r.done {
			return 0, io.EOF
		}
		if r.err != nil {
			return 0, r.err
		}
		r.out = r.buf[:0]
		ok := r.fill()
		r.buf = r.out[:0]
		if !ok {
			if r.done {
				return 0, io.EOF
			}
			return 0, r.err
		}
	}
	n := copy(p, r.out)
	r.out = r.out[n:]
	if !r.count(n) {
		r.out = r.out[:0]
		return n, r.err
	}
	return n, nil
}

// fill appends the next piece of content to out; false at the end marker
// or on a read error (in err).
func (r *dataReader) fill() bool {
	if r.done {
		return false
	}
	br := r.ss.br
	out := r.out
	defer func() { r.out = out }()
	fail := func(err error) bool {
		if r.err == nil || errors.Is(r.err, errTooBig) {
			r.err = err
		}
		return false
	}
	for len(out) < dataChunk {
		if br.Buffered() == 0 {
			if _, err := br.Peek(1); err != nil {
				fail(err)
				return len(out) > 0
			}
		}
		b, _ := br.Peek(br.Buffered())
		if r.lineStart && b[0] == '.' {
			p, err := br.Peek(2)
			if err != nil {
				return fail(err)
			}
			switch p[1] {
			case '\n':
				_, _ = br.Discard(2)
				out = append(out, ".\r\n"...)
				r.ss.bare |= bareLF
				r.prevCRLF = false
				continue
			case '\r':
				if p, err = br.Peek(3); err != nil {
					return fail(err)
				}
				if p[2] == '\n' {
					_, _ = br.Discard(3)
					if r.prevCRLF {
						r.done = true
						r.ended = time.Now()
						return len(out) > 0
					}
					out = append(out, ".\r\n"...)
					r.prevCRLF = true
					continue
				}
				_, _ = br.Discard(2)
				out = append(out, ".\r\n"...)
				r.ss.bare |= bareCR
				r.prevCRLF = false
				continue
			default:
				// A stuffed dot: dropped (RFC 5321 §4.5.2).
				_, _ = br.Discard(1)
				r.lineStart = false
				continue
			}
		}
		i := bytes.IndexAny(b, "\r\n")
		if i < 0 {
			n := min(len(b), dataChunk-len(out))
			out = append(out, b[:n]...)
			_, _ = br.Discard(n)
			r.lineStart = false
			continue
		}
		out = append(out, b[:i]...)
		_, _ = br.Discard(i)
		r.lineStart = true
		if b[i] == '\n' {
			_, _ = br.Discard(1)
			out = append(out, '\r', '\n')
			r.ss.bare |= bareLF
			r.prevCRLF = false
			continue
		}
		p, err := br.Peek(2)
		if err != nil {
			return fail(err)
		}
		out = append(out, '\r', '\n')
		if p[1] == '\n' {
			_, _ = br.Discard(2)
			r.prevCRLF = true
			continue
		}
		_, _ = br.Discard(1)
		r.ss.bare |= bareCR
		r.prevCRLF = false
	}
	return true
}

// bdatCmd answers BDAT <size> [LAST]: the chunk is read whatever the
// answer (RFC 3030 §2). The reader reads further BDAT commands itself, so
// one call of session.Data reads the whole message.
func (ss *session) bdatCmd(arg string) {
	size, last, ok := parseBDAT(arg)
	if !ok {
		ss.reply(501, "5.5.4", "Syntax: BDAT <size> [LAST]")
		return
	}
	switch {
	case !ss.inTx || len(ss.rcpts) == 0:
		ss.reply(502, "5.5.1", "Send RCPT first")
		ss.discard(size)
		return
	case ss.sp.cfg.MaxMessageSize > 0 && size > ss.sp.cfg.MaxMessageSize:
		ss.reply(552, "5.3.4", "Message too big")
		ss.discard(size)
		ss.resetTx()
		return
	}
	r := &bdatReader{content: content{ss: ss, max: ss.sp.cfg.MaxMessageSize}, left: size, last: last,
		binary: ss.mail.Body == bodyBinary}
	r.start()
	rep := ss.Data(r)
	if r.err == nil || errors.Is(r.err, errTooBig) {
		// session.Data may stop early (it refused the message): the rest
		// of this chunk is read.
		ss.discard(r.left)
	}
	ss.inContent = false
	r.finish(rep)
}

// parseBDAT parses "size [LAST]".
func parseBDAT(arg string) (size int64, last, ok bool) {
	f := strings.Fields(arg)
	if len(f) == 0 || len(f) > 2 || (len(f) == 2 && !strings.EqualFold(f[1], "LAST")) {
		return 0, false, false
	}
	n, err := strconv.ParseUint(f[0], 10, 32) // a chunk of 4 GiB or more is refused as malformed
	if err != nil {
		return 0, false, false
	}
	return int64(n), len(f) == 2, true
}

// discard reads and drops n bytes of content.
func (ss *session) discard(n int64) {
	if n <= 0 {
		return
	}
	ss.inContent = true
	ss.startRequest()
	if _, err := io.CopyN(io.Discard, ss.br, n); err != nil {
		_ = ss.readFailed(err)
	}
	ss.inContent = false
}

// bdatReader passes BDAT chunks through unchanged (their length is fixed);
// outside BINARYMIME bare CR and LF are noted for the session to refuse.
type bdatReader struct {
	content
	left   int64
	last   bool
	binary bool
	prevCR bool
}

func (r *bdatReader) start() {
	r.ss.inContent = true
	r.ss.startRequest()
}

func (r *bdatReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	for r.left == 0 {
		if r.last {
			if r.ended.IsZero() {
				r.ended = time.Now()
			}
			if !r.binary && r.prevCR {
				r.ss.bare |= bareCR // the message ends in a bare CR
			}
			return 0, io.EOF
		}
		if !r.next() {
			return 0, r.err
		}
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.ss.br.Read(p)
	r.left -= int64(n)
	if !r.binary {
		for _, c := range p[:n] {
			switch {
			case r.prevCR && c != '\n':
				r.ss.bare |= bareCR
			case c == '\n' && !r.prevCR:
				r.ss.bare |= bareLF
			}
			r.prevCR = c == '\r'
		}
	}
	if n == 0 && err != nil {
		r.err = err
		return 0, err
	}
	if !r.count(n) {
		return n, r.err
	}
	return n, nil
}

// next acknowledges the chunk just read and reads commands until the next
// BDAT. NOOP is answered; MAIL, RCPT and DATA are refused as out of
// sequence; any other command ends the transfer and is handled by the loop.
func (r *bdatReader) next() bool {
	ss := r.ss
	ss.inContent = false
	ss.reply(250, "2.0.0", "Chunk accepted")
	for {
		line, err := ss.readCommand()
		if err != nil {
			r.err = errClosed
			return false
		}
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "BDAT":
			size, last, ok := parseBDAT(arg)
			if !ok {
				ss.reply(501, "5.5.4", "Syntax: BDAT <size> [LAST]")
				r.err = errAborted
				return false
			}
			if r.max > 0 && r.n+size > r.max {
				r.err = errTooBig
				ss.discard(size)
				return false
			}
			r.left, r.last = size, last
			r.start()
			return true
		case "NOOP":
			ss.reply(250, "2.0.0", "OK")
		case "MAIL", "RCPT", "DATA":
			// RFC 3030 §2: only BDAT (or RSET) may follow a BDAT chunk.
			ss.reply(503, "5.5.1", strings.ToUpper(verb)+" not allowed during BDAT")
		default:
			ss.pending = line
			r.err = errAborted
			return false
		}
	}
}
