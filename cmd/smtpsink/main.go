// Command smtpsink is the receiving end of the compose end-to-end, scaling
// and chaos tests (ci/). It is an SMTP server that accepts every message,
// keeps nothing but counters, and reports them over HTTP:
//
//   - messages per EHLO name, so a test can see which delivery worker
//     (each says its own host name in EHLO) delivered how many;
//   - messages per Message-ID header, so duplicates can be counted.
//
// It is independent of Mailroot's code on purpose: the test checks Mailroot
// from the outside. GET /stats gives the summary, GET /ids every Message-ID
// with its count, POST /reset clears everything, POST /delay?d=50ms makes
// each DATA reply wait that long (a slow remote server).
//
// `smtpsink -healthcheck` probes a running sink (for container health).
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

func main() {
	listen := flag.String("listen", ":25", "SMTP listen address")
	httpAddr := flag.String("http", ":8025", "HTTP listen address for /stats, /ids, /reset, /delay")
	domain := flag.String("domain", "sink.test", "host name in the greeting")
	delay := flag.Duration("delay", 0, "wait this long before each DATA reply")
	health := flag.Bool("healthcheck", false, "probe the sink at -http and exit 0 if it answers")
	flag.Parse()
	if *health {
		os.Exit(healthcheck(*httpAddr))
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	s := newSink()
	s.setDelay(*delay)
	srv := smtp.NewServer(s)
	srv.Domain = *domain
	srv.MaxMessageBytes = 64 << 20
	srv.ReadTimeout = time.Minute
	srv.WriteTimeout = time.Minute
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Error("listen", "addr", *listen, "err", err)
		os.Exit(1)
	}
	go func() {
		hs := &http.Server{Addr: *httpAddr, Handler: s.handler(), ReadHeaderTimeout: 5 * time.Second}
		if err := hs.ListenAndServe(); err != nil {
			log.Error("http", "addr", *httpAddr, "err", err)
			os.Exit(1)
		}
	}()
	log.Info("smtpsink listening", "smtp", l.Addr().String(), "http", *httpAddr)
	if err := srv.Serve(l); err != nil {
		log.Error("serve", "err", err)
		os.Exit(1)
	}
}

// healthcheck asks the sink's HTTP side for /stats.
func healthcheck(addr string) int {
	if strings.HasPrefix(addr, ":") {
		addr = "127.0.0.1" + addr
	}
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + addr + "/stats")
	if err != nil {
		fmt.Println("unhealthy:", err)
		return 1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Println("unhealthy:", resp.Status)
		return 1
	}
	fmt.Println("healthy")
	return 0
}

// Stats is the summary served at /stats.
type Stats struct {
	// Messages is the number of accepted DATA transactions.
	Messages int `json:"messages"`
	// Unique is the number of distinct Message-IDs among them.
	Unique int `json:"unique"`
	// Duplicates is Messages minus Unique (messages without a Message-ID
	// count as unique).
	Duplicates int `json:"duplicates"`
	// ByHelo counts messages per EHLO/HELO name.
	ByHelo map[string]int `json:"by_helo"`
	// First and Last are when the first and the latest message arrived.
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
}

// sink is the go-smtp backend and the counters.
type sink struct {
	mu     sync.Mutex
	st     Stats
	ids    map[string]int
	noID   int
	delay  time.Duration
	byHelo map[string]int
}

func newSink() *sink {
	return &sink{ids: map[string]int{}, byHelo: map[string]int{}}
}

func (s *sink) setDelay(d time.Duration) {
	s.mu.Lock()
	s.delay = d
	s.mu.Unlock()
}

func (s *sink) record(helo, msgID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now().UTC()
	if s.st.Messages == 0 {
		s.st.First = now
	}
	s.st.Last = now
	s.st.Messages++
	s.byHelo[helo]++
	if msgID == "" {
		s.noID++
	} else {
		s.ids[msgID]++
	}
}

func (s *sink) stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	st.Unique = len(s.ids) + s.noID
	st.Duplicates = st.Messages - st.Unique
	st.ByHelo = make(map[string]int, len(s.byHelo))
	for k, v := range s.byHelo {
		st.ByHelo[k] = v
	}
	return st
}

func (s *sink) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, s.stats())
	})
	mux.HandleFunc("GET /ids", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		ids := make(map[string]int, len(s.ids))
		for k, v := range s.ids {
			ids[k] = v
		}
		s.mu.Unlock()
		writeJSON(w, ids)
	})
	mux.HandleFunc("POST /reset", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		s.st, s.ids, s.noID, s.byHelo = Stats{}, map[string]int{}, 0, map[string]int{}
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /delay", func(w http.ResponseWriter, r *http.Request) {
		d, err := time.ParseDuration(r.URL.Query().Get("d"))
		if err != nil || d < 0 {
			http.Error(w, "d must be a duration like 50ms", http.StatusBadRequest)
			return
		}
		s.setDelay(d)
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// NewSession starts an SMTP session; the EHLO name is read at DATA time.
func (s *sink) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &session{s: s, c: c}, nil
}

type session struct {
	s *sink
	c *smtp.Conn
}

func (ss *session) Mail(string, *smtp.MailOptions) error { return nil }
func (ss *session) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (ss *session) Reset()                               {}
func (ss *session) Logout() error                        { return nil }

// Data reads the message, notes its Message-ID and the client's EHLO name,
// and accepts it after the configured delay.
func (ss *session) Data(r io.Reader) error {
	id, err := messageID(r)
	if err != nil {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "read error"}
	}
	ss.s.mu.Lock()
	d := ss.s.delay
	ss.s.mu.Unlock()
	if d > 0 {
		time.Sleep(d)
	}
	ss.s.record(ss.c.Hostname(), id)
	return nil
}

// messageID reads a message to the end and returns its Message-ID header
// (empty when there is none or the header is malformed).
func messageID(r io.Reader) (string, error) {
	br := bufio.NewReader(r)
	h, herr := textproto.NewReader(br).ReadMIMEHeader()
	if _, err := io.Copy(io.Discard, br); err != nil {
		return "", err
	}
	if herr != nil {
		return "", nil
	}
	return strings.TrimSpace(h.Get("Message-Id")), nil
}
