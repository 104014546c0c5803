package tlsrpt

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/netip"
	"net/textproto"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/resolver"
)

// Source is the envelope source of report mail.
const Source = "tlsrpt"

// Reporter sends each day's reports on the day after. Every delivery
// process may run one: who sends the report of a domain and day is
// decided in the mta-tlsrpt bucket, by a key create that only one process
// wins (a claim); the winner sends to each rua destination and notes each
// one done in its claim, then marks it sent. A claim left unfinished (its
// process died, or a destination failed) may be taken over, with a
// compare-and-set on its revision, once it is ClaimStale old; the
// destinations already done are not sent again. The mail's Nats-Msg-Id,
// derived from the day and domain, deduplicates a republish too.
type Reporter struct {
	// JS reads the TLSRPT stream; Room publishes the reports to mail.in.
	JS   jetstream.JetStream
	Room *bus.Room
	// KV is the mta-tlsrpt bucket (EnsureStream).
	KV jetstream.KeyValue
	// LookupTXT finds _smtp._tls.<domain>.
	LookupTXT func(ctx context.Context, name string) ([]string, error)
	// HTTP posts to https: destinations; nil: a client with Roots, the
	// resolver's Addrs and PostTimeout.
	HTTP *http.Client
	// Roots verify the https: destinations' certificates (nil: the
	// system's); Addrs resolves their host names.
	Roots *x509.CertPool
	Addrs func(ctx context.Context, host string) ([]netip.Addr, error)
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

	once sync.Once
}

// ClaimStale is how old an unfinished claim must be before another
// process may take it over.
const ClaimStale = 30 * time.Minute

// PostTimeout bounds one POST to an https: destination.
const PostTimeout = 30 * time.Second

// claim is the value of a mta-tlsrpt key: who sends the report, since
// when, the destinations done, and whether it is finished.
type claim struct {
	By   string    `json:"by"`
	At   time.Time `json:"at"`
	Done []string  `json:"done,omitempty"`
	Sent bool      `json:"sent,omitempty"`
	Note string    `json:"note,omitempty"`
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

// SendDay sends the reports of day to every domain with results that
// publishes a TLSRPTv1 record, skipping those another process claimed or
// sent, and returns the domains it sent a report to.
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
		key := d + "." + tok
		c, rev, ok := r.claim(ctx, key)
		if !ok {
			continue // another process has it, or it is done
		}
		results, err := read(ctx, r.JS, subj)
		if err != nil || len(results) == 0 {
			errs = append(errs, err)
			continue
		}
		domain := results[0].Domain
		err = r.send(ctx, day, tok, results, &c, func() error {
			b, _ := json.Marshal(c)
			rev, err = r.KV.Update(ctx, key, b, rev)
			return err
		})
		switch {
		case errors.Is(err, ErrNoRUA):
			r.Log.Debug("TLS-RPT: no report address", "domain", domain, "day", d, "err", err)
		case err != nil:
			errs = append(errs, fmt.Errorf("report for %s: %w", domain, err))
		default:
			sent = append(sent, domain)
		}
	}
	return sent, errors.Join(errs...)
}

// claim takes key for this process: a new key by create, or an unfinished
// one ClaimStale old by compare-and-set. ok is false when another
// process holds it or it is done.
func (r *Reporter) claim(ctx context.Context, key string) (claim, uint64, bool) {
	now := r.Now()
	mine := claim{By: r.Hostname + "." + strconv.Itoa(os.Getpid()), At: now}
	e, err := r.KV.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		b, _ := json.Marshal(mine)
		rev, err := r.KV.Create(ctx, key, b)
		return mine, rev, err == nil
	}
	if err != nil {
		return claim{}, 0, false
	}
	var old claim
	if json.Unmarshal(e.Value(), &old) != nil || old.Sent || now.Sub(old.At) < ClaimStale {
		return claim{}, 0, false
	}
	mine.Done = old.Done
	b, _ := json.Marshal(mine)
	rev, err := r.KV.Update(ctx, key, b, e.Revision())
	return mine, rev, err == nil
}

