package delivery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/envelope"
	"github.com/mailroot/mailroot/internal/limits"
	"github.com/mailroot/mailroot/internal/resolver"
	"github.com/mailroot/mailroot/internal/smtpclient"
)

// maxConnects bounds the connections one delivery attempt makes (over all
// MX hosts and their addresses).
const maxConnects = 10

// result is the outcome of one delivery attempt.
type result struct {
	// errs has one entry per recipient of the envelope, in order: nil for a
	// recipient the remote accepted, else why it failed.
	errs []*Error
	// remote names the host that gave the answers, "name[ip]".
	remote string
	// tls describes the session's TLS, "" for plain text.
	tls string
	// policy is the TLS policy the attempt applied (Policy*), and
	// tlsFailure what a policy in testing mode would have refused ("":
	// nothing).
	policy, tlsFailure string
	// dsn is true when the remote advertised DSN (RFC 3461): it takes over
	// success notifications for the recipients it accepted.
	dsn bool
	// reply is the remote's answer to the end of DATA, e.g.
	// "250 2.0.0 OK queued as X".
	reply string
}

// all sets every recipient's result to e.
func all(n int, e *Error) result {
	r := result{errs: make([]*Error, n), remote: e.Remote}
	for i := range r.errs {
		r.errs[i] = e
	}
	return r
}

// bodyFunc opens the message body; it may be called once per connection.
type bodyFunc func(ctx context.Context) (io.ReadCloser, error)

// deliver makes one delivery attempt for env: resolve, then try the hosts
// in order until one gives definitive per-recipient answers.
func (s *Service) deliver(ctx context.Context, env *envelope.Envelope, domain string, body bodyFunc) result {
	n := len(env.Rcpts)
	targets, rerr := s.resolve(ctx, domain)
	if rerr != nil {
		return all(n, rerr)
	}
	if herr := s.waitTurn(ctx, env, domain); herr != nil {
		return all(n, herr)
	}
	env = s.masquerade(env) // before signing, which keys on From:
	env, body = s.sign(ctx, env, body)
	var lastTemp, lastPerm *Error
	note := func(e *Error) {
		if e.Permanent {
			lastPerm = e
		} else {
			lastTemp = e
		}
	}
	var loop *Error
	connects := 0
	pol, perr := s.policyFor(ctx, env, domain, targets)
	if perr != nil {
		return all(n, perr)
	}
targets:
	for _, t := range targets {
		if connects >= maxConnects || ctx.Err() != nil {
			break
		}
		var fail string
		pol := pol.forHost(t) // DANE decides per MX host
		if why := pol.hostAllowed(t, &fail); why != "" {
			s.log.Info("MX host not used: TLS policy", "qid", env.QueueID, "mx", t.host, "tls_policy", pol.kind, "why", why)
			s.countRefused(pol, t, why)
			note(tempErr("4.7.5", "", nil, "%s %s not used: %s", t.kind, t.host, why))
			continue
		}
		addrs := t.addrs
		if addrs == nil {
			var err error
			addrs, err = s.dns.Addrs(ctx, t.host)
			switch {
			case resolver.IsNegative(err):
				note(tempErr("4.4.4", "", err, "mail host %s has no address", t.host))
				continue
			case err != nil:
				note(tempErr("4.4.3", "", err, "dns: %v", err))
				continue
			}
		}
		for _, ip := range orderAddrs(addrs, s.conf().Delivery.AddressPreference) {
			if why := s.self.is(ctx, ip, t.port); why != "" {
				// This host and every less preferred one would be
				// ourselves again (RFC 5321 §5.1).
				loop = loopErr(domain, t, ip, why)
				break targets
			}
			if connects >= maxConnects || ctx.Err() != nil {
				break
			}
			connects++
			res, herr := s.tryHost(ctx, t, ip, env, body, false, pol)
			s.countTry(pol, t, ip, res, herr, fail)
			if herr == nil {
				res.policy = pol.kind
				if fail != "" {
					res.tlsFailure = joinFailure(fail, res.tlsFailure)
				}
				return res
			}
			s.log.Debug("host failed", "qid", env.QueueID, "remote", herr.Remote, "err", herr.Error())
			note(herr)
		}
	}
	switch {
	case ctx.Err() != nil:
		return all(n, tempErr("4.4.2", "", ctx.Err(), "delivery interrupted: %v", ctx.Err()))
	case lastTemp != nil:
		return all(n, lastTemp)
	case lastPerm != nil:
		return all(n, lastPerm)
	case loop != nil:
		return all(n, loop)
	default:
		return all(n, tempErr("4.4.1", "", nil, "no mail host could be reached for %s", domain))
	}
}

