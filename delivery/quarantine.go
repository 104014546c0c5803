package delivery

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/atomicfile"
	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/envelope"
)

// QuarantineSlots is how many Quarantine files are written at once.
const QuarantineSlots = 2

// handleQuarantine writes a message of mail.quarantine (mail the inbound
// checks quarantined, ingress/checks.go) to <data_dir>/Quarantine as
// <qid>.eml, the message byte for byte as it would have been delivered
// (Received: and Authentication-Results: first), and <qid>.txt, the
// reason and the envelope; both are written as Drop files are (temp file,
// fsync, rename, directory fsync), and the message is acked only once
// both are durable. A write that fails is tried again after
// DropRetryDelay; a redelivery rewrites the same files.
func (s *Service) handleQuarantine(ctx context.Context, m jetstream.Msg) {
	env, err := envelope.Decode(m.Headers())
	if err != nil {
		s.toBad(ctx, m, "quarantine: undecodable envelope")
		return
	}
	log := s.log.With("part", "quarantine", "qid", env.QueueID)
	if !safeDirName(env.QueueID) {
		s.toBad(ctx, m, fmt.Sprintf("quarantine: queue id %q cannot be a file name", env.QueueID))
		return
	}
	body, ok := s.openLocal(ctx, m, env, log, "quarantine")
	if !ok {
		return
	}
	dir := s.conf().QuarantineDir()
	path := filepath.Join(dir, env.QueueID+".eml")
	err = atomicfile.Write(path, body, 0o640)
	_ = body.Close()
	if err == nil {
		err = atomicfile.WriteBytes(filepath.Join(dir, env.QueueID+".txt"), []byte(quarantineReport(env)), 0o640)
	}
	if err != nil {
		log.Error("quarantine: write failed, will retry", "dir", dir, "err", err)
		_ = m.NakWithDelay(s.DropRetryDelay)
		return
	}
	log.Info("quarantined", "path", path, "from", env.From, "rcpts", describe(env.Rcpts), "reason", env.Reason)
	bus.Emit(s.js, bus.Event{Type: bus.EventQuarantined, QueueID: env.QueueID, Domain: bus.DomainOf(bus.Addrs(env.Rcpts)),
		Rcpts: bus.Addrs(env.Rcpts), File: path, Reason: env.Reason})
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	if err := m.DoubleAck(actx); err != nil {
		log.Warn("quarantine: ack failed, the files will be written again", "err", err)
		return
	}
	if err := s.bodies.Release(actx, env); err != nil {
		log.Warn("quarantine: release body failed", "err", err)
	}
}

// quarantineReport is the text of <qid>.txt: why, and the envelope.
func quarantineReport(env *envelope.Envelope) string {
	var b strings.Builder
	from := env.From
	if from == "" {
		from = "<>"
	}
	fmt.Fprintf(&b, "Reason: %s\n", env.Reason)
	fmt.Fprintf(&b, "Queue-Id: %s\n", env.QueueID)
	fmt.Fprintf(&b, "Received-At: %s\n", env.ReceivedAt.UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "Client: %s (HELO %s)\n", env.ClientIP, env.Helo)
	fmt.Fprintf(&b, "Site: %s\n", env.Site)
	fmt.Fprintf(&b, "Sender: %s\n", from)
	for _, r := range env.Rcpts {
		fmt.Fprintf(&b, "Recipient: %s\n", r.Addr)
	}
	return b.String()
}
