package ingress

import (
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/mailroot/mailroot/internal/w3c"
)

// The W3C transaction log of a site (log_dir; internal/w3c): one line per
// command that reaches session.handle, written when the command has its
// reply. A BDAT transfer is one line, for its first BDAT command, with the
// bytes of every chunk and the final reply; lines that readCommand
// answers itself (too long, bare CR) have none. AUTH lines carry the
// mechanism alone, DATA and BDAT lines the queue id of the accepted
// message, never its content.

// txState is what a session keeps for its transaction log lines (and the
// accept latency).
type txState struct {
	code    int   // of the last reply buffered
	replied int64 // reply bytes buffered so far
	content int64 // message bytes of the last DATA or BDAT
	qid     string
	ended   time.Time // end of the last message's data

	// The addresses of the connection as logged, made once.
	addrsSet           bool
	clientIP, serverIP string
	serverPort         int
}

// replied notes a reply of n bytes with code.
func (t *txState) reply(code, n int) {
	t.code = code
	t.replied += int64(n)
}

// logCommand writes the line of the command verb arg (a line of n bytes
// without its CRLF) started at start, when replied bytes of replies had
// been buffered before it. It is deferred by handle.
func (ss *session) logCommand(verb, arg string, n int, start time.Time, replied int64) {
	tx := &ss.tx
	if !tx.addrsSet {
		tx.addrsSet = true
		if ss.ip.IsValid() {
			tx.clientIP = ss.ip.String()
		}
		if a, ok := ss.raw.LocalAddr().(*net.TCPAddr); ok {
			tx.serverIP, tx.serverPort = a.IP.String(), a.Port
		}
	}
	e := w3c.Entry{
		ClientIP: tx.clientIP, ServerIP: tx.serverIP, ServerPort: tx.serverPort,
		Username: ss.helo, Method: verb, Query: arg, Status: tx.code,
		BytesSent: tx.replied - replied, BytesReceived: int64(n + 2), TimeTaken: time.Since(start), Version: "SMTP",
	}
	switch verb {
	case "AUTH":
		e.Query, _, _ = strings.Cut(arg, " ") // the mechanism; never a response
	case "DATA", "BDAT":
		e.BytesReceived += tx.content
		if tx.qid != "" {
			e.Query = tx.qid
		}
	}
	tx.content, tx.qid = 0, ""
	ss.site.txlog.Log(e)
}

// logConnect writes the line of a connection refused before any command:
// method CONNECT, the reply's code as sc-status and the refusal's reason
// (connection_limit, paused, connect_deny, dnsbl, ...) as cs-uri-query,
// so that the log shows every connection the site turned away, not only
// the sessions that sent commands.
func (st *site) logConnect(c net.Conn, ip netip.Addr, status int, reason string, sent int, took time.Duration) {
	if st.txlog == nil {
		return
	}
	e := w3c.Entry{Method: "CONNECT", Query: reason, Status: status, BytesSent: int64(sent), TimeTaken: took, Version: "SMTP"}
	if ip.IsValid() {
		e.ClientIP = ip.String()
	}
	if a, ok := c.LocalAddr().(*net.TCPAddr); ok {
		e.ServerIP, e.ServerPort = a.IP.String(), a.Port
	}
	st.txlog.Log(e)
}

// openTxLogs opens the transaction log of every site that has log_dir.
// One that cannot be opened is said and left off: it never stops mail.
func (s *Service) openTxLogs() {
	for _, st := range s.sites {
		dir := s.conf().SiteLogDir(st.cfg)
		if dir == "" {
			continue
		}
		w, err := w3c.Open(w3c.Options{Dir: dir, Site: st.cfg.Name, Computer: st.cfg.Hostname, Log: s.log, Now: s.Now})
		if err != nil {
			s.log.Error("transaction log not opened, the site runs without it", "site", st.cfg.Name, "dir", dir, "err", err)
			continue
		}
		st.txlog = w
		s.log.Info("transaction log", "site", st.cfg.Name, "dir", dir)
	}
}

// closeTxLogs flushes and closes the transaction logs, once every session
// is over.
func (s *Service) closeTxLogs() {
	for _, st := range s.sites {
		if st.txlog != nil {
			_ = st.txlog.Close()
			st.txlog = nil
		}
	}
}
