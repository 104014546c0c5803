package ingress

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
)

// ETRN (RFC 1985) asks for the mail queued for a domain to be delivered
// now. Mailroot accepts it for domains configured as remote [[domain]]
// blocks (held ones above all) from clients in the site's etrn_networks
// (anyone when empty) or authenticated users allowed to dequeue the domain.
// "ETRN @example.org" also covers its subdomains. The release itself is
// done by a delivery process's release worker (delivery/release), asked
// over NATS; the reply counts what was pending:
//
//	251 2.0.0 OK, no messages waiting for node <x>
//	253 2.0.0 OK, <n> pending messages for node <x> started
//	458 4.3.0 Unable to queue messages for node <x>   (no release worker answered)
//	459 4.7.1 Node <x> not allowed: <reason>
//
// 250 and 252 (started, count unknown) are not needed: the count is always
// known.

// releaseTimeout bounds the wait for a release worker's answer.
const releaseTimeout = 10 * time.Second

func (ss *session) etrn(arg string) {
	cfg := ss.scfg
	switch {
	case arg == "" || strings.ContainsAny(arg, " \t"):
		ss.reply(501, "5.5.4", "Syntax: ETRN [@]<domain>")
		return
	case strings.HasPrefix(arg, "#"):
		ss.reply(459, "4.7.1", "Node "+sanitize(arg)+" not allowed: queue names are not supported")
		return
	}
	node := sanitize(arg)
	name, sub := strings.CutPrefix(arg, "@")
	name = envelope.NormalizeDomain(name)
	if name == "" || strings.ContainsAny(name, "@[]") {
		ss.reply(501, "5.5.4", "Syntax: ETRN [@]<domain>")
		return
	}
	var domains []string
	for _, d := range cfg.Domains {
		if d.Type == config.DomainRemote && (d.Name == name || (sub && strings.HasSuffix(d.Name, "."+name))) {
			domains = append(domains, d.Name)
		}
	}
	if len(domains) == 0 {
		ss.log.Info("ETRN refused: not a configured remote domain", "node", node)
		ss.reply(459, "4.7.1", "Node "+node+" not allowed: not a domain queued here")
		return
	}
	if !ss.mayETRN(domains) {
		ss.log.Info("ETRN refused: client not allowed", "node", node)
		ss.reply(459, "4.7.1", "Node "+node+" not allowed: client not permitted")
		return
	}
	req, _ := json.Marshal(bus.ReleaseRequest{Domains: domains, Client: "ETRN from " + ss.ip.String()})
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	var rep bus.ReleaseReply
	err := errors.New("no NATS connection")
	if nc := ss.s.js.Conn(); nc != nil {
		var m *nats.Msg
		if m, err = nc.RequestWithContext(ctx, bus.SubjCtlRelease, req); err == nil {
			err = json.Unmarshal(m.Data, &rep)
		}
	}
	if err == nil && rep.Error != "" {
		err = errors.New(rep.Error)
	}
	if err != nil {
		ss.log.Error("ETRN release failed", "node", node, "err", err)
		ss.reply(458, "4.3.0", "Unable to queue messages for node "+node)
		return
	}
	ss.log.Info("ETRN release started", "node", node, "domains", domains, "pending", rep.Pending)
	if rep.Pending == 0 {
		ss.reply(251, "2.0.0", "OK, no messages waiting for node "+node)
		return
	}
	ss.reply(253, "2.0.0", fmt.Sprintf("OK, %d pending messages for node %s started", rep.Pending, node))
}

// mayETRN: etrn_networks (anyone when empty), or a user allowed to dequeue
// every one of the domains.
func (ss *session) mayETRN(domains []string) bool {
	if len(ss.sp.etrnNets) == 0 || containsIP(ss.sp.etrnNets, ss.ip) {
		return true
	}
	if ss.user == nil {
		return false
	}
	for _, d := range domains {
		if !ss.user.MayDequeue(d) {
			return false
		}
	}
	return true
}
