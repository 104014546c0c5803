package envelope

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func sample() *Envelope {
	now := time.Date(2026, 11, 22, 10, 0, 0, 123, time.UTC)
	return &Envelope{
		QueueID: "01JDXYZABCDEFGHJKMNPQRSTVW", MsgID: "01JDXYZABCDEFGHJKMNPQRSTVW.example_com",
		From: "sender@example.org",
		Rcpts: []Rcpt{
			{Addr: "a@example.com", Notify: []string{"FAILURE", "DELAY"}, ORcpt: "rfc822;a@example.com"},
			{Addr: `"quoted > name"@example.com`},
		},
		Domain: "example.com", BodyType: "8BITMIME", SMTPUTF8: true, Ret: "HDRS", EnvID: "env+2Bid",
		RequireTLS: true, Size: 1234, ReceivedAt: now, ExpiresAt: now.Add(48 * time.Hour),
		Attempt: 2, LastError: "451 4.7.1 try later (mx.example.com)", LastAttemptAt: now.Add(time.Hour),
		DelayNotified: true, ClientIP: "192.0.2.1", Helo: "client.example.org", AuthUser: "bob",
		TLS: "TLS1.3 TLS_AES_128_GCM_SHA256", Hops: 3, Body: BodyObject, BodySize: 99999,
		Reason: "why", Remote: "mx.example.com", Source: "smtp", Site: "submission",
	}
}

func TestRoundTrip(t *testing.T) {
	e := sample()
	h, err := e.Header()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(h)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, e) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, e)
	}
}

func TestNullSenderAndDefaults(t *testing.T) {
	e := &Envelope{QueueID: "Q", Rcpts: []Rcpt{{Addr: "x@y.test"}}}
	h, err := e.Header()
	if err != nil {
		t.Fatal(err)
	}
	if h.Get(HdrMailFrom) != "<>" || h.Get(HdrBody) != BodyInline {
		t.Errorf("headers %v", h)
	}
	got, err := Decode(h)
	if err != nil {
		t.Fatal(err)
	}
	if got.From != "" || got.Body != BodyInline {
		t.Errorf("decoded %+v", got)
	}
}

func TestHeaderRejectsInjection(t *testing.T) {
	for _, e := range []*Envelope{
		{QueueID: "Q", Rcpts: []Rcpt{{Addr: "x@y.test"}}, Helo: "evil\r\nMta-Rcpt: <victim@z.test>"},
		{QueueID: "Q", Rcpts: []Rcpt{{Addr: "x@y.test\n"}}},
		{QueueID: "Q"},
		{Rcpts: []Rcpt{{Addr: "x@y.test"}}},
	} {
		if _, err := e.Header(); !errors.Is(err, ErrMalformed) {
			t.Errorf("Header(%+v) = %v, want ErrMalformed", e, err)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	base := func() nats.Header {
		return nats.Header{HdrQueueID: {"Q1"}, HdrMailFrom: {"<a@b.test>"}, HdrRcpt: {"<c@d.test>"}}
	}
	tests := []struct {
		name string
		edit func(nats.Header)
		want string
	}{
		{"no qid", func(h nats.Header) { h.Del(HdrQueueID) }, "missing Mta-Queue-Id"},
		{"bad qid", func(h nats.Header) { h.Set(HdrQueueID, "a.b") }, "Mta-Queue-Id"},
		{"no from", func(h nats.Header) { h.Del(HdrMailFrom) }, "Mta-Mail-From"},
		{"two froms", func(h nats.Header) { h.Add(HdrMailFrom, "<x@y.test>") }, "exactly one"},
		{"unbracketed from", func(h nats.Header) { h.Set(HdrMailFrom, "a@b.test") }, "not <address>"},
		{"no rcpt", func(h nats.Header) { h.Del(HdrRcpt) }, "no Mta-Rcpt"},
		{"rcpt no domain", func(h nats.Header) { h.Set(HdrRcpt, "<bob>") }, "no domain"},
		{"rcpt unclosed", func(h nats.Header) { h.Set(HdrRcpt, "<bob@x.test") }, "no closing"},
		{"bad notify", func(h nats.Header) { h.Set(HdrRcpt, "<bob@x.test> NOTIFY=SOMETIMES") }, "NOTIFY"},
		{"bad param", func(h nats.Header) { h.Set(HdrRcpt, "<bob@x.test> FOO=1") }, "unknown parameter"},
		{"bad attempt", func(h nats.Header) { h.Set(HdrAttempt, "-1") }, "Mta-Attempt"},
		{"bad time", func(h nats.Header) { h.Set(HdrExpiresAt, "tomorrow") }, "Mta-Expires-At"},
		{"bad body", func(h nats.Header) { h.Set(HdrBody, "s3") }, "Mta-Body"},
		{"bad ret", func(h nats.Header) { h.Set(HdrRet, "SOME") }, "Mta-Ret"},
		{"crlf", func(h nats.Header) { h.Set(HdrHelo, "a\r\nb") }, "CR, LF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := base()
			tt.edit(h)
			_, err := Decode(h)
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Decode = %v, want ErrMalformed saying %q", err, tt.want)
			}
		})
	}
}

