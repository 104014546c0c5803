package message

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

var testNow = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

func opts() Options {
	return Options{
		DefaultDomain: "example.org",
		Hostname:      "mx.example.org",
		QueueID:       "QID0123456789",
		Now:           testNow,
		MaxSize:       1 << 20,
	}
}

const received = "Received: from pickup by mx.example.org (Mailroot)\r\n\twith local-file id QID0123456789;\r\n\tTue, 04 Mar 2025 05:06:07 +0000\r\n"

func TestParse(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		from     string
		rcpts    []string
		xhdr     bool
		message  string // expected Message after the Received: header
		contains []string
		lacks    []string
	}{
		{
			name:  "iis envelope lines",
			in:    "x-sender: alice@example.com\r\nX-Receiver: <bob@example.net>\r\nx-RECEIVER: carol@example.net\r\nFrom: Someone <someone@else.example>\r\nTo: nobody@example.net\r\nDate: Mon, 03 Mar 2025 10:00:00 +0000\r\nMessage-ID: <m1@example.com>\r\nSubject: hi\r\n\r\nbody\r\n",
			from:  "alice@example.com",
			rcpts: []string{"bob@example.net", "carol@example.net"},
			xhdr:  true,
			message: "From: Someone <someone@else.example>\r\nTo: nobody@example.net\r\nDate: Mon, 03 Mar 2025 10:00:00 +0000\r\n" +
				"Message-ID: <m1@example.com>\r\nSubject: hi\r\n\r\nbody\r\n",
		},
		{
			name:  "null sender and a bcc in iis mode",
			in:    "x-sender: <>\nx-receiver: bob@example.net\nBcc: secret@example.net\nDate: x\nMessage-ID: <y>\n\nb\n",
			from:  "",
			rcpts: []string{"bob@example.net"},
			xhdr:  true,
			lacks: []string{"Bcc", "secret"},
		},
		{
			name: "from to cc bcc, bcc removed, dedup by domain case",
			in: "From: \"Alice A.\" <alice@example.com>, other@example.com\r\nTo: Bob <bob@Example.NET>, carol@example.net\r\n" +
				"Cc: bob@example.net,\r\n dave@example.net\r\nBcc: eve@example.net,\r\n\tcarol@EXAMPLE.net\r\nSubject: s\r\nDate: d\r\nMessage-ID: <m>\r\n\r\nbody\r\n",
			from:    "alice@example.com",
			rcpts:   []string{"bob@Example.NET", "carol@example.net", "dave@example.net", "eve@example.net"},
			message: "From: \"Alice A.\" <alice@example.com>, other@example.com\r\nTo: Bob <bob@Example.NET>, carol@example.net\r\nCc: bob@example.net,\r\n dave@example.net\r\nSubject: s\r\nDate: d\r\nMessage-ID: <m>\r\n\r\nbody\r\n",
		},
		{
			name:    "bare LF and bare CR become CRLF, last line terminated",
			in:      "From: a@example.com\nTo: b@example.net\nDate: d\nMessage-ID: <m>\n\nline1\rline2\r\nline3",
			from:    "a@example.com",
			rcpts:   []string{"b@example.net"},
			message: "From: a@example.com\r\nTo: b@example.net\r\nDate: d\r\nMessage-ID: <m>\r\n\r\nline1\r\nline2\r\nline3\r\n",
		},
		{
			name:    "missing date and message-id added",
			in:      "From: a@example.com\nTo: b@example.net\nSubject: s\n\nbody\n",
			from:    "a@example.com",
			rcpts:   []string{"b@example.net"},
			message: "From: a@example.com\r\nTo: b@example.net\r\nSubject: s\r\nDate: Tue, 04 Mar 2025 05:06:07 +0000\r\nMessage-ID: <QID0123456789@mx.example.org>\r\n\r\nbody\r\n",
		},
		{
			name:     "default domain for sender and recipients",
			in:       "From: root\nTo: Admin <admin>, ops@example.net\n\nbody\n",
			from:     "root@example.org",
			rcpts:    []string{"admin@example.org", "ops@example.net"},
			contains: []string{"From: root\r\n"}, // the header stays as written
		},
		{
			name:  "default domain in iis mode",
			in:    "x-sender: cron\nx-receiver: ops@example.net\n\nbody\n",
			from:  "cron@example.org",
			rcpts: []string{"ops@example.net"},
			xhdr:  true,
		},
		{
			name:     "x-sender alone is an ordinary header",
			in:       "X-Sender: someone@example.com\nFrom: a@example.com\nTo: b@example.net\n\nbody\n",
			from:     "a@example.com",
			rcpts:    []string{"b@example.net"},
			contains: []string{"X-Sender: someone@example.com\r\n"},
		},
		{
			name:  "group syntax and quoted local part",
			in:    "From: a@example.com\nTo: friends: \"john doe\"@example.net, x@example.net;, undisclosed-recipients:;\n\nb\n",
			from:  "a@example.com",
			rcpts: []string{`"john doe"@example.net`, "x@example.net"},
		},
		{
			name:     "no body",
			in:       "From: a@example.com\nTo: b@example.net\n\n",
			from:     "a@example.com",
			rcpts:    []string{"b@example.net"},
			contains: []string{"\r\n\r\n"},
		},
		{
			name:     "utf-8",
			in:       "From: Jörg <jörg@bücher.example>\nTo: b@example.net\nSubject: Grüße\n\nÄ\n",
			from:     "jörg@bücher.example",
			rcpts:    []string{"b@example.net"},
			contains: []string{"Subject: Grüße\r\n"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse([]byte(tc.in), opts())
			if err != nil {
				t.Fatal(err)
			}
			if p.From != tc.from {
				t.Errorf("From = %q, want %q", p.From, tc.from)
			}
			if strings.Join(p.Rcpts, " ") != strings.Join(tc.rcpts, " ") {
				t.Errorf("Rcpts = %q, want %q", p.Rcpts, tc.rcpts)
			}
			if p.FromXHeaders != tc.xhdr {
				t.Errorf("FromXHeaders = %v", p.FromXHeaders)
			}
			msg := string(p.Message)
			if !strings.HasPrefix(msg, received) {
				t.Fatalf("no Received: first:\n%s", msg)
			}
			if tc.message != "" && msg[len(received):] != tc.message {
				t.Errorf("message:\n%q\nwant\n%q", msg[len(received):], tc.message)
			}
			for _, c := range tc.contains {
				if !strings.Contains(msg, c) {
					t.Errorf("message lacks %q:\n%s", c, msg)
				}
			}
			for _, c := range tc.lacks {
				if strings.Contains(msg, c) {
					t.Errorf("message has %q:\n%s", c, msg)
				}
			}
			checkCRLF(t, p.Message)
			if strings.Contains(strings.ToLower(msg), "x-receiver") {
				t.Error("envelope lines left in the message")
			}
		})
	}
}

