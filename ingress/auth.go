package ingress

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/metrics"
	"github.com/mailroot/mailroot/internal/users"
)

// AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN against the users file.
// AUTH is offered only on TLS connections unless allow_insecure_auth is on.
// Failed attempts are counted per client address: each failure's reply is
// delayed by fail_delay times the recent failures (back-off), and after
// fail_limit failures within fail_window the address may not try AUTH for
// ban (421 4.7.0, connection closed). Logs name the user, never the
// password.

func (ss *session) authOffered() bool {
	_, isTLS := ss.tlsState()
	return ss.sp.cfg.Auth != config.AuthOff && (isTLS || ss.sp.cfg.AllowInsecureAuth)
}

// authCmd runs AUTH (RFC 4954): the SASL exchange of the mechanism, with
// go-sasl's servers.
func (ss *session) authCmd(arg string) {
	if ss.user != nil {
		ss.reply(503, "5.5.1", "Already authenticated")
		return
	}
	f := strings.Fields(arg)
	if len(f) == 0 || len(f) > 2 {
		ss.reply(501, "5.5.4", "Syntax: AUTH <mechanism> [initial-response]")
		return
	}
	srv, r := ss.auth(f[0])
	if r != nil {
		ss.replyWith(r)
		return
	}
	var resp []byte
	if len(f) == 2 {
		var ok bool
		if resp, ok = decodeSASL(f[1]); !ok {
			ss.reply(501, "5.5.2", "Invalid base64")
			return
		}
	}
	for {
		challenge, done, err := srv.Next(resp)
		if err != nil {
			var r *reply
			if !errors.As(err, &r) {
				r = errAuthFailed
			}
			ss.replyWith(r)
			return
		}
		if done {
			break
		}
		ss.reply(334, "", base64.StdEncoding.EncodeToString(challenge))
		ss.startRequest()
		line, tooLong, err := ss.readLine(ss.sp.cfg.MaxLineLength)
		if err != nil {
			_ = ss.readFailed(err)
			return
		}
		ss.trace("C: ***")
		text := strings.TrimRight(string(line), "\r\n")
		switch {
		case tooLong:
			ss.reply(500, "5.5.6", "Authentication exchange line too long")
			return
		case text == "*":
			ss.reply(501, "5.0.0", "Authentication cancelled")
			return
		}
		var ok bool
		if resp, ok = decodeSASL(text); !ok {
			ss.reply(501, "5.5.2", "Invalid base64")
			return
		}
	}
	ss.reply(235, "2.7.0", "Authentication successful")
}

// decodeSASL decodes a SASL response ("=" is an empty one).
func decodeSASL(s string) ([]byte, bool) {
	if s == "=" {
		return []byte{}, true
	}
	b, err := base64.StdEncoding.DecodeString(s)
	return b, err == nil
}

// auth checks that AUTH may run now (its sequence rule, in conn.go, has
// passed) and returns the mechanism's server.
func (ss *session) auth(mech string) (sasl.Server, *reply) {
	if !ss.authOffered() {
		return nil, rep(530, "5.7.0", "Must issue a STARTTLS command first")
	}
	if ss.s.limiter.Banned(ss.ip) {
		ss.s.log.Warn("AUTH refused: client banned after failed logins", "site", ss.sp.cfg.Name, "client", ss.ip.String())
		ss.site.m.Refused(metrics.RefusedAuthFailed)
		return nil, rep(421, "4.7.0", ss.sp.cfg.Hostname+" Too many failed authentications, try again later")
	}
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, username, password string) error {
			return ss.login(sasl.Plain, identity, username, password)
		}), nil
	case sasl.Login:
		return &loginServer{auth: func(username, password string) error {
			return ss.login(sasl.Login, "", username, password)
		}}, nil
	}
	return nil, rep(504, "5.5.4", "Unrecognized authentication type")
}

var errAuthFailed = rep(535, "5.7.8", "Authentication credentials invalid")

func (ss *session) login(mech, identity, username, password string) error {
	s := ss.s
	log := s.log.With("site", ss.sp.cfg.Name, "client", ss.ip.String(), "mech", mech, "user", sanitize(username))
	u, ok := s.users.Lookup(username)
	if !ok {
		// The same bcrypt work as for a wrong password: the time of the
		// answer must not tell whether the user exists.
		u = s.users.Decoy()
	}
	match := s.authOK.check(u, password)
	if ok && (identity == "" || identity == username) && match {
		ss.user = &u
		log.Info("authenticated")
		s.sessions.update(ss.id, func(i *sessionInfo) { i.User = u.Name })
		return nil
	}
	delay, banned := s.limiter.Fail(ss.ip)
	ss.site.m.Refused(metrics.RefusedAuthFailed)
	log.Warn("authentication failed", "known_user", ok, "banned", banned)
	if delay > 0 {
		time.Sleep(delay)
	}
	if banned {
		return rep(421, "4.7.0", ss.sp.cfg.Hostname+" Too many failed authentications, try again later")
	}
	return errAuthFailed
}

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login): "Username:", then "Password:".
type loginServer struct {
	state    int
	username string
	auth     func(username, password string) error
}

// Next implements sasl.Server.
func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch l.state {
	case 0:
		if response == nil {
			l.state = 1
			return []byte("Username:"), false, nil
		}
		l.username, l.state = string(response), 2
		return []byte("Password:"), false, nil
	case 1:
		l.username, l.state = string(response), 2
		return []byte("Password:"), false, nil
	case 2:
		l.state = 3
		return nil, true, l.auth(l.username, string(response))
	}
	return nil, true, errors.New("ingress: unexpected LOGIN response")
}

// authCache remembers successful password checks for a few minutes, so
// that a client opening many sessions costs one bcrypt comparison (about
// 50 ms at cost 10) rather than one per session. Keys are SHA-256 of
// user, hash and password; a changed password (new hash) misses.
type authCache struct {
	mu sync.Mutex
	m  map[[32]byte]time.Time

	// compares counts bcrypt comparisons (a test seam: a failed login
	// must cost one whether or not the user exists).
	compares atomic.Int64
}

const authCacheTTL = 5 * time.Minute

func newAuthCache() *authCache { return &authCache{m: map[[32]byte]time.Time{}} }

func (c *authCache) check(u users.User, password string) bool {
	key := sha256.Sum256([]byte(u.Name + "\x00" + u.Hash + "\x00" + password))
	now := time.Now()
	c.mu.Lock()
	t, ok := c.m[key]
	c.mu.Unlock()
	if ok && now.Sub(t) < authCacheTTL {
		return true
	}
	c.compares.Add(1)
	if !u.Check(password) {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) > 10000 {
		for k, t := range c.m {
			if now.Sub(t) >= authCacheTTL {
				delete(c.m, k)
			}
		}
	}
	c.m[key] = now
	return true
}
