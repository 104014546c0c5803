package ingress

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"time"

	"blitiri.com.ar/go/spf"
	"github.com/emersion/go-msgauth/dmarc"

	"github.com/mailroot/mailroot/internal/authcheck"
	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/metrics"
)

// Inbound authentication checks (internal/authcheck): SPF, DKIM and DMARC
// at the end of DATA, for mail from clients that are neither
// authenticated nor in relay_networks, on sites with auth_checks. The
// message gets an Authentication-Results header with the site's
// authserv-id (any the client sent claiming that id removed first), and
// the site's action for what failed:
//
//   - spf_fail = "reject": an SPF fail of the MAIL FROM identity gets
//     "550 5.7.23" (RFC 7372);
//   - dmarc_reject / dmarc_quarantine, for a DMARC fail whose policy
//     (after pct=) is reject / quarantine: "reject" answers "550 5.7.1"
//     with the domain and policy, "quarantine" stores the mail on
//     mail.quarantine (delivery writes it to <data_dir>/Quarantine/),
//     "tag" delivers it with the header alone.
//
// Nothing is refused for a temporary DNS failure: the verdict is a
// temperror, recorded in the header. Every lookup of one message shares
// one deadline, checkBound, so a slow or dead DNS server cannot hold the
// reply to the end of DATA past half the site's timeout.

// checkBound bounds the lookups of one message's checks, all together:
// 10 s, or half the site's timeout when that is shorter, so that the
// reply comes well within the time the site gives its clients.
func (ss *session) checkBound() time.Duration { return min(10*time.Second, ss.sp.cfg.Timeout.D()/2) }

// checksApply reports whether the current message is checked.
func (ss *session) checksApply() bool {
	return ss.sp.cfg.AuthChecks && ss.user == nil && !ss.relay
}

// checked is what the checks decided for one message.
type checked struct {
	// header is the Authentication-Results field to prepend.
	header []byte
	// reply refuses the message; nil accepts it.
	reply *reply
	// quarantine is why the message is quarantined; "" delivers it.
	quarantine string
}

// subject is where an accepted message is published.
func (c checked) subject() string {
	if c.quarantine != "" {
		return bus.SubjQuarantine
	}
	return bus.SubjIn
}

// runChecks checks a message: content is the message as the client sent
// it (head: its first bytes, holding the header section) and msg reads
// it whole, for DKIM.
func (ss *session) runChecks(qid string, head []byte, msg io.Reader) checked {
	cfg := ss.sp.cfg
	ctx, cancel := context.WithTimeout(context.Background(), ss.checkBound())
	defer cancel()
	c := authcheck.Checker{Resolver: ss.s.Resolver}
	t0 := time.Now()
	v := c.Check(ctx, authcheck.Input{IP: ss.ip, Helo: ss.helo, MailFrom: ss.from, Message: msg, Header: authcheck.HeaderSection(head)})
	id := config.SiteAuthServID(cfg)
	out := checked{header: []byte(authcheck.Header(id, v))}
	action, why := config.ActionTag, ""
	switch {
	case v.SPF.Result == spf.Fail && cfg.SPFFail == config.ActionReject:
		action = config.ActionReject
		why = "SPF"
		out.reply = rep(550, "5.7.23", fmt.Sprintf("SPF check failed: %s does not permit [%s] to send for it", v.SPF.Domain, ss.ip))
		ss.site.m.Refused(metrics.RefusedSPF)
	case v.DMARC.Result == "fail" && (v.DMARC.Policy == dmarc.PolicyReject || v.DMARC.Policy == dmarc.PolicyQuarantine):
		action = cfg.DMARCQuarantine
		if v.DMARC.Policy == dmarc.PolicyReject {
			action = cfg.DMARCReject
		}
		why = "DMARC"
		switch action {
		case config.ActionReject:
			out.reply = rep(550, "5.7.1", fmt.Sprintf("Message rejected: DMARC policy of %s (p=%s): neither SPF nor DKIM passed aligned with the From domain", v.DMARC.From, v.DMARC.Policy))
			ss.site.m.Refused(metrics.RefusedDMARC)
		case config.ActionQuarantine:
			out.quarantine = fmt.Sprintf("DMARC policy of %s is %s; SPF %s, DKIM %s", v.DMARC.From, v.DMARC.Policy, v.SPF.Result, dkimSummary(v.DKIM))
		}
	}
	m := ss.site.m
	m.AuthResult("spf", string(v.SPF.Result))
	for _, d := range v.DKIM {
		m.AuthResult("dkim", d.Result)
	}
	if len(v.DKIM) == 0 {
		m.AuthResult("dkim", "none")
	}
	m.AuthResult("dmarc", v.DMARC.Result)
	ss.log.Info("inbound checks", "qid", qid, "spf", v.SPF.Result, "spf_domain", v.SPF.Domain, "helo_spf", v.Helo.Result,
		"dkim", dkimSummary(v.DKIM), "dmarc", v.DMARC.Result, "from_domain", v.DMARC.From, "policy", v.DMARC.Policy,
		"action", action, "for", why, "took", time.Since(t0).Round(time.Microsecond))
	return out
}

