// Package notify sends delivery status notifications: it turns a
// dsn.Notice about a queued envelope into an RFC 3464 report (internal/dsn
// writes it) and publishes that as new mail on mail.in from the null sender
// (docs/DESIGN.md §4, "Reports to senders"). Delivery, router, badmail and
// ATRN use it.
package notify

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/dsn"
	"github.com/mailroot/mailroot/internal/envelope"
)

// maxHeaderSection bounds the header section returned with RET=HDRS.
const maxHeaderSection = 256 << 10

// Wants reports whether r asked for a notification of kind k. Without
// NOTIFY, failures and delays are reported (RFC 3461 §4.1 leaves the
// default to the MTA; IIS and Exchange sent both); NOTIFY=NEVER suppresses
// everything.
func Wants(r envelope.Rcpt, k dsn.Kind) bool {
	if len(r.Notify) == 0 {
		return k == dsn.Failure || k == dsn.Delay
	}
	for _, n := range r.Notify {
		switch {
		case n == "NEVER":
			return false
		case n == "FAILURE" && k == dsn.Failure, n == "DELAY" && k == dsn.Delay, n == "SUCCESS" && k == dsn.Success:
			return true
		}
	}
	return false
}

// Notifier builds notifications and publishes them to mail.in as new mail
// from the null sender. Router, delivery, badmail and ATRN use it.
type Notifier struct {
	// Room publishes (Room.Forward: reports are the pipeline's own mail);
	// Bodies reads original bodies and stores large reports.
	Room   *bus.Room
	Bodies *bus.Bodies
	// Hostname is the Reporting-MTA and the domain of MAILER-DAEMON.
	Hostname string
	// CopyTo, when set, gets a copy of every failure report.
	CopyTo string
	// ReturnLimit is the largest original returned whole.
	ReturnLimit int64
	// Now is the clock.
	Now func() time.Time
}

// NewNotifier returns a notifier configured from cfg.
func NewNotifier(cfg config.Config, js jetstream.JetStream, bodies *bus.Bodies) *Notifier {
	return &Notifier{
		Room:        &bus.Room{JS: js, Reserve: cfg.NATS.Reserve},
		Bodies:      bodies,
		Hostname:    cfg.Hostname,
		CopyTo:      cfg.Delivery.NDRCopyTo,
		ReturnLimit: cfg.Delivery.NDRReturnLimit,
		Now:         time.Now,
	}
}

// ErrNullSender is returned by Send for mail from the null sender: it is
// never answered (RFC 5321 §4.5.5, RFC 3461 §6.2); failures of such mail
// belong in Badmail.
var ErrNullSender = errors.New("dsn: no notification for the null sender")

