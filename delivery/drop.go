package delivery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/atomicfile"
	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/envelope"
)

// handleDrop writes a message of mail.drop to the domain's Drop directory
// (Drop/<domain>/ unless the domain's drop_dir says otherwise) as
// <qid>.eml and acks it once the file is durable. The file is the message
// byte for byte — no blank line or newline is added (an IIS known issue) —
// preceded, when drop.envelope_lines is on, by "x-sender:" and one
// "x-receiver:" line per envelope recipient as IIS wrote them. A write
// that fails is retried on the retry ladder (a schedule firing back into
// mail.drop) until local_expire, with a delay notice after
// local_delay_notice, like remote delivery.
func (s *Service) handleDrop(ctx context.Context, m jetstream.Msg) {
	env, err := envelope.Decode(m.Headers())
	if err != nil {
		s.toBad(ctx, m, "drop: undecodable envelope")
		return
	}
	domain := envelope.NormalizeDomain(env.Domain)
	if domain == "" {
		domain = envelope.Domain(env.Rcpts[0].Addr)
	}
	log := s.log.With("part", "drop", "qid", env.QueueID, "domain", domain)
	if !safeDirName(domain) {
		s.toBad(ctx, m, fmt.Sprintf("drop: domain %q cannot be a directory name", domain))
		return
	}
	tok := bus.Token(domain)
	if md, err := m.Metadata(); err == nil && md.NumDelivered > 1 && s.alreadyRescheduled(ctx, tok, env) {
		// Retry scheduled by a worker that died before acking.
		log.Info("drop: retry already scheduled, dropping redelivered copy", "attempt", env.Attempt)
		_ = m.DoubleAck(ctx)
		return
	}
	lease, ok := s.takeLease(ctx, m, env.QueueID, tok, log)
	if !ok {
		return
	}
	defer lease.ReleaseAsync()
	dir := s.conf().DropDirFor(domain)
	path := filepath.Join(dir, env.QueueID+".eml")
	body, ok := s.openLocal(ctx, m, env, log, "drop")
	if !ok {
		return
	}
	var r io.Reader = body
	if s.conf().Drop.EnvelopeLines {
		r = io.MultiReader(strings.NewReader(envelopeLines(env)), body)
	}
	err = atomicfile.Write(filepath.Join(dir, env.QueueID+".eml"), r, 0o640)
	_ = body.Close()
	errs := make([]*Error, len(env.Rcpts))
	if err != nil {
		// Disk full, permissions, a file in the way: retried on the
		// ladder until local_expire, like remote delivery.
		log.Error("drop: write failed, will retry", "path", path, "err", err)
		e := tempErr("4.3.0", "", err, "cannot write the Drop directory %s: %v", dir, err)
		for i := range errs {
			errs[i] = e
		}
	} else {
		// A redelivery rewrites the same file: harmless.
		log.Info("dropped", "path", path, "rcpts", describe(env.Rcpts))
	}
	s.settle(ctx, m, log, outcome{env: env, tok: tok, target: bus.SubjDrop, data: m.Data(), local: true, errs: errs, file: path})
}

// openLocal opens the body of a message a local writer (part: drop,
// quarantine) is to write. A body lost from the Object Store sends the
// message to Badmail; any other failure gives it back for a retry after
// DropRetryDelay. false: the message was disposed of.
func (s *Service) openLocal(ctx context.Context, m jetstream.Msg, env *envelope.Envelope, log *slog.Logger, part string) (io.ReadCloser, bool) {
	body, err := s.bodies.Open(ctx, env, m.Data())
	if err != nil {
		if errors.Is(err, jetstream.ErrObjectNotFound) {
			s.toBad(ctx, m, part+": message body lost: "+err.Error())
			return nil, false
		}
		log.Error(part+": open body failed", "err", err)
		_ = m.NakWithDelay(s.DropRetryDelay)
		return nil, false
	}
	return body, true
}

// envelopeLines renders the IIS envelope lines: the sender ("<>" for the
// null sender) and each recipient, CRLF-terminated.
func envelopeLines(env *envelope.Envelope) string {
	var b strings.Builder
	from := env.From
	if from == "" {
		from = "<>"
	}
	b.WriteString("x-sender: " + from + "\r\n")
	for _, r := range env.Rcpts {
		b.WriteString("x-receiver: " + r.Addr + "\r\n")
	}
	return b.String()
}

// safeDirName reports whether a domain can be used as one directory name
// under Drop/ without escaping it.
func safeDirName(d string) bool {
	return d != "" && !strings.HasPrefix(d, ".") && !strings.ContainsAny(d, "/\\\x00") && filepath.IsLocal(d)
}