// dkimSummary is the DKIM results in one word each: "pass(d.test),fail(x)".
func dkimSummary(rs []authcheck.DKIMResult) string {
	if len(rs) == 0 {
		return "none"
	}
	var b bytes.Buffer
	for i, r := range rs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(r.Result + "(" + r.Domain + ")")
	}
	return b.String()
}

// checkInline checks a message held in memory: data is received (our
// Received: field) followed by the content. It returns the message to
// store: Received:, Authentication-Results:, then the content without
// forged Authentication-Results.
func (ss *session) checkInline(qid string, received int, data []byte) ([]byte, checked) {
	content := data[received:]
	c := ss.runChecks(qid, content, bytes.NewReader(content))
	if c.reply != nil {
		return nil, c
	}
	stripped, n := authcheck.StripOwn(content, config.SiteAuthServID(ss.sp.cfg))
	if n > 0 {
		ss.log.Info("forged Authentication-Results removed", "qid", qid, "count", n)
	}
	out := make([]byte, 0, received+len(c.header)+len(stripped))
	out = append(out, data[:received]...)
	out = append(out, c.header...)
	return append(out, stripped...), c
}

// uncheckedName is the Object Store name of a large message's content
// while it is checked; the message is then stored under its queue id.
func uncheckedName(qid string) string { return qid + "-unchecked" }

// bodyName is where a large message is first stored.
func (ss *session) bodyName(qid string) string {
	if ss.checksApply() {
		return uncheckedName(qid)
	}
	return qid
}

// checkStored checks a large message stored under uncheckedName (our
// Received: field, received bytes, then the content; head is the first
// bytes of the content) and stores the checked message under qid. It
// returns its size, and the verdict; the unchecked object is deleted.
func (ss *session) checkStored(ctx context.Context, qid string, received []byte, head []byte) (int64, checked, error) {
	b := ss.s.bodies
	tmp := uncheckedName(qid)
	defer func() { _ = b.Delete(context.WithoutCancel(ctx), tmp) }()
	open := func(skip int64) (io.ReadCloser, error) {
		r, err := b.Open(ctx, &envelope.Envelope{QueueID: tmp, Body: envelope.BodyObject}, nil)
		if err != nil {
			return nil, err
		}
		if _, err := io.CopyN(io.Discard, r, skip); err != nil {
			_ = r.Close()
			return nil, err
		}
		return r, nil
	}
	r, err := open(int64(len(received)))
	if err != nil {
		return 0, checked{}, err
	}
	c := ss.runChecks(qid, head, r)
	_ = r.Close()
	if c.reply != nil {
		return 0, c, nil
	}
	// Forged fields are removed from the header section when it is
	// within head (a header section over 64 KiB is stored as it came).
	hs := authcheck.HeaderSection(head)
	stripped := hs
	if len(hs) < len(head) {
		var n int
		if stripped, n = authcheck.StripOwn(hs, config.SiteAuthServID(ss.sp.cfg)); n > 0 {
			ss.log.Info("forged Authentication-Results removed", "qid", qid, "count", n)
		}
	} else {
		ss.log.Warn("header section longer than the first 64 KiB: forged Authentication-Results not looked for", "qid", qid)
		hs, stripped = nil, nil
	}
	if r, err = open(int64(len(received) + len(hs))); err != nil {
		return 0, checked{}, err
	}
	defer r.Close()
	size, err := b.Put(ctx, qid, io.MultiReader(bytes.NewReader(received), bytes.NewReader(c.header), bytes.NewReader(stripped), r))
	return size, c, err
}
