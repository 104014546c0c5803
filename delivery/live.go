package delivery

import (
	"context"
	"github.com/mailroot/mailroot/internal/dkim"
	"log/slog"
	"reflect"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
)

// conf is the configuration in force (Apply).
func (s *Service) conf() *config.Config { return s.cfgs.Get() }

// Apply puts a changed configuration in force (the live configuration,
// internal/liveconfig): domains (smart host, require_tls, hold, pause),
// retries, limits and the [[dkim]] blocks' keys apply to the attempts
// that follow. A domain whose
// pause is lifted has its parked mail fired at once (resume).
func (s *Service) Apply(cfg config.Config) {
	old := s.conf()
	if !reflect.DeepEqual(old.DKIM, cfg.DKIM) {
		// Changed [[dkim]] blocks: their keys are read now. A key that
		// cannot be read keeps the keys in use (a rotation must not
		// unsign a domain's mail), and the log says which block.
		if keys, err := dkim.BlockKeys(cfg.DKIM); err != nil {
			s.log.Error("changed [[dkim]] blocks not applied: the DKIM keys in use stay", "err", err)
			cfg.DKIM = old.DKIM
		} else if s.dkim != nil {
			s.dkim.SetFixed(keys...)
			s.log.Info("DKIM keys of the [[dkim]] blocks changed", "blocks", len(keys))
		}
	}
	s.cfgs.Set(cfg)
	var resumed []string
	for _, d := range old.Domains {
		if !d.Paused {
			continue
		}
		if nd, ok := cfg.Domain(d.Name); !ok || !nd.Paused {
			resumed = append(resumed, d.Name)
		}
	}
	s.runMu.Lock()
	ctx := s.runCtx
	s.runMu.Unlock()
	if len(resumed) == 0 || ctx == nil {
		return
	}
	for _, d := range resumed {
		s.resumes.Go(func() { s.resume(ctx, d) })
	}
}

// pauseRecheck is how long the mail of a paused domain waits before a
// delivery worker looks at it again; resuming fires it at once.
const pauseRecheck = 30 * time.Second

// paused reports whether delivery to domain is paused ([[domain]]
// paused, set live).
func (s *Service) paused(domain string) bool {
	d, ok := s.conf().Domain(domain)
	return ok && d.Paused
}

// park puts the mail of a paused domain aside without an attempt: its
// envelope, unchanged (attempt, expiry, last error), becomes a schedule
// on mail.defer.<tok>.<qid> due in pauseRecheck, and m is acked once that
// is stored. Nothing is counted, nothing bounces. The schedule's id is
// made of m's stream sequence, so a redelivered copy of m parks once.
func (s *Service) park(ctx context.Context, m jetstream.Msg, env *envelope.Envelope, tok string, log *slog.Logger) {
	md, err := m.Metadata()
	if err != nil {
		log.Warn("paused domain: no metadata, message returned", "err", err)
		_ = m.NakWithDelay(pauseRecheck)
		return
	}
	next := env.Clone()
	next.MsgID = envelope.PauseID(env.QueueID, tok, md.Sequence.Stream)
	data := m.Data()
	if env.Body == envelope.BodyObject {
		data = nil
	}
	msg, err := next.Msg(bus.Defer(tok, env.QueueID), data)
	if err != nil {
		s.toBad(ctx, m, "delivery: paused domain: "+err.Error())
		return
	}
	at := s.Now().Add(pauseRecheck).Truncate(time.Second).Add(time.Second)
	if _, err := s.Room.Forward(ctx, msg, next.MsgID, jetstream.WithScheduleAt(at), jetstream.WithScheduleTarget(bus.Out(tok))); err != nil {
		log.Warn("paused domain: parking failed, message returned", "err", err)
		_ = m.NakWithDelay(time.Second)
		return
	}
	if err := m.DoubleAck(ctx); err != nil {
		log.Warn("ack failed", "err", err)
		return
	}
	log.Debug("delivery paused for the domain, mail parked", "until", at)
}

// resume fires the parked (and deferred) mail of domain now, as `mailroot
// queue flush -domain` does. Every delivery process of a cluster does it
// when the pause is lifted; each schedule fires once (bus.FireDeferred).
func (s *Service) resume(ctx context.Context, domain string) {
	tok := bus.Token(domain)
	subjects, err := bus.DeferredSubjects(ctx, s.js, tok)
	if err != nil {
		s.log.Warn("resume: listing the domain's parked mail failed; it goes at its next check", "domain", domain, "err", err)
		return
	}
	fired := 0
	for _, subj := range subjects {
		if _, ok, err := bus.FireDeferred(ctx, s.Room, tok, subj, func(qid string, seq uint64) string {
			return envelope.FlushID(qid, tok, seq)
		}); err != nil {
			s.log.Warn("resume: firing failed; it goes at its next check", "domain", domain, "subject", subj, "err", err)
		} else if ok {
			fired++
		}
	}
	s.log.Info("delivery resumed for the domain", "domain", domain, "fired", fired, "subjects", len(subjects), "prefix", strings.TrimSuffix(bus.Defer(tok, ""), "."))
}