func TestParseHopsAndFlags(t *testing.T) {
	p, err := Parse([]byte("Received: from a\nReceived: from b\nFrom: a@example.com\nTo: ü@example.net\n\nx\n"), opts())
	if err != nil {
		t.Fatal(err)
	}
	if p.Hops != 3 || !p.SMTPUTF8 || !p.EightBit {
		t.Errorf("Hops %d SMTPUTF8 %v EightBit %v", p.Hops, p.SMTPUTF8, p.EightBit)
	}
	p, err = Parse([]byte("From: a@example.com\nTo: b@example.net\n\nx\n"), opts())
	if err != nil {
		t.Fatal(err)
	}
	if p.Hops != 1 || p.SMTPUTF8 || p.EightBit {
		t.Errorf("Hops %d SMTPUTF8 %v EightBit %v", p.Hops, p.SMTPUTF8, p.EightBit)
	}
}

func TestParseErrors(t *testing.T) {
	big := "From: a@example.com\nTo: b@example.net\n\n" + strings.Repeat("x", 1<<20) + "\n"
	many := "From: a@example.com\nTo: "
	for i := range MaxRecipients + 1 {
		if i > 0 {
			many += ",\n "
		}
		many += "r@d" + strconv.Itoa(i) + ".example"
	}
	many += "\n\nx\n"
	tests := []struct {
		name string
		in   string
		kind error
		why  string
	}{
		{"empty", "", ErrUnterminated, "empty"},
		{"no empty line", "From: a@example.com\nTo: b@example.net\nSubject: x\n", ErrUnterminated, "no empty line"},
		{"only envelope lines", "x-sender: a@example.com\nx-receiver: b@example.net\n", ErrUnterminated, "nothing follows"},
		{"nul byte", "From: a@example.com\nTo: b@example.net\n\nab\x00c\n", ErrBinary, "NUL byte at offset 41"},
		{"not a header", "Hello Bob,\nhow are you?\n\n", ErrBadHeader, `line 1 is not a header field ("Name: value"): "Hello Bob,"`},
		{"mbox from line", "From alice@example.com Mon Mar  3 10:00:00 2025\nFrom: a@example.com\n\n", ErrBadHeader, "line 1"},
		{"continuation first", " folded\nFrom: a@example.com\n\n", ErrBadHeader, "continuation"},
		{"bad line after envelope", "x-receiver: b@example.net\nnot a header\n\n", ErrBadHeader, "line 2"},
		{"no sender", "To: b@example.net\n\nx\n", ErrNoSender, "no X-Sender line and no From: header"},
		{"empty from", "From: undisclosed:;\nTo: b@example.net\n\nx\n", ErrNoSender, "holds no address"},
		{"no recipient", "From: a@example.com\nSubject: x\n\nx\n", ErrNoRecipient, "no X-Receiver line and no address in To:, Cc: or Bcc:"},
		{"empty recipients", "From: a@example.com\nTo: undisclosed-recipients:;\n\nx\n", ErrNoRecipient, "no address"},
		{"bad to", "From: a@example.com\nTo: b@@example.net\n\nx\n", ErrBadAddress, "To: on line 2"},
		{"bad from", "From: <<a>>\nTo: b@example.net\n\nx\n", ErrBadAddress, "From: on line 1"},
		{"bad x-receiver", "x-sender: a@example.com\nx-receiver: bob smith\n\nx\n", ErrBadAddress, "X-Receiver on line 2"},
		{"bad x-sender", "x-sender: a@b@c d\nx-receiver: b@example.net\n\nx\n", ErrBadAddress, "X-Sender on line 1"},
		{"two x-senders", "x-sender: a@example.com\nx-sender: c@example.com\nx-receiver: b@example.net\n\nx\n", ErrBadAddress, "2 X-Sender lines"},
		{"too big", big, ErrTooBig, "over the limit of 1048576 bytes"},
		{"too many recipients", many, ErrTooManyRecipients, "1001 recipients"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse([]byte(tc.in), opts())
			if err == nil {
				t.Fatalf("accepted: %+v", p)
			}
			if !errors.Is(err, tc.kind) {
				t.Errorf("error %q is not %q", err, tc.kind)
			}
			if !strings.Contains(err.Error(), tc.why) {
				t.Errorf("error %q does not say %q", err, tc.why)
			}
		})
	}
	// Without a default domain, a bare name is an error.
	o := opts()
	o.DefaultDomain = ""
	if _, err := Parse([]byte("From: root\nTo: b@example.net\n\nx\n"), o); !errors.Is(err, ErrBadAddress) {
		t.Errorf("bare sender without default domain: %v", err)
	}
}

