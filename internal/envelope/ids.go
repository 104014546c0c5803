package envelope

import "strconv"

// The Nats-Msg-Id of every successor a step publishes, built here only.
// These strings are stored in queues and deduplicated by JetStream: they
// must never change. qid is the queue id, tok the domain token
// (bus.Token), attempt the delivery attempt and seq a stream sequence.

// RouteID is a message routed to mail.out/mail.hold/mail.drop: "<qid>.<tok>".
func RouteID(qid, tok string) string { return qid + "." + tok }

// RouteDSNID is the router's report for recipients it cannot route.
func RouteDSNID(qid string) string { return qid + ".route.dsn" }

// PickupIDPrefix starts the id of picked-up mail: "pickup.<qid>".
const PickupIDPrefix = "pickup."

// PickupID is the id of a message picked up from the Pickup directory.
func PickupID(qid string) string { return PickupIDPrefix + qid }

func attemptID(qid, tok, kind string, n uint64) string {
	return RouteID(qid, tok) + "." + kind + strconv.FormatUint(n, 10)
}

// RetryID is the retry schedule after attempt: "<qid>.<tok>.a<n>".
func RetryID(qid, tok string, attempt int) string { return attemptID(qid, tok, "a", uint64(attempt)) }

// HoldID is the copy put back on hold after attempt: "<qid>.<tok>.h<n>".
func HoldID(qid, tok string, attempt int) string { return attemptID(qid, tok, "h", uint64(attempt)) }

// BadID is the i-th Badmail copy (0-based) of null-sender mail that
// failed at attempt: "<qid>.<tok>.bad<n>", then "-<i>" for i > 0.
func BadID(qid, tok string, attempt, i int) string {
	id := attemptID(qid, tok, "bad", uint64(attempt))
	if i > 0 {
		id += "-" + strconv.Itoa(i)
	}
	return id
}

// FailureDSNID is the non-delivery report of attempt: "<qid>.<tok>.dsn<n>".
func FailureDSNID(qid, tok string, attempt int) string {
	return attemptID(qid, tok, "dsn", uint64(attempt))
}

// SuccessDSNID is the success notice of attempt: "<qid>.<tok>.ok<n>".
func SuccessDSNID(qid, tok string, attempt int) string {
	return attemptID(qid, tok, "ok", uint64(attempt))
}

// DelayDSNID is the one delay notice of a message: "<qid>.<tok>.delay".
func DelayDSNID(qid, tok string) string { return RouteID(qid, tok) + ".delay" }

// HoldBadID and HoldDSNID are the Badmail copy and the report of held
// mail that expired.
func HoldBadID(qid, tok string) string { return RouteID(qid, tok) + ".holdbad" }

// HoldDSNID: see HoldBadID.
func HoldDSNID(qid, tok string) string { return RouteID(qid, tok) + ".holddsn" }

// ATRNID, ATRNBadID and ATRNDSNID are what an ATRN session makes of the
// held message at seq: deferred recipients back on hold, refused ones of
// null-sender mail in Badmail, and the report of refused ones.
func ATRNID(qid, tok string, seq uint64) string { return attemptID(qid, tok, "atrn", seq) }

// ATRNBadID: see ATRNID.
func ATRNBadID(qid, tok string, seq uint64) string { return attemptID(qid, tok, "atrnbad", seq) }

// ATRNDSNID: see ATRNID.
func ATRNDSNID(qid, tok string, seq uint64) string { return attemptID(qid, tok, "atrndsn", seq) }

// ReleaseID is held mail at seq released to delivery: "<qid>.<tok>.rel<seq>".
func ReleaseID(qid, tok string, seq uint64) string { return attemptID(qid, tok, "rel", seq) }

// ETRNID is held mail at seq released by ETRN: "<qid>.<tok>.etrn<seq>".
func ETRNID(qid, tok string, seq uint64) string { return attemptID(qid, tok, "etrn", seq) }

// FlushID is a retry schedule at seq made to fire now by `mailroot queue
// flush`: "<qid>.<tok>.flush<seq>".
func FlushID(qid, tok string, seq uint64) string { return attemptID(qid, tok, "flush", seq) }

// PauseID is the schedule that parks the mail.out message at stream
// sequence seq while delivery to its domain is paused: "<qid>.<tok>.p<seq>".
func PauseID(qid, tok string, seq uint64) string { return attemptID(qid, tok, "p", seq) }

// BadmailDSNID is Badmail's report for the mail.bad message at seq:
// "<qid>.bad<seq>.dsn".
func BadmailDSNID(qid string, seq uint64) string {
	return qid + ".bad" + strconv.FormatUint(seq, 10) + ".dsn"
}

// PoisonID is a poison message at seq moved to mail.bad:
// "bad.<seq>.<qid>".
func PoisonID(seq uint64, qid string) string {
	return "bad." + strconv.FormatUint(seq, 10) + "." + qid
}

// Ids of the administrator's queue actions (internal/queue). seq is the
// stream sequence of the message acted on, so that a command repeated
// after a crash publishes the same successor, and acting again later on
// the message's next copy does not collide.

// AdminHoldID is the copy moved to mail.adminhold: "<qid>.<tok>.ah<seq>".
func AdminHoldID(qid, tok string, seq uint64) string { return attemptID(qid, tok, "ah", seq) }

// AdminReleaseID is the copy released from mail.adminhold: "<qid>.<tok>.ar<seq>".
func AdminReleaseID(qid, tok string, seq uint64) string { return attemptID(qid, tok, "ar", seq) }

// AdminBounceDSNID is the report of `queue bounce`: "<qid>.<tok>.ab<seq>".
func AdminBounceDSNID(qid, tok string, seq uint64) string { return attemptID(qid, tok, "ab", seq) }

// RequeueQueueID is the queue id a requeued or redriven message gets: a
// new message, derived from what it was made from (key: the stream and
// sequence of the copy), so that a repeated command makes the same one.
func RequeueQueueID(qid, tok, key string) string {
	return QueueIDFor("requeue." + RouteID(qid, tok) + "." + key)
}

// FailedID is the copy kept in MAIL_FAILED of a message that bounced at
// attempt (delivery) or by `queue bounce` (kind "x", n its sequence):
// "<qid>.<tok>.failed<kind><n>".
func FailedID(qid, tok, kind string, n uint64) string { return attemptID(qid, tok, "failed"+kind, n) }