// Send publishes the notification, if any recipient asked for it, and
// returns its queue id ("" when nobody did). Publishing is idempotent: the
// same ID yields the same queue id and Nats-Msg-Id.
func (n *Notifier) Send(ctx context.Context, no dsn.Notice) (string, error) {
	env := no.Env
	if env.From == "" {
		return "", ErrNullSender
	}
	var rcpts []dsn.Status
	for _, s := range no.Rcpts {
		if Wants(s.Rcpt, no.Kind) {
			rcpts = append(rcpts, s)
		}
	}
	if len(rcpts) == 0 {
		return "", nil
	}
	now := n.Now()
	qid := envelope.QueueIDFor(no.ID)

	// The original's header section: for the Subject, and returned
	// alone when the whole message is not.
	head, err := n.headerSection(ctx, env, no.Data)
	if err != nil {
		return "", err
	}
	size := env.BodySize
	if env.Body != envelope.BodyObject {
		size = int64(len(no.Data))
	}
	full, note := true, ""
	switch {
	case no.Kind != dsn.Failure:
		full = false // RFC 3461 §4.3: RET applies to failure reports
	case env.Ret == "HDRS":
		full, note = false, "As you asked (RET=HDRS), only the headers of your message are attached."
	case strings.EqualFold(env.BodyType, "BINARYMIME"):
		full, note = false, "Your message was binary (BINARYMIME) and cannot be returned inside a report; its headers are attached."
	case size > n.ReturnLimit:
		full, note = false, fmt.Sprintf("Your message of %d bytes is larger than %d bytes, so only its headers are attached.", size, n.ReturnLimit)
	}

	rep := dsn.Report{
		ReportingMTA:       n.Hostname,
		OriginalEnvelopeID: envID(env.EnvID),
		ArrivalDate:        env.ReceivedAt,
		QueueID:            env.QueueID,
	}
	if env.Source == "smtp" && env.Helo != "" {
		rep.ReceivedFromMTA = env.Helo
	}
	for _, s := range rcpts {
		rc := dsn.Recipient{
			OriginalRecipient: orcpt(s.Rcpt.ORcpt),
			FinalRecipient:    s.Rcpt.Addr,
			Action:            s.Action,
			Status:            s.Status,
			RemoteMTA:         remoteHost(s.Remote),
			DiagnosticCode:    diagnostic(s),
			LastAttemptDate:   no.LastAttempt,
		}
		if no.Kind == dsn.Delay {
			rc.WillRetryUntil = no.RetryUntil
		}
		rep.Recipients = append(rep.Recipients, rc)
	}
	subject := headerSubject(head)
	m := &dsn.Message{
		From:      "MAILER-DAEMON@" + n.Hostname,
		FromName:  "Mail Delivery System",
		To:        env.From,
		Subject:   reportSubject(no.Kind, rcpts, subject),
		Date:      now,
		MessageID: qid + "@" + n.Hostname,
		Text:      n.text(no, rcpts, subject, note),
		Report:    rep,
	}

	out := &envelope.Envelope{
		QueueID:    qid,
		MsgID:      no.ID,
		From:       "",
		Rcpts:      []envelope.Rcpt{{Addr: env.From}},
		ReceivedAt: now,
		Source:     dsn.Source,
		Helo:       n.Hostname,
	}
	if no.Kind == dsn.Failure && n.CopyTo != "" && !strings.EqualFold(n.CopyTo, env.From) {
		out.Rcpts = append(out.Rcpts, envelope.Rcpt{Addr: n.CopyTo})
	}
	if !isASCII(env.From) {
		out.SMTPUTF8 = true
	}
	if full {
		if b := strings.ToUpper(env.BodyType); b == "8BITMIME" || env.SMTPUTF8 {
			out.BodyType = "8BITMIME"
		}
		out.SMTPUTF8 = out.SMTPUTF8 || env.SMTPUTF8
	} else if !isASCII(string(head)) {
		out.BodyType = "8BITMIME"
	}

	var data []byte
	if !full || size+16<<10 <= envelope.InlineMax && env.Body != envelope.BodyObject {
		// Small enough to travel inside the envelope message.
		var buf bytes.Buffer
		if full {
			m.Original = bytes.NewReader(no.Data)
		} else {
			m.Original, m.HeadersOnly = bytes.NewReader(head), true
		}
		if err := dsn.Write(&buf, m); err != nil {
			return "", err
		}
		if buf.Len() > envelope.InlineMax {
			err := bus.WaitForRoom(ctx, "report body "+qid, func() (err error) {
				out.BodySize, err = n.Bodies.Put(ctx, qid, bytes.NewReader(buf.Bytes()))
				return err
			})
			if err != nil {
				return "", err
			}
			out.Body = envelope.BodyObject
		} else {
			data = buf.Bytes()
			out.Body, out.BodySize = envelope.BodyInline, int64(len(data))
		}
	} else {
		// Stream the original through the report into the Object Store.
		err := bus.WaitForRoom(ctx, "report body "+qid, func() (err error) {
			out.BodySize, err = n.putLarge(ctx, qid, m, env, no.Data)
			return err
		})
		if err != nil {
			return "", err
		}
		out.Body = envelope.BodyObject
	}
	msg, err := out.Msg(bus.SubjIn, data)
	if err != nil {
		return "", fmt.Errorf("dsn: envelope: %w", err)
	}
	if _, err := n.Room.Forward(ctx, msg, no.ID); err != nil {
		return "", err
	}
	return qid, nil
}

