// Package envelope defines the SMTP envelope as it travels through Mailroot's
// JetStream pipeline, and its codec to and from NATS message headers.
//
// One NATS message carries one envelope (docs/DESIGN.md §3): the SMTP envelope is
// in Mta-* headers, the data part is the RFC 5322 message when it is stored
// inline, or empty with "Mta-Body: obj" when the body lives in the
// mail-bodies Object Store under the queue id. This package is the only
// place that knows the header names; every other package goes through
// Envelope, Encode and Decode.
package envelope

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Header names. They are case-sensitive in nats.go, so always use these.
const (
	HdrMsgID         = "Nats-Msg-Id"
	HdrQueueID       = "Mta-Queue-Id"
	HdrMailFrom      = "Mta-Mail-From"
	HdrBodyType      = "Mta-Body-Type"
	HdrSMTPUTF8      = "Mta-Smtputf8"
	HdrRet           = "Mta-Ret"
	HdrEnvID         = "Mta-Envid"
	HdrRequireTLS    = "Mta-Requiretls"
	HdrSize          = "Mta-Size"
	HdrRcpt          = "Mta-Rcpt"
	HdrDomain        = "Mta-Domain"
	HdrReceivedAt    = "Mta-Received-At"
	HdrExpiresAt     = "Mta-Expires-At"
	HdrAttempt       = "Mta-Attempt"
	HdrLastError     = "Mta-Last-Error"
	HdrLastAttempt   = "Mta-Last-Attempt"
	HdrDelayNotified = "Mta-Delay-Notified"
	HdrClientIP      = "Mta-Client-Ip"
	HdrHelo          = "Mta-Helo"
	HdrAuthUser      = "Mta-Auth-User"
	HdrTLS           = "Mta-Tls"
	HdrHops          = "Mta-Hops"
	HdrBody          = "Mta-Body"
	HdrBodySize      = "Mta-Body-Size"
	HdrReason        = "Mta-Reason"
	HdrRemote        = "Mta-Remote"
	HdrSource        = "Mta-Source"
	HdrSite          = "Mta-Site"
	HdrBadSubject    = "Mta-Bad-Subject"
)

// Body storage kinds (values of the Mta-Body header).
const (
	BodyInline = "inline"
	BodyObject = "obj"
)

// InlineMax is the largest body carried inside the envelope message; larger
// bodies go to the Object Store.
const InlineMax = 64 << 10

// ErrMalformed is wrapped by every Decode error: the message is not a valid
// envelope and belongs in Badmail with the reason.
var ErrMalformed = errors.New("envelope: malformed")

// Rcpt is one envelope recipient with its DSN parameters (RFC 3461).
type Rcpt struct {
	// Addr is the mailbox, without angle brackets.
	Addr string
	// Notify holds the NOTIFY= keywords (NEVER, SUCCESS, FAILURE, DELAY);
	// empty means the parameter was not given.
	Notify []string
	// ORcpt is the ORCPT= value as given ("rfc822;addr", xtext-encoded).
	ORcpt string
}