// loopErr is the permanent failure of mail whose destination is this
// server: it names the domain, the host and the address that points back.
func loopErr(domain string, t target, ip netip.Addr, why string) *Error {
	host := t.kind + " " + t.host
	if t.kind == "address literal" {
		return permErr("5.4.6", "", "mail for %s loops back to myself: the address literal %s is %s", domain, domain, why)
	}
	return permErr("5.4.6", "", "mail for %s loops back to myself: %s has address %s, %s", domain, host, ip, why)
}

// tryHost runs one SMTP transaction with t at ip. A nil *Error means the
// result holds definitive per-recipient answers; otherwise the host failed
// as a whole (connection, greeting, EHLO, 4xx to MAIL, ...) and the next
// one should be tried.
//
// pol (policyFor) says how the host's TLS must be. Where it enforces
// (require_tls, REQUIRETLS, MTA-STS enforce, DANE) a host that does not
// offer STARTTLS (4.7.10), whose handshake fails, or whose certificate
// cannot be verified (4.7.5: against the system's roots or
// delivery.tls_ca_file for the MX host name, or as pol.verify says) is a
// temporary failure, as Postfix's "verify" security level: the mail waits
// rather than travel in clear or to an impostor. Otherwise TLS is
// opportunistic: a certificate that fails verification still encrypts the
// session, and the result records it ("unverified"); in MTA-STS testing
// mode the result also says what enforce would have refused.
//
// The transaction goes over an idle connection to the same address, host
// name, EHLO name and certificate check when the pool has one (a TLS one
// when TLS is required); the caller has checked that ip is not ourselves.
// A cached connection the remote closed meanwhile costs the message
// nothing: it is retried at once on a fresh one.
func (s *Service) tryHost(ctx context.Context, t target, ip netip.Addr, env *envelope.Envelope, body bodyFunc, plain bool, pol *tlsPolicy) (result, *Error) {
	remote := remoteName(t.host, ip)
	addr := net.JoinHostPort(ip.String(), strconv.Itoa(t.port))
	verify := pol.mustVerify(t)
	var auth *smtpclient.Auth
	if t.user != "" {
		pw, err := s.password(t.passwordFile)
		if err != nil {
			return result{}, tempErr("4.7.0", remote, err, "smart host login as %s: %v", t.user, err)
		}
		auth = &smtpclient.Auth{User: t.user, Password: pw}
	}
	opts := smtpclient.Options{
		Hostname:       s.conf().Hostname,
		ConnectTimeout: s.conf().Delivery.ConnectTimeout.D(),
		CommandTimeout: s.conf().Delivery.CommandTimeout.D(),
		Plain:          plain,
		Roots:          s.roots,
		Auth:           auth,
		AuthInsecure:   s.conf().Delivery.SmartHostInsecure,
	}
	pol.hostOpts(t, &opts)
	dest := smtpclient.Dest{Addr: addr, Host: t.host, Hostname: s.conf().Hostname, User: t.user, Verifier: opts.Verifier}
	// reuse sends over a cached connection; false: it was stale, connect anew.
	reuse := func(c *smtpclient.Client) (result, *Error, bool) {
		if verify && !c.Verified() {
			s.pool.Put(c) // still good for opportunistic mail
			return result{}, pol.unverified(c), true
		}
		s.m.ConnReused.Inc()
		res, herr := s.send(ctx, c, env, body)
		if herr == nil || !errors.Is(herr, smtpclient.ErrStale) {
			return s.noteTLS(res, pol, t), herr, true
		}
		s.log.Debug("cached connection closed by the remote, connecting anew", "qid", env.QueueID, "remote", remote, "err", herr.Error())
		return result{}, nil, false
	}
	if !plain {
		if c := s.pool.Get(ctx, dest, verify); c != nil {
			if res, herr, done := reuse(c); done {
				return res, herr
			}
		}
	}
	dial := s.Dial
	var slot *limits.Slot
	if n := s.connLimit(env.Domain); n > 0 && s.limits != nil {
		// Wait for a slot; a connection of this worker's pool that comes
		// free meanwhile serves instead.
		var pooled *smtpclient.Client
		var err error
		slot, err = s.limits.Conn(ctx, bus.Token(env.Domain), n, func() bool {
			if !plain {
				pooled = s.pool.Get(ctx, dest, verify)
			}
			return pooled != nil
		})
		if err != nil {
			return result{}, tempErr("4.4.5", remote, err, "waiting for one of the %d connections to %s: %v", n, env.Domain, err)
		}
		if pooled != nil {
			if res, herr, done := reuse(pooled); done {
				return res, herr
			}
			return s.tryHost(ctx, t, ip, env, body, plain, pol)
		}
		dial = slotDial(s.Dial, slot)
	}
	implicit := t.kind == "smart host" && t.port == s.ImplicitTLSPort
	opts.ImplicitTLS = implicit
	c, herr := smtpclient.Dial(ctx, dial, addr, t.host, remote, opts)
	if herr != nil {
		slot.Release() // whether or not a connection was made (once)
	}
	if auth != nil {
		s.noteLogin(remote, herr)
	}
	// A failed STARTTLS falls back to plain text only for opportunistic
	// mail: not for a login, and not where TLS is the port's protocol.
	if herr != nil && errors.Is(herr.Err, smtpclient.ErrTLSFailed) && !verify && auth == nil && !implicit {
		s.log.Info("STARTTLS failed, retrying in plain text", "qid", env.QueueID, "remote", remote, "err", herr.Err)
		why := herr.Message
		res, herr := s.tryHost(ctx, t, ip, env, body, true, pol)
		if herr == nil && pol.report && pol.applies(t) {
			res.tlsFailure = remote + " " + why // not "did not offer STARTTLS"
		}
		return res, herr
	}
	if herr != nil {
		return result{}, herr
	}
	s.m.ConnOpened.Inc()
	if verify && c.TLS() == "" {
		s.pool.Put(c) // plain text: kept only for mail that does not need TLS
		return result{}, pol.noTLS(remote)
	}
	if verify && !c.Verified() {
		s.pool.Put(c)
		return result{}, pol.unverified(c)
	}
	res, herr := s.send(ctx, c, env, body)
	return s.noteTLS(res, pol, t), herr
}