// send builds the report of one domain and sends it to each destination
// of its record not yet in c.Done, saving c (save) after each one and at
// the end.
func (r *Reporter) send(ctx context.Context, day time.Time, tok string, results []Result, c *claim, save func() error) error {
	d := Day(day)
	domain := results[0].Domain
	txts, err := r.LookupTXT(ctx, "_smtp._tls."+domain)
	var rua RUA
	if err == nil {
		rua, err = ParseRecord(txts)
	} else {
		err = fmt.Errorf("%w: %v", ErrNoRUA, err)
	}
	if err != nil {
		c.Sent, c.Note = true, err.Error()
		_ = save()
		return err
	}
	reportID := d + "." + domain + "@" + r.Hostname
	rep := Build(r.Org, r.Contact, reportID, domain, day, results)
	gz, err := gzipJSON(rep)
	if err != nil {
		return err
	}
	var errs []error
	done := func(dest string) {
		c.Done = append(c.Done, dest)
		if err := save(); err != nil {
			errs = append(errs, fmt.Errorf("claim lost: %w", err))
		}
	}
	if len(rua.Mailto) > 0 && !slices.Contains(c.Done, "mailto") {
		qid, err := r.mail(ctx, day, tok, rep, gz, domain, rua.Mailto)
		if err != nil {
			errs = append(errs, err)
		} else {
			r.Log.Info("TLS-RPT report sent", "qid", qid, "domain", domain, "day", d, "rcpts", strings.Join(rua.Mailto, ","), "policies", len(rep.Policies))
			done("mailto")
		}
	}
	for _, u := range rua.HTTPS {
		if slices.Contains(c.Done, u) {
			continue
		}
		if err := r.post(ctx, u, gz); err != nil {
			errs = append(errs, fmt.Errorf("post to %s: %w", u, err))
			continue
		}
		r.Log.Info("TLS-RPT report posted", "domain", domain, "day", d, "url", u, "policies", len(rep.Policies))
		done(u)
	}
	if len(errs) > 0 {
		return errors.Join(errs...) // the claim stays unfinished: retried once stale
	}
	c.Sent = true
	return save()
}

// gzipJSON is the report as RFC 8460 sends it: JSON, gzipped.
func gzipJSON(rep Report) ([]byte, error) {
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
	return gz.Bytes(), nil
}

// mail publishes the report mail to the mailto: addresses through
// mail.in, like any other mail, and returns its queue id.
func (r *Reporter) mail(ctx context.Context, day time.Time, tok string, rep Report, gz []byte, domain string, to []string) (string, error) {
	id := "tlsrpt." + Day(day) + "." + tok
	data, err := r.message(rep, gz, domain, to)
	if err != nil {
		return "", err
	}
	qid := envelope.QueueIDFor(id)
	env := &envelope.Envelope{
		QueueID: qid, MsgID: id, From: r.From, ReceivedAt: r.Now(), Source: Source, Helo: r.Hostname,
		Body: envelope.BodyInline, BodySize: int64(len(data)),
	}
	for _, a := range to {
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
	return qid, nil
}

// post sends the gzipped report to an https: destination (RFC 8460
// §5.4): POST, application/tlsrpt+gzip; any 2xx is success.
func (r *Reporter) post(ctx context.Context, u string, gz []byte) error {
	r.once.Do(func() {
		if r.HTTP == nil {
			r.HTTP = &http.Client{
				Timeout: PostTimeout,
				Transport: &http.Transport{
					Proxy:               nil,
					DialContext:         resolver.DialVia(r.Addrs),
					TLSClientConfig:     &tls.Config{RootCAs: r.Roots, MinVersion: tls.VersionTLS12},
					TLSHandshakeTimeout: PostTimeout,
					DisableKeepAlives:   true,
				},
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			}
		}
	})
	ctx, cancel := context.WithTimeout(ctx, PostTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(gz))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/tlsrpt+gzip")
	resp, err := r.HTTP.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("HTTP status %s", resp.Status)
	}
	return nil
}

// message is the report mail of RFC 8460 §5.3: multipart/report with
// report-type="tlsrpt", a text part and the JSON report gzipped as
// application/tlsrpt+gzip.
func (r *Reporter) message(rep Report, gz []byte, domain string, rua []string) ([]byte, error) {
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
	enc := base64.StdEncoding.EncodeToString(gz)
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
