// Package delivery is the last hop of Mailroot's pipeline: it takes routed
// envelopes off the MAIL stream and hands them over, either to a remote SMTP
// server or to the Drop directory (DESIGN.md §4).
//
// Remote delivery works the durable consumer "delivery" (mail.out.*). For
// each envelope it resolves the destination, either the configured smart
// host or the domain's MX records (RFC 5321 §5.1: preference order, implicit
// MX, RFC 7505 null MX, address literals), never itself. It then runs one
// SMTP transaction for all the envelope's recipients with opportunistic
// STARTTLS (RFC 3207) and passes on the DSN parameters (RFC 3461), SMTPUTF8
// (RFC 6531) and SIZE (RFC 1870). Each recipient's answer is classified
// through one typed error, *Error:
//
//   - 2xx: done. The message is acked once every recipient is final, and
//     its Object Store body is released.
//   - 5xx, or 4xx past Mta-Expires-At: the recipients leave the flow
//     through permanentFailure. A copy of the envelope with those
//     recipients and the reason goes to mail.bad.
//   - 4xx, connection or DNS trouble: the pending recipients are
//     republished as a JetStream message schedule on
//     mail.defer.<tok>.<qid>, which fires back into mail.out.<tok> at the
//     next step of the retry ladder. The original is acked only after the
//     schedule's PubAck.
//
// Object Store bodies are shared by reference: every envelope published as
// a successor of the one being settled (retry schedule, Badmail copies)
// holds a reference (bus.Bodies.Retain), and the body is released only when
// an envelope is settled without a successor.
//
// The Drop writer works the consumer "drop" (mail.drop). It writes each
// message byte-exact to Drop/<domain>/<qid>.eml through a temporary file,
// fsync and rename, and acks only after that.
//
// Both loops run on bus.Worker: bounded slots, InProgress keep-alive, panic
// recovery and poison handling. Any number of processes may run the
// service; they share the durable consumers.
package delivery
