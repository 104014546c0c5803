// Package smtpclient runs outbound SMTP transactions for delivery and for
// ATRN: connecting, EHLO, STARTTLS, MAIL and RCPT with the DSN parameters,
// DATA or BDAT, and per-recipient results as one typed Error.
package smtpclient

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
)

// Error is the outcome of a failed delivery for one recipient. Delivery
// decides between retry and bounce by this type alone, never by error text.
// Its text is what ends up in Mta-Last-Error and Mta-Reason, for example
// "550 5.1.1 user unknown (mx.example.test[192.0.2.1])".
type Error struct {
	// Permanent is true for failures that retrying cannot fix: a 5xx reply,
	// a domain that does not exist or accepts no mail, an expired message.
	Permanent bool
	// Code is the remote's SMTP reply code, or 0 when the failure is local:
	// DNS, connecting, expiry, a mail loop.
	Code int
	// Enhanced is the RFC 3463 enhanced status code, e.g. "5.1.1". For
	// local failures it is chosen by Mailroot; it may be empty when a
	// remote sent none.
	Enhanced string
	// Message is the reply text (several lines joined by spaces) or a
	// description of the local failure.
	Message string
	// Remote names the host that gave the answer, "name[ip]", or is empty.
	Remote string
	// Err is the underlying error, if any (network, DNS, TLS).
	Err error
	// Broken is true when the connection failed (no reply, a reset, a
	// timeout): the session cannot go on.
	Broken bool
}

// Error renders "code enhanced message (remote)", leaving out empty parts.
func (e *Error) Error() string {
	var b strings.Builder
	add := func(s string) {
		if s == "" {
			return
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(s)
	}
	if e.Code != 0 {
		add(strconv.Itoa(e.Code))
	}
	add(e.Enhanced)
	add(e.Message)
	if e.Remote != "" {
		add("(" + e.Remote + ")")
	}
	return b.String()
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// TempErr is a local temporary failure.
func TempErr(enhanced, remote string, err error, format string, args ...any) *Error {
	return &Error{Enhanced: enhanced, Message: OneLine(fmt.Sprintf(format, args...)), Remote: remote, Err: err}
}

// PermErr is a local permanent failure.
func PermErr(enhanced, remote string, format string, args ...any) *Error {
	return &Error{Permanent: true, Enhanced: enhanced, Message: OneLine(fmt.Sprintf(format, args...)), Remote: remote}
}

// ReplyErr classifies an error returned by the go-smtp client. Replies
// become an Error with the remote's code; anything else (timeouts, resets,
// EOF) is a temporary network failure.
func ReplyErr(err error, remote, during string) *Error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		e := &Error{
			Permanent: se.Code >= 500 && se.Code <= 599,
			Code:      se.Code,
			Message:   OneLine(se.Message),
			Remote:    remote,
			Err:       err,
		}
		if c := se.EnhancedCode; c != (smtp.EnhancedCode{}) && c != smtp.NoEnhancedCode && c[0] > 0 {
			e.Enhanced = fmt.Sprintf("%d.%d.%d", c[0], c[1], c[2])
		}
		if e.Message == "" {
			e.Message = "(no text) after " + during
		}
		return e
	}
	e := TempErr("4.4.2", remote, err, "%s: %v", during, err)
	e.Broken = true
	return e
}

// ParseReply builds an Error from a raw reply read before the go-smtp
// client takes over (greeting, first EHLO, STARTTLS).
func ParseReply(code int, msg, remote string) *Error {
	return ReplyErr(&smtp.SMTPError{Code: code, EnhancedCode: enhancedOf(&msg), Message: msg}, remote, "reply")
}

// enhancedOf cuts a leading "x.y.z " enhanced code off *msg.
func enhancedOf(msg *string) smtp.EnhancedCode {
	first, rest, ok := strings.Cut(*msg, " ")
	if !ok {
		return smtp.EnhancedCode{}
	}
	parts := strings.Split(first, ".")
	if len(parts) != 3 {
		return smtp.EnhancedCode{}
	}
	var c smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return smtp.EnhancedCode{}
		}
		c[i] = n
	}
	*msg = rest
	return c
}

// OneLine makes s safe for a header value: CR, LF and NUL become spaces.
func OneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		switch r {
		case '\r', 0:
			return -1
		case '\n':
			return ' '
		}
		return r
	}, s)
	return strings.TrimSpace(s)
}