// putLarge writes the report with the whole original into the Object
// Store under qid, streaming.
func (n *Notifier) putLarge(ctx context.Context, qid string, m *dsn.Message, env *envelope.Envelope, data []byte) (int64, error) {
	orig, err := n.Bodies.Open(ctx, env, data)
	if err != nil {
		return 0, fmt.Errorf("dsn: open original: %w", err)
	}
	defer orig.Close()
	m.Original = orig
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(dsn.Write(pw, m)) }()
	size, err := n.Bodies.Put(ctx, qid, pr)
	_ = pr.CloseWithError(errors.New("dsn: report store ended"))
	return size, err
}

// headerSection returns the original's header section (without the blank
// line), at most maxHeaderSection bytes of whole lines.
func (n *Notifier) headerSection(ctx context.Context, env *envelope.Envelope, data []byte) ([]byte, error) {
	r, err := n.Bodies.Open(ctx, env, data)
	if err != nil {
		return nil, fmt.Errorf("dsn: open original: %w", err)
	}
	defer r.Close()
	return HeaderSection(r, maxHeaderSection)
}

// HeaderSection reads the header section of a message from r: every line
// up to the first empty one, at most limit bytes of whole lines.
func HeaderSection(r io.Reader, limit int) ([]byte, error) {
	br := bufio.NewReaderSize(r, 16<<10)
	var out []byte
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// An overlong line: keep what fits and skip the rest.
			line = append(append([]byte(nil), line...), '\r', '\n')
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
		}
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			return out, nil
		}
		if len(out)+len(line) > limit {
			return out, nil
		}
		out = append(out, line...)
		if err != nil {
			if errors.Is(err, io.EOF) {
				if !bytes.HasSuffix(out, []byte("\n")) {
					out = append(out, '\r', '\n')
				}
				return out, nil
			}
			return nil, fmt.Errorf("dsn: read original headers: %w", err)
		}
	}
}

// headerSubject returns the Subject of a header section, decoded where it
// can be (RFC 2047), "" if none.
func headerSubject(head []byte) string {
	msg, err := mail.ReadMessage(bytes.NewReader(append(append([]byte(nil), head...), "\r\n"...)))
	if err != nil {
		return ""
	}
	s := msg.Header.Get("Subject")
	if d, err := new(mime.WordDecoder).DecodeHeader(s); err == nil {
		s = d
	}
	return strings.Join(strings.Fields(s), " ")
}

// envID returns the ENVID decoded from xtext, or as given when the decoded
// value would not be printable ASCII.
func envID(x string) string {
	d := dsn.DecodeXtext(x)
	if dsn.CleanText(d) != d {
		return x
	}
	return d
}

// orcpt renders an ORCPT ("type;xtext") for Original-Recipient with the
// address decoded.
func orcpt(v string) string {
	typ, addr, ok := strings.Cut(v, ";")
	if !ok {
		return ""
	}
	if d := dsn.DecodeXtext(addr); dsn.CleanText(d) == d {
		addr = d
	}
	return strings.TrimSpace(typ) + ";" + addr
}

// remoteHost takes the host name out of "host[ip]", or the IP out of "[ip]".
func remoteHost(remote string) string {
	if remote == "" {
		return ""
	}
	if i := strings.IndexByte(remote, '['); i > 0 {
		return remote[:i]
	}
	return strings.Trim(remote, "[]")
}

// diagnostic renders Diagnostic-Code: the remote's reply, or Mailroot's own
// description of a local outcome.
func diagnostic(s dsn.Status) string {
	if s.Reply != "" {
		return "smtp; " + s.Reply
	}
	if s.Detail != "" {
		return "X-Mailroot; " + s.Detail
	}
	return ""
}

// isASCII reports whether s is 7-bit ASCII.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