// noteTLS records in res what a policy in testing mode would have refused
// of the session that delivered: no TLS, or a certificate that did not
// verify.
func (s *Service) noteTLS(res result, pol *tlsPolicy, t target) result {
	if !pol.report || !pol.applies(t) || res.remote == "" {
		return res
	}
	switch {
	case res.tls == "":
		res.tlsFailure = joinFailure(res.tlsFailure, res.remote+" did not offer STARTTLS")
	case !strings.HasSuffix(res.tls, " verified"):
		_, why, _ := strings.Cut(res.tls, " unverified: ")
		res.tlsFailure = joinFailure(res.tlsFailure, "the certificate of "+res.remote+" could not be verified: "+why)
	}
	return res
}

// joinFailure joins two failure descriptions, either of which may be "".
func joinFailure(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "; " + b
}

// password reads a smart host's password: the first line of file, or
// MAILROOT_SMART_HOST_PASSWORD when there is no file. The file is read at
// each connection, so a new password needs no restart.
func (s *Service) password(file string) (string, error) {
	if file == "" {
		if pw := os.Getenv(config.SmartHostPasswordEnv); pw != "" {
			return pw, nil
		}
		return "", fmt.Errorf("no password: neither smart_host_password_file nor %s", config.SmartHostPasswordEnv)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	pw, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimSuffix(pw, "\r"), nil
}

// noteLogin logs a smart host's refused login once per burst: the first
// failure, then again only after loginLogEvery or once a login worked,
// rather than once per message that waits because of it.
func (s *Service) noteLogin(remote string, herr *Error) {
	s.loginMu.Lock()
	defer s.loginMu.Unlock()
	if herr == nil || !errors.Is(herr, smtpclient.ErrAuth) {
		delete(s.loginFailed, remote)
		return
	}
	now := s.Now()
	if last, ok := s.loginFailed[remote]; ok && now.Sub(last) < loginLogEvery {
		return
	}
	if s.loginFailed == nil {
		s.loginFailed = map[string]time.Time{}
	}
	s.loginFailed[remote] = now
	s.log.Error("smart host login failed: mail to it waits", "remote", remote, "err", herr.Error())
}

// loginLogEvery is how often a smart host login that keeps failing is
// logged again.
const loginLogEvery = 10 * time.Minute

// sign puts the DKIM signatures of the keys of the message's From:
// domain (internal/dkim) on top of the body for this attempt: made once,
// whatever the number of hosts tried, after every header Mailroot adds,
// and never stored, so a retry is signed afresh instead of twice. env's
// copy declares the size with them (SIZE=). A message that cannot be
// signed goes out unsigned, and the log says why.
func (s *Service) sign(ctx context.Context, env *envelope.Envelope, body bodyFunc) (*envelope.Envelope, bodyFunc) {
	if s.dkim == nil || !s.dkim.HasKeys() {
		return env, body
	}
	rc, err := body(ctx)
	if err != nil {
		return env, body // the transaction reports the body's failure
	}
	sigs, from, err := s.dkim.Sign(rc)
	_ = rc.Close()
	if err != nil {
		s.log.Warn("message not DKIM-signed", "qid", env.QueueID, "from_domain", from, "err", err)
	}
	if sigs == "" {
		return env, body
	}
	e := *env
	e.BodySize += int64(len(sigs))
	return &e, func(ctx context.Context) (io.ReadCloser, error) {
		rc, err := body(ctx)
		if err != nil {
			return nil, err
		}
		return struct {
			io.Reader
			io.Closer
		}{io.MultiReader(strings.NewReader(sigs), rc), rc}, nil
	}
}

// send runs the transaction on c, then gives c back to the pool, which
// keeps it for the next message or ends it.
func (s *Service) send(ctx context.Context, c *smtpclient.Client, env *envelope.Envelope, body bodyFunc) (result, *Error) {
	res, herr := c.Send(ctx, env, func(ctx context.Context) (io.ReadCloser, *Error) {
		rc, err := body(ctx)
		switch {
		case errors.Is(err, jetstream.ErrObjectNotFound):
			return nil, permErr("5.3.0", "", "message body lost: %v", err)
		case err != nil:
			return nil, tempErr("4.3.0", "", err, "message body unavailable: %v", err)
		}
		return rc, nil
	})
	s.pool.Put(c)
	if herr != nil {
		return result{}, herr
	}
	return result{errs: res.Errs, remote: c.Remote(), tls: c.TLS(), dsn: res.DSN, reply: res.Reply}, nil
}

// describe renders the recipients for logs.
func describe(rs []envelope.Rcpt) string {
	a := make([]string, len(rs))
	for i, r := range rs {
		a[i] = r.Addr
	}
	return strings.Join(a, ",")
}
