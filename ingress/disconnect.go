package ingress

import (
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/mailroot/mailroot/internal/bus"
)

// HdrAdmin names who asks for an administrator's action over NATS (a
// disconnect request): the OS user of `mailroot sessions disconnect`, the
// console's login.
const HdrAdmin = "Mailroot-Admin"

// serveDisconnect answers the disconnect requests for this process's
// sessions (bus.SubjCtlDisconnectPrefix + node): the session named by the
// request's data is closed at once, whatever it was doing. Mail in its
// DATA got no 250, so its client sends it again: nothing accepted is
// lost. The returned function unsubscribes.
func (s *Service) serveDisconnect() (func(), error) {
	nc := s.js.Conn()
	sub, err := nc.Subscribe(bus.SubjCtlDisconnectPrefix+s.sessions.node, func(m *nats.Msg) {
		id := string(m.Data)
		admin := m.Header.Get(HdrAdmin)
		ss := s.session(id)
		if ss == nil {
			_ = m.Respond([]byte(fmt.Sprintf("no such session: %s on %s", id, s.sessions.node)))
			return
		}
		ss.log.Warn("session disconnected by an administrator", "admin", admin)
		ss.close()
		_ = m.Respond([]byte("closed"))
	})
	if err != nil {
		return nil, fmt.Errorf("ingress: subscribe %s: %w", bus.SubjCtlDisconnectPrefix+s.sessions.node, err)
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

// session is the live session with id, or nil.
func (s *Service) session(id string) *session {
	s.liveMu.Lock()
	defer s.liveMu.Unlock()
	for ss := range s.live {
		if ss.id == id {
			return ss
		}
	}
	return nil
}