// Envelope is the SMTP envelope of one queued message.
type Envelope struct {
	// QueueID is the ULID issued at acceptance, shown in the 250 reply and
	// every log line.
	QueueID string
	// MsgID is the Nats-Msg-Id (dedup key) the message was, or is to be,
	// published with. Schedules strip it, so it may be empty on decode.
	MsgID string
	// From is the reverse-path without brackets; "" is the null sender.
	From string
	// Rcpts are the recipients still to be handled.
	Rcpts []Rcpt
	// Domain is the dotted destination domain, set by the router.
	Domain string

	BodyType   string // BODY= value: 7BIT, 8BITMIME, BINARYMIME or empty
	SMTPUTF8   bool   // SMTPUTF8 was given on MAIL FROM
	Ret        string // RET= value: FULL, HDRS or empty
	EnvID      string // ENVID= value, xtext as given
	RequireTLS bool   // REQUIRETLS was given on MAIL FROM
	Size       int64  // SIZE= declared by the client, 0 if none

	ReceivedAt    time.Time
	ExpiresAt     time.Time
	Attempt       int       // delivery attempts made so far
	LastError     string    // last temporary error, e.g. "451 4.7.1 try later (mx.example)"
	LastAttemptAt time.Time // time of the last attempt
	DelayNotified bool      // the delay DSN has been sent

	ClientIP string // the SMTP client's address, or the source ("pickup") for other entry points
	Helo     string
	AuthUser string
	TLS      string // e.g. "TLS1.3 TLS_AES_128_GCM_SHA256", empty for plain text
	Hops     int    // Received: headers counted at acceptance

	// Body is BodyInline (data is the message) or BodyObject (data empty,
	// message in the Object Store under QueueID).
	Body string
	// BodySize is the size of the message in bytes.
	BodySize int64

	// Reason says why a message is on mail.bad.
	Reason string
	// Remote names the remote host of the last attempt, for reports.
	Remote string
	// Source names the entry point: "smtp", "pickup", "nats", "dsn".
	Source string
	// Site names the ingress site ([[site]] name) that accepted the mail.
	Site string
}

// Addrs returns the recipient addresses.
func (e *Envelope) Addrs() []string {
	out := make([]string, len(e.Rcpts))
	for i, r := range e.Rcpts {
		out[i] = r.Addr
	}
	return out
}

// Clone returns a deep copy of e.
func (e *Envelope) Clone() *Envelope {
	c := *e
	c.Rcpts = make([]Rcpt, len(e.Rcpts))
	for i, r := range e.Rcpts {
		c.Rcpts[i] = r
		c.Rcpts[i].Notify = append([]string(nil), r.Notify...)
	}
	return &c
}

// clean rejects values that would break a header: CR, LF and NUL.
func clean(name, v string) error {
	if strings.ContainsAny(v, "\r\n\x00") {
		return fmt.Errorf("%w: %s contains CR, LF or NUL", ErrMalformed, name)
	}
	return nil
}

// Header builds the NATS header set for e. It fails when a value contains
// CR, LF or NUL, or a required field is missing.
func (e *Envelope) Header() (nats.Header, error) {
	if e.QueueID == "" {
		return nil, fmt.Errorf("%w: no queue id", ErrMalformed)
	}
	if len(e.Rcpts) == 0 {
		return nil, fmt.Errorf("%w: no recipients", ErrMalformed)
	}
	h := make(nats.Header, 24) // room for every header below and the publish options', without growing
	set := func(k, v string) {
		if v != "" {
			h.Set(k, v)
		}
	}
	set(HdrMsgID, e.MsgID)
	set(HdrQueueID, e.QueueID)
	h.Set(HdrMailFrom, "<"+e.From+">")
	set(HdrBodyType, e.BodyType)
	if e.SMTPUTF8 {
		h.Set(HdrSMTPUTF8, "1")
	}
	set(HdrRet, e.Ret)
	set(HdrEnvID, e.EnvID)
	if e.RequireTLS {
		h.Set(HdrRequireTLS, "1")
	}
	if e.Size > 0 {
		h.Set(HdrSize, strconv.FormatInt(e.Size, 10))
	}
	for _, r := range e.Rcpts {
		if r.Addr == "" {
			return nil, fmt.Errorf("%w: empty recipient", ErrMalformed)
		}
		h.Add(HdrRcpt, formatRcpt(r))
	}
	set(HdrDomain, e.Domain)
	if !e.ReceivedAt.IsZero() {
		h.Set(HdrReceivedAt, e.ReceivedAt.UTC().Format(time.RFC3339Nano))
	}
	if !e.ExpiresAt.IsZero() {
		h.Set(HdrExpiresAt, e.ExpiresAt.UTC().Format(time.RFC3339Nano))
	}
	h.Set(HdrAttempt, strconv.Itoa(e.Attempt))
	set(HdrLastError, e.LastError)
	if !e.LastAttemptAt.IsZero() {
		h.Set(HdrLastAttempt, e.LastAttemptAt.UTC().Format(time.RFC3339Nano))
	}
	if e.DelayNotified {
		h.Set(HdrDelayNotified, "1")
	}
	set(HdrClientIP, e.ClientIP)
	set(HdrHelo, e.Helo)
	set(HdrAuthUser, e.AuthUser)
	set(HdrTLS, e.TLS)
	if e.Hops > 0 {
		h.Set(HdrHops, strconv.Itoa(e.Hops))
	}
	body := e.Body
	if body == "" {
		body = BodyInline
	}
	h.Set(HdrBody, body)
	if e.BodySize > 0 {
		h.Set(HdrBodySize, strconv.FormatInt(e.BodySize, 10))
	}
	set(HdrReason, e.Reason)
	set(HdrRemote, e.Remote)
	set(HdrSource, e.Source)
	set(HdrSite, e.Site)
	for k, vs := range h {
		for _, v := range vs {
			if err := clean(k, v); err != nil {
				return nil, err
			}
		}
	}
	return h, nil
}

