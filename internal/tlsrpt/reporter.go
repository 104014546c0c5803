package tlsrpt

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime/multipart"
	"net/textproto"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/envelope"
)

// Source is the envelope source of report mail.
const Source = "tlsrpt"

// Reporter mails each day's reports on the day after. Every delivery
// process may run one: a report is published with a Nats-Msg-Id derived
// from its day and domain, and marked sent in the mta-tlsrpt bucket, so it
// goes out once.
type Reporter struct {
	// JS reads the TLSRPT stream; Room publishes the reports to mail.in.
	JS   jetstream.JetStream
	Room *bus.Room
	// KV is the mta-tlsrpt bucket (EnsureStream).
	KV jetstream.KeyValue
	// LookupTXT finds _smtp._tls.<domain>.
	LookupTXT func(ctx context.Context, name string) ([]string, error)
	// Now is the clock (a test seam).
	Now func() time.Time
	// Hostname names the submitter (report-id, From:, the file name).
	Hostname string
	// Org and Contact fill organization-name and contact-info; From is
	// the reports' sender.
	Org, Contact, From string
	// Every is how often the loop looks for a day to report (1 h when 0).
	Every time.Duration
	// Log says what was sent.
	Log *slog.Logger
}

// Run reports the day before every Every until ctx ends.
func (r *Reporter) Run(ctx context.Context) {
	every := r.Every
	if every <= 0 {
		every = time.Hour
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		day := r.Now().UTC().Add(-24 * time.Hour)
		if _, err := r.SendDay(ctx, day); err != nil && ctx.Err() == nil {
			r.Log.Warn("TLS-RPT reports not sent", "day", Day(day), "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// SendDay mails the reports of day to every domain with results that
// publishes a TLSRPTv1 record, skipping those already sent, and returns
// the queue ids published.
func (r *Reporter) SendDay(ctx context.Context, day time.Time) ([]string, error) {
	d := Day(day)
	st, err := r.JS.Stream(ctx, Stream)
	if err != nil {
		return nil, err
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(SubjPrefix+d+".>"))
	if err != nil {
		return nil, err
	}
	var sent []string
	var errs []error
	for subj := range info.State.Subjects {
		tok := strings.TrimPrefix(subj, SubjPrefix+d+".")
		if _, err := r.KV.Get(ctx, d+"."+tok); err == nil {
			continue // sent already
		}
		results, err := read(ctx, r.JS, subj)
		if err != nil || len(results) == 0 {
			errs = append(errs, err)
			continue
		}
		qid, err := r.send(ctx, day, tok, results)
		switch {
		case errors.Is(err, ErrNoRUA):
			_, _ = r.KV.Put(ctx, d+"."+tok, []byte("no rua"))
		case err != nil:
			errs = append(errs, fmt.Errorf("report for %s: %w", results[0].Domain, err))
		default:
			sent = append(sent, qid)
		}
	}
	return sent, errors.Join(errs...)
}

// send builds and publishes the report of one domain.
func (r *Reporter) send(ctx context.Context, day time.Time, tok string, results []Result) (string, error) {
	d := Day(day)
	domain := results[0].Domain
	txts, err := r.LookupTXT(ctx, "_smtp._tls."+domain)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoRUA, err)
	}
	rua, err := ParseRUA(txts)
	if err != nil {
		return "", err
	}
	id := "tlsrpt." + d + "." + tok
	reportID := d + "." + domain + "@" + r.Hostname
	rep := Build(r.Org, r.Contact, reportID, domain, day, results)
	data, err := r.message(rep, domain, rua)
	if err != nil {
		return "", err
	}
	qid := envelope.QueueIDFor(id)
	env := &envelope.Envelope{
		QueueID: qid, MsgID: id, From: r.From, ReceivedAt: r.Now(), Source: Source, Helo: r.Hostname,
		Body: envelope.BodyInline, BodySize: int64(len(data)),
	}
	for _, a := range rua {
		env.Rcpts = append(env.Rcpts, envelope.Rcpt{Addr: a})
	}
	if len(data) > envelope.InlineMax {
		return "", fmt.Errorf("report of %d bytes is larger than %d", len(data), envelope.InlineMax)
	}
	msg, err := env.Msg(bus.SubjIn, data)
	if err != nil {
		return "", err
	}
	if _, err := r.Room.Forward(ctx, msg, id); err != nil {
		return "", err
	}
	_, _ = r.KV.Put(ctx, d+"."+tok, []byte(qid))
	r.Log.Info("TLS-RPT report sent", "qid", qid, "domain", domain, "day", d, "rcpts", strings.Join(rua, ","), "policies", len(rep.Policies))
	return qid, nil
}

// message is the report mail of RFC 8460 §5.3: multipart/report with
// report-type="tlsrpt", a text part and the JSON report gzipped as
// application/tlsrpt+gzip.
func (r *Reporter) message(rep Report, domain string, rua []string) ([]byte, error) {
	js, err := json.Marshal(rep)
	if err != nil {
		return nil, err
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(js)
	if err := zw.Close(); err != nil {
		return nil, err
	}
	start, end := rep.DateRange.Start.Unix(), rep.DateRange.End.Unix()
	file := fmt.Sprintf("%s!%s!%d!%d.json.gz", r.Hostname, domain, start, end)

	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	var b strings.Builder
	h := func(k, v string) { b.WriteString(k + ": " + v + "\r\n") }
	h("From", r.From)
	h("To", strings.Join(rua, ", "))
	h("Subject", fmt.Sprintf("Report Domain: %s Submitter: %s Report-ID: <%s>", domain, r.Hostname, rep.ReportID))
	h("Date", r.Now().UTC().Format(time.RFC1123Z))
	h("Message-ID", "<"+rep.ReportID+">")
	h("TLS-Report-Domain", domain)
	h("TLS-Report-Submitter", r.Hostname)
	h("MIME-Version", "1.0")
	h("Content-Type", `multipart/report; report-type="tlsrpt"; boundary="`+mw.Boundary()+`"`)
	b.WriteString("\r\n")

	pw, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"text/plain; charset=us-ascii"}})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(pw, "This is an aggregate TLS report (RFC 8460) from %s for %s,\r\n%s to %s.\r\n",
		r.Hostname, domain, rep.DateRange.Start.Format(time.RFC3339), rep.DateRange.End.Format(time.RFC3339))
	aw, err := mw.CreatePart(textproto.MIMEHeader{
		"Content-Type":              {`application/tlsrpt+gzip; name="` + file + `"`},
		"Content-Transfer-Encoding": {"base64"},
		"Content-Disposition":       {`attachment; filename="` + file + `"`},
	})
	if err != nil {
		return nil, err
	}
	enc := base64.StdEncoding.EncodeToString(gz.Bytes())
	for len(enc) > 76 {
		_, _ = aw.Write([]byte(enc[:76] + "\r\n"))
		enc = enc[76:]
	}
	_, _ = aw.Write([]byte(enc + "\r\n"))
	if err := mw.Close(); err != nil {
		return nil, err
	}
	return append([]byte(b.String()), body.Bytes()...), nil
}

// read returns every result stored on subj, with an ordered consumer.
func read(ctx context.Context, js jetstream.JetStream, subj string) ([]Result, error) {
	c, err := js.OrderedConsumer(ctx, Stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subj}})
	if err != nil {
		return nil, err
	}
	info, err := c.Info(ctx)
	if err != nil {
		return nil, err
	}
	pending := info.NumPending
	var out []Result
	for pending > 0 {
		batch, err := c.Fetch(int(min(pending, 256)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			var r Result
			if json.Unmarshal(m.Data(), &r) == nil {
				out = append(out, r)
			}
			md, err := m.Metadata()
			if err == nil {
				pending = md.NumPending
			}
		}
		if err := batch.Error(); err != nil {
			return nil, err
		}
		if n == 0 {
			break
		}
	}
	return out, nil
}
