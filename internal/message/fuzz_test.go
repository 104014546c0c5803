package message

import (
	"errors"
	"testing"
)

var kinds = []error{ErrTooBig, ErrBinary, ErrUnterminated, ErrBadHeader, ErrBadAddress, ErrNoSender, ErrNoRecipient, ErrTooManyRecipients}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"x-sender: alice@example.com\r\nx-receiver: bob@example.net\r\nx-receiver: carol@example.net\r\nSubject: report\r\n\r\nThe nightly job finished.\r\n",
		"From: \"Alice\" <alice@example.com>\nTo: bob@example.net, Carol <carol@example.net>\nCc: dave@example.net\nBcc: eve@example.net\nSubject: hello\nDate: Mon, 03 Mar 2025 10:00:00 +0000\nMessage-ID: <1@example.com>\n\nHi all\n",
		"From: root\nTo: admin\nSubject: cron\n\noutput\n",
		"X-Sender: <>\nX-Receiver: <postmaster@example.org>\n\n",
		"From: a@example.com\r\nTo: friends: b@example.net, c@example.net;\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n",
		"Received: from x by y; Mon, 3 Mar 2025 10:00:00 +0000\rFrom: a@example.com\rTo: b@example.net\r\rmac line ends\r",
		"From: a@example.com\nTo: b@example.net\nSubject: folded\n  continuation\n\tmore\n\nbody\n",
		"Hello, not a message\n",
		"From: a@example.com\nTo: b@example.net\n",
		"\x00\x01binary",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		o := opts()
		o.MaxSize = 64 << 10
		p, err := Parse(data, o)
		if err != nil {
			for _, k := range kinds {
				if errors.Is(err, k) {
					return
				}
			}
			t.Fatalf("error of no known kind: %v", err)
		}
		if len(p.Rcpts) == 0 {
			t.Fatal("accepted without recipients")
		}
		checkCRLF(t, p.Message)
	})
}
