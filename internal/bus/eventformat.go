package bus

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Details are the fields of e's type as key=value, space-separated,
// values with spaces quoted: what `mailroot events` prints after the
// time, type, queue id and domain, and the admin console shows.
func (e Event) Details() string {
	var b strings.Builder
	kv := func(k, v string) {
		if v == "" {
			return
		}
		if strings.ContainsAny(v, " \"=") {
			v = strconv.Quote(v)
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k + "=" + v)
	}
	num := func(k string, n int64) {
		if n != 0 {
			kv(k, strconv.FormatInt(n, 10))
		}
	}
	if e.Type == EventReceived || e.Type == EventPickedUp || e.Sender != "" && e.Type == EventBounced {
		kv("from", "<"+e.Sender+">")
	}
	kv("to", e.Rcpt)
	if len(e.Rcpts) > 0 && e.Type != EventReceived && e.Type != EventPickedUp {
		kv("to", strings.Join(e.Rcpts, ","))
	}
	num("rcpts", int64(e.RcptCount))
	num("size", e.Size)
	kv("site", e.Site)
	client := e.ClientIP
	if e.ClientName != "" {
		client = e.ClientName + "[" + e.ClientIP + "]"
	}
	kv("client", client)
	kv("helo", e.Helo)
	kv("user", e.AuthUser)
	for _, p := range e.Parts {
		kv("part", fmt.Sprintf("%s:%d->%s", p.Domain, len(p.Rcpts), p.Subject))
	}
	mx := e.MX
	if e.MXIP != "" {
		mx += "[" + e.MXIP + "]"
	}
	kv("mx", mx)
	kv("tls", e.TLS)
	kv("reply", e.Reply)
	if e.DurationMS > 0 {
		kv("took", (time.Duration(e.DurationMS) * time.Millisecond).String())
	}
	num("attempt", int64(e.Attempt))
	if !e.NextAttempt.IsZero() {
		kv("next", e.NextAttempt.Local().Format("2006-01-02 15:04:05"))
	}
	kv("report", e.ReportQID)
	kv("reason", e.Reason)
	kv("subject", e.Subject)
	kv("file", e.File)
	kv("admin", e.Admin)
	kv("new_qid", e.NewQID)
	kv("kept", e.Kept)
	return b.String()
}
