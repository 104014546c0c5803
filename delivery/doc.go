// Package delivery is the last hop of Mailroot's pipeline: it takes routed
// envelopes off the MAIL stream and hands them over, either to a remote SMTP
// server or to the Drop directory (docs/DESIGN.md §4).
//
// Remote delivery works the durable consumer "delivery" (mail.out.*). For
// each envelope it resolves the destination, either the configured smart
// host or the domain's MX records (RFC 5321 §5.1: preference order, implicit
// MX, RFC 7505 null MX, address literals), never itself. It then runs one
// SMTP transaction for all the envelope's recipients with internal/smtpclient
// (shared with ATRN): opportunistic STARTTLS (RFC 3207), the DSN parameters
// (RFC 3461), SMTPUTF8 (RFC 6531), SIZE (RFC 1870), and BDAT for BINARYMIME
// (RFC 3030). The connection is kept for the next message to the same
// server (smtpclient.Pool, delivery.connection_cache_time): see tryHost.
// Each recipient's answer is classified through one typed error, *Error
// (smtpclient.Error):
//
//   - 2xx: done. The message is acked once every recipient is final, and
//     its Object Store body released. Recipients with NOTIFY=SUCCESS get a
//     "relayed" notice when the remote does not advertise DSN (with DSN it
//     reports itself: the parameters are passed on).
//   - 5xx, or 4xx past Mta-Expires-At (delivery.expire): the recipients
//     fail. Their sender gets one RFC 3464 non-delivery report per attempt
//     (internal/notify), new mail on mail.in from <> with the Nats-Msg-Id
//     "<qid>.<tok>.dsn<attempt>", honouring NOTIFY and RET, copied to
//     delivery.ndr_copy_to. Mail from the null sender is never answered:
//     a copy with the reason goes to mail.bad instead, which is also how a
//     report that cannot be delivered ends (double bounce).
//   - 4xx, connection or DNS trouble: the pending recipients are
//     republished as a JetStream message schedule on
//     mail.defer.<tok>.<qid>, which fires back into mail.out.<tok> at the
//     next step of the retry ladder (±delivery.retry_jitter). The original
//     is acked only after the schedule's PubAck. Once the message is older
//     than delivery.delay_notice, its sender gets one "delayed" notice
//     (Mta-Delay-Notified remembers it).
//
// Destinations that are this server itself — the MX host is one of our
// host names, or one of its addresses is an address and port we listen on
// (every site's listen addresses, the interface addresses for a wildcard
// one, the host names' addresses) — fail with 5.4.6 at the first hop, with
// a text naming the domain, the host and the address (RFC 5321 §5.1).
// "We" includes every ingress process that announces its listeners in the
// mta-listeners bucket, which delivery watches (self.go).
//
// Object Store bodies are shared by reference: every envelope published as
// a successor of the one being settled (retry schedule, Badmail copies)
// holds a reference (bus.Bodies.Retain), and the body is released only when
// an envelope is settled without a successor.
//
// The Drop writer works the consumer "drop" (mail.drop). It writes each
// message byte-exact to Drop/<domain>/<qid>.eml through a temporary file,
// fsync and rename, and acks only after that. A write that fails is
// retried the same way as remote delivery (a schedule into mail.drop), with
// delivery.local_expire and delivery.local_delay_notice.
//
// Both loops run on bus.Worker: bounded slots, InProgress keep-alive, panic
// recovery and poison handling. Any number of processes may run the
// service; they share the durable consumers. Each also runs the ETRN
// release worker, package delivery/release.
package delivery
