package notify

import (
	"fmt"
	"strings"
	"time"

	"github.com/mailroot/mailroot/internal/dsn"
)

// reportSubject is the Subject: of a notification: the kind, then the
// original subject when it has one.
func reportSubject(k dsn.Kind, rcpts []dsn.Status, orig string) string {
	var prefix string
	switch k {
	case dsn.Failure:
		prefix = "Undeliverable"
	case dsn.Delay:
		prefix = "Delayed"
	default:
		prefix = "Delivered"
		for _, s := range rcpts {
			if s.Action == dsn.ActionRelayed {
				prefix = "Relayed"
			}
		}
	}
	orig = dsn.CleanText(orig)
	if orig == "" {
		return "Delivery Status Notification (" + prefix + ")"
	}
	if len(orig) > 200 {
		orig = orig[:200] + "..."
	}
	return prefix + ": " + orig
}

// text is the human-readable first part: what happened, why, and what to
// do.
func (n *Notifier) text(no dsn.Notice, rcpts []dsn.Status, subject, note string) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	env := no.Env
	p("This is the mail system at host %s.\n\n", n.Hostname)
	switch no.Kind {
	case dsn.Failure:
		p("Your message could not be delivered to the recipient(s) below. Mailroot\n")
		p("has given up on them; the reason is given for each one.\n")
	case dsn.Delay:
		p("This is a warning only. You do not need to send your message again.\n\n")
		p("Your message has not yet been delivered to the recipient(s) below.\n")
		p("Mailroot keeps trying until %s and will send\n", stamp(no.RetryUntil))
		p("another report only if it has to give up.\n")
	default:
		p("Your message was handed over for the recipient(s) below.\n")
	}
	p("\n")
	for _, s := range rcpts {
		p("  Recipient:  <%s>\n", s.Rcpt.Addr)
		switch s.Action {
		case dsn.ActionRelayed:
			p("  Result:     relayed to %s, which does not send delivery\n", orDefault(s.Remote, "the next server"))
			p("              notifications: this is the last report about it.\n")
		case dsn.ActionDelivered:
			p("  Result:     delivered\n")
		default:
			p("  Reason:     %s\n", dsn.CleanText(orDefault(s.Detail, s.Reply)))
			if h := hint(s.Status, no.Kind); h != "" {
				p("  What to do: %s\n", wrap(h, 60, "              "))
			}
		}
		p("\n")
	}
	if note != "" {
		p("%s\n\n", wrap(note, 72, ""))
	}
	p("Details of your message:\n")
	p("  Queue ID:   %s\n", env.QueueID)
	if subject != "" {
		p("  Subject:    %s\n", subject)
	}
	if !env.ReceivedAt.IsZero() {
		p("  Received:   %s\n", stamp(env.ReceivedAt))
	}
	if env.Attempt > 0 {
		p("  Attempts:   %d\n", env.Attempt)
	}
	p("\nIf you need help, forward this report to your mail administrator and\n")
	p("quote the queue ID above.\n")
	return b.String()
}

// hint says what the sender can do about an enhanced status code
// (RFC 3463 classes).
func hint(status string, k dsn.Kind) string {
	parts := strings.Split(status, ".")
	if len(parts) != 3 {
		return ""
	}
	subject, detail := parts[1], parts[1]+"."+parts[2]
	if k == dsn.Delay {
		return "Nothing for now. The receiving side has a temporary problem; " +
			"Mailroot will keep trying."
	}
	switch {
	case detail == "4.6":
		return "The message went round in a loop between mail servers and was stopped. " +
			"This is a configuration error (MX records or forwarding) at the receiving domain " +
			"or at this server: tell your mail administrator, quoting this report."
	case detail == "4.7":
		return "Mailroot could not deliver the message before it expired. The receiving " +
			"mail server may be down or refusing mail for now. Try again later, or reach " +
			"the recipient another way."
	case detail == "2.2":
		return "The recipient's mailbox is full. Try again later, or reach the recipient another way."
	case detail == "3.4":
		return "The message is too large for the receiving system. Send a smaller message " +
			"(for example share large attachments as a link)."
	case subject == "1":
		return "The address was refused. Check it for typing errors, or ask the recipient " +
			"for the correct address."
	case subject == "2":
		return "The recipient's mailbox cannot take mail. Reach the recipient another way."
	case subject == "4":
		return "The recipient's mail servers could not be reached or routed to. Check the " +
			"domain of the address; if it is right, the problem is on the receiving side."
	case subject == "7":
		return "The receiving server refused the message for policy or security reasons " +
			"(for example spam filtering or sender authentication). Contact the recipient " +
			"another way, or ask your mail administrator."
	default:
		return "Contact your mail administrator and include this report."
	}
}

// wrap breaks s into lines of at most width characters; lines after the
// first are prefixed with indent.
func wrap(s string, width int, indent string) string {
	var b strings.Builder
	n := 0
	for i, w := range strings.Fields(s) {
		if i > 0 && n+1+len(w) > width {
			b.WriteString("\n" + indent)
			n = 0
		} else if i > 0 {
			b.WriteByte(' ')
			n++
		}
		b.WriteString(w)
		n += len(w)
	}
	return b.String()
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func stamp(t time.Time) string { return t.UTC().Format("Mon, 02 Jan 2006 15:04:05 MST") }