func TestQueueID(t *testing.T) {
	a, b := NewQueueID(), NewQueueID()
	if len(a) != 26 || a == b || !ValidQueueID(a) {
		t.Fatalf("ids %q %q", a, b)
	}
	early := queueIDAt(time.Unix(1000, 0))
	late := queueIDAt(time.Unix(2000, 0))
	if early >= late {
		t.Errorf("ids do not sort by time: %s >= %s", early, late)
	}
}

func TestDomainAndSplit(t *testing.T) {
	tests := []struct{ addr, domain string }{
		{"a@Example.COM.", "example.com"},
		{"a@bücher.example", "xn--bcher-kva.example"},
		{`"x@y"@z.test`, "z.test"},
		{"a@[192.0.2.1]", "[192.0.2.1]"},
		{"nodomain", ""},
	}
	for _, tt := range tests {
		if got := Domain(tt.addr); got != tt.domain {
			t.Errorf("Domain(%q) = %q, want %q", tt.addr, got, tt.domain)
		}
	}
}

// An address's domain must be a domain name: the absolute form with one
// final dot is one, an empty label (a doubled, leading or second final
// dot) is not, nor is a label with a character DNS has no use for.
func TestCheckAddressDomain(t *testing.T) {
	long := strings.Repeat("a", 63)
	for addr, ok := range map[string]bool{
		"a@local.test":            true,
		"a@LOCAL.test.":           true,
		"a@bücher.example":        true,
		"a@xn--bcher-kva.example": true,
		"a@_dmarc.local.test":     true,
		"a@mx-1.local.test":       true,
		"a@localhost":             true,
		"a@[192.0.2.1]":           true,
		"a@" + long + ".test":     true,
		"a@local.test..":          false,
		"a@local..test":           false,
		"a@.local.test":           false,
		"a@.":                     false,
		"a@-mx.local.test":        false,
		"a@mx-.local.test":        false,
		"a@local.test/x":          false,
		"a@local+x.test":          false,
		"a@local%test":            false,
		"a@" + long + "a.test":    false,
	} {
		err := CheckAddress(addr)
		if (err == nil) != ok {
			t.Errorf("CheckAddress(%q) = %v, want ok %v", addr, err, ok)
		}
		if err != nil && !strings.HasPrefix(addr, "a@[") && (!errors.Is(err, ErrBadAddress) || !errors.Is(err, ErrBadDomain)) {
			t.Errorf("CheckAddress(%q) = %v, want ErrBadAddress and ErrBadDomain", addr, err)
		}
	}
	if err := CheckDomain(strings.Repeat("b.", 126) + "c"); err != nil {
		t.Errorf("253 octets: %v", err)
	}
	if err := CheckDomain(strings.Repeat("b.", 127) + "c"); !errors.Is(err, ErrBadDomain) {
		t.Errorf("255 octets: %v, want ErrBadDomain", err)
	}
}

func TestCountReceived(t *testing.T) {
	msg := "Received: a\r\nX: y\r\nreceived: b\r\n\tcontinued\r\n\r\nReceived: in body\r\n"
	if n := CountReceived([]byte(msg)); n != 2 {
		t.Errorf("CountReceived = %d, want 2", n)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add("Q1", "<a@b.test>", "<c@d.test> NOTIFY=FAILURE ORCPT=rfc822;c@d.test", "3", "2026-11-22T10:00:00Z", "inline")
	f.Add("01JDXYZ", "<>", `<"a>b"@d.test>`, "", "", "obj")
	f.Add("", "<", "<", "x", "y", "z")
	f.Fuzz(func(t *testing.T, qid, from, rcpt, attempt, expires, body string) {
		h := nats.Header{}
		h.Set(HdrQueueID, qid)
		h.Set(HdrMailFrom, from)
		h.Add(HdrRcpt, rcpt)
		h.Set(HdrAttempt, attempt)
		h.Set(HdrExpiresAt, expires)
		h.Set(HdrBody, body)
		e, err := Decode(h)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error not ErrMalformed: %v", err)
			}
			return
		}
		// What decodes must encode and decode to the same envelope.
		h2, err := e.Header()
		if err != nil {
			t.Fatalf("decoded envelope does not encode: %v (%+v)", err, e)
		}
		e2, err := Decode(h2)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if !reflect.DeepEqual(e, e2) {
			t.Fatalf("round trip differs:\n%+v\n%+v", e, e2)
		}
	})
}

// NormalizeDomain's ASCII shortcut answers exactly what idna does: for
// any input, the result equals idna's on the lower-cased, dot-trimmed
// domain (or that domain itself when idna refuses it).
func FuzzNormalizeDomainASCII(f *testing.F) {
	for _, s := range []string{"Example.COM.", "xn--bcher-kva.example", "a--b.test", "-x.test", "a..b", "a_b.test", "bücher.example", "[127.0.0.1]", "xn--zz.test", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, d string) {
		if strings.HasPrefix(d, "[") {
			return
		}
		want := toASCII(strings.TrimSuffix(strings.ToLower(d), "."))
		if got := NormalizeDomain(d); got != want {
			t.Fatalf("NormalizeDomain(%q) = %q, idna gives %q", d, got, want)
		}
	})
}