// Msg builds the NATS message for e on subject with data as its payload
// (the message for inline bodies, nil for Object Store bodies).
func (e *Envelope) Msg(subject string, data []byte) (*nats.Msg, error) {
	h, err := e.Header()
	if err != nil {
		return nil, err
	}
	return &nats.Msg{Subject: subject, Header: h, Data: data}, nil
}

// Decode parses the envelope from a message's headers. Errors wrap
// ErrMalformed and say which header is wrong.
func Decode(h nats.Header) (*Envelope, error) {
	e := &Envelope{
		MsgID:         h.Get(HdrMsgID),
		QueueID:       h.Get(HdrQueueID),
		BodyType:      h.Get(HdrBodyType),
		SMTPUTF8:      h.Get(HdrSMTPUTF8) == "1",
		Ret:           h.Get(HdrRet),
		EnvID:         h.Get(HdrEnvID),
		Domain:        h.Get(HdrDomain),
		LastError:     h.Get(HdrLastError),
		DelayNotified: h.Get(HdrDelayNotified) == "1",
		ClientIP:      h.Get(HdrClientIP),
		Helo:          h.Get(HdrHelo),
		AuthUser:      h.Get(HdrAuthUser),
		TLS:           h.Get(HdrTLS),
		Body:          h.Get(HdrBody),
		Reason:        h.Get(HdrReason),
		Remote:        h.Get(HdrRemote),
		Source:        h.Get(HdrSource),
		Site:          h.Get(HdrSite),
		RequireTLS:    h.Get(HdrRequireTLS) == "1",
	}
	for k, vs := range h {
		for _, v := range vs {
			if err := clean(k, v); err != nil {
				return nil, err
			}
		}
	}
	if e.QueueID == "" {
		return nil, fmt.Errorf("%w: missing %s", ErrMalformed, HdrQueueID)
	}
	if !ValidQueueID(e.QueueID) {
		return nil, fmt.Errorf("%w: %s %q is not [0-9A-Za-z_-]{1,64}", ErrMalformed, HdrQueueID, e.QueueID)
	}
	from, ok := h[HdrMailFrom]
	if !ok || len(from) != 1 {
		return nil, fmt.Errorf("%w: need exactly one %s", ErrMalformed, HdrMailFrom)
	}
	f := strings.TrimSpace(from[0])
	if len(f) < 2 || f[0] != '<' || f[len(f)-1] != '>' {
		return nil, fmt.Errorf("%w: %s %q is not <address>", ErrMalformed, HdrMailFrom, f)
	}
	e.From = f[1 : len(f)-1]
	if e.From != "" {
		if err := CheckAddress(e.From); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, HdrMailFrom, err)
		}
	}
	rcpts := h.Values(HdrRcpt)
	if len(rcpts) == 0 {
		return nil, fmt.Errorf("%w: no %s", ErrMalformed, HdrRcpt)
	}
	for _, v := range rcpts {
		r, err := parseRcpt(v)
		if err != nil {
			return nil, err
		}
		e.Rcpts = append(e.Rcpts, r)
	}
	var err error
	if e.Size, err = optInt(h, HdrSize); err != nil {
		return nil, err
	}
	if e.BodySize, err = optInt(h, HdrBodySize); err != nil {
		return nil, err
	}
	var n int64
	if n, err = optInt(h, HdrAttempt); err != nil {
		return nil, err
	}
	e.Attempt = int(n)
	if n, err = optInt(h, HdrHops); err != nil {
		return nil, err
	}
	e.Hops = int(n)
	if e.ReceivedAt, err = optTime(h, HdrReceivedAt); err != nil {
		return nil, err
	}
	if e.ExpiresAt, err = optTime(h, HdrExpiresAt); err != nil {
		return nil, err
	}
	if e.LastAttemptAt, err = optTime(h, HdrLastAttempt); err != nil {
		return nil, err
	}
	switch e.Body {
	case "":
		e.Body = BodyInline
	case BodyInline, BodyObject:
	default:
		return nil, fmt.Errorf("%w: %s %q is not inline or obj", ErrMalformed, HdrBody, e.Body)
	}
	switch strings.ToUpper(e.Ret) {
	case "", "FULL", "HDRS":
		e.Ret = strings.ToUpper(e.Ret)
	default:
		return nil, fmt.Errorf("%w: %s %q is not FULL or HDRS", ErrMalformed, HdrRet, e.Ret)
	}
	return e, nil
}