// checkCRLF fails unless every CR is followed by LF and every LF preceded
// by CR.
func checkCRLF(t testing.TB, msg []byte) {
	t.Helper()
	for i, c := range msg {
		switch c {
		case '\r':
			if i+1 >= len(msg) || msg[i+1] != '\n' {
				t.Fatalf("bare CR at %d in %q", i, msg)
			}
		case '\n':
			if i == 0 || msg[i-1] != '\r' {
				t.Fatalf("bare LF at %d in %q", i, msg)
			}
		}
	}
	if !bytes.HasSuffix(msg, []byte("\r\n")) {
		t.Fatalf("message does not end with CRLF: %q", msg)
	}
}

// TestParseLinear guards against quadratic work on long folded headers
// and long address lists (a 10 MB file must not take minutes).
func TestParseLinear(t *testing.T) {
	o := opts()
	o.MaxSize = 20 << 20
	in := "From: a@example.com\nTo: b@example.net\nSubject: x\n" + strings.Repeat(" y\n", 1<<20) + "\nbody\n"
	if _, err := Parse([]byte(in), o); err != nil {
		t.Fatal(err)
	}
	in = "From: a@example.com\nTo: b@example.net" + strings.Repeat(",\n c@example.net", 100000) + "\n\nbody\n"
	if _, err := Parse([]byte(in), o); err != nil {
		t.Fatal(err)
	}
}
