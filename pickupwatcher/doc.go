// Package pickupwatcher is Mailroot's Pickup directory, the IIS way of
// sending mail without SMTP: an application drops an RFC 5322 message file
// into <data_dir>/Pickup/ and the watcher queues it on mail.in, where the
// router takes it like any mail accepted by ingress (docs/DESIGN.md §4, Pickup).
//
// # Writing a pickup file safely
//
// Write the file somewhere else on the same file system (for example
// <data_dir>/Pickup/.tmp-123, or any directory on the same mount), close
// it, then rename(2) it into Pickup/. A rename is atomic, so the watcher
// sees either nothing or the complete file. Names starting with "." are
// never picked up, so Pickup/.something is a fine place to write. Files
// written in place are also taken, but only once their size and mtime have
// not changed for pickup.stable_for: a writer that pauses longer than that
// in the middle of a file gets it sent half-written.
//
// # File format
//
// See message.Parse (internal/message, shared with mailroot sendmail): an
// RFC 5322 message with any line ends, optionally preceded by IIS envelope
// lines "x-sender: <addr>" and "x-receiver: <addr>" (one per recipient);
// without them the envelope comes from From/To/Cc/Bcc.
//
// # What happens to a file
//
//  1. Scan: every pickup.interval the directory is listed (a later change
//     may add fsnotify events; they only need to call Kick). Hidden names
//     are ignored. Anything but a regular file (a symbolic link, a FIFO,
//     a directory, a device, a socket) is claimed at once and moved to
//     Badmail as it is, with a .BDR saying what it is (ErrNotRegular): a
//     link is never followed and nothing of the kind is ever opened, and
//     it is logged once, when moved.
//  2. Claim: a stable file is moved into Pickup/.work/ without replacing
//     anything (hard link + unlink). Only one watcher can win; the others
//     find it gone and skip it.
//  3. Parse and publish: the queue id is derived from the claimed file
//     (name, size, mtime, inode, content), and the envelope is published to
//     mail.in with Nats-Msg-Id "pickup.<qid>"; bodies over 64 KiB go to the
//     mail-bodies Object Store first.
//  4. After the PubAck the file is deleted. A crash anywhere before that
//     leaves it in .work/, which is processed again at start: the same id
//     is published again and JetStream's dedup window drops the copy.
//  5. A file that is not a valid message (see the Err* kinds of
//     internal/message) is written to Badmail as <qid>.BAD (the file as it
//     was) and <qid>.BDR (why), by the same writer as the badmail service,
//     and then deleted. A file is never deleted before it is either
//     queued or in Badmail; when NATS is unreachable it stays in .work/
//     and is retried at the next scan.
package pickupwatcher