// ValidQueueID reports whether s can be a queue id: 1 to 64 of [0-9A-Za-z_-],
// safe in subjects, file names and headers.
func ValidQueueID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func optInt(h nats.Header, k string) (int64, error) {
	v := h.Get(k)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%w: %s %q is not a non-negative integer", ErrMalformed, k, v)
	}
	return n, nil
}

func optTime(h nats.Header, k string) (time.Time, error) {
	v := h.Get(k)
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: %s %q is not an RFC 3339 time", ErrMalformed, k, v)
	}
	return t, nil
}

// formatRcpt renders "<addr> NOTIFY=a,b ORCPT=x".
func formatRcpt(r Rcpt) string {
	var b strings.Builder
	b.WriteByte('<')
	b.WriteString(r.Addr)
	b.WriteByte('>')
	if len(r.Notify) > 0 {
		b.WriteString(" NOTIFY=")
		b.WriteString(strings.Join(r.Notify, ","))
	}
	if r.ORcpt != "" {
		b.WriteString(" ORCPT=")
		b.WriteString(r.ORcpt)
	}
	return b.String()
}

// parseRcpt parses a Mta-Rcpt value.
func parseRcpt(v string) (Rcpt, error) {
	var r Rcpt
	v = strings.TrimSpace(v)
	if !strings.HasPrefix(v, "<") {
		return r, fmt.Errorf("%w: %s %q does not start with <", ErrMalformed, HdrRcpt, v)
	}
	// Find the closing bracket outside a quoted local part.
	end, _ := scanUnquoted(v, 1, '>', true)
	if end < 0 {
		return r, fmt.Errorf("%w: %s %q has no closing >", ErrMalformed, HdrRcpt, v)
	}
	r.Addr = v[1:end]
	if err := CheckAddress(r.Addr); err != nil {
		return r, fmt.Errorf("%w: %s: %v", ErrMalformed, HdrRcpt, err)
	}
	for _, p := range strings.Fields(v[end+1:]) {
		k, val, _ := strings.Cut(p, "=")
		switch strings.ToUpper(k) {
		case "NOTIFY":
			for _, n := range strings.Split(val, ",") {
				n = strings.ToUpper(n)
				switch n {
				case "NEVER", "SUCCESS", "FAILURE", "DELAY":
					r.Notify = append(r.Notify, n)
				default:
					return r, fmt.Errorf("%w: %s NOTIFY value %q", ErrMalformed, HdrRcpt, n)
				}
			}
		case "ORCPT":
			r.ORcpt = val
		default:
			return r, fmt.Errorf("%w: %s unknown parameter %q", ErrMalformed, HdrRcpt, k)
		}
	}
	return r, nil
}
