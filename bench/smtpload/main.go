// Command smtpload is a small SMTP load generator for the benchmarks in
// bench/: S sessions send N messages of a given size to one server, with
// STARTTLS or implicit TLS and AUTH PLAIN when asked (Postfix's smtp-source
// does not do AUTH). It prints the accepted messages per second: the time
// until every message got its 250, which from Mailroot means stored and
// fsynced in JetStream. With -latency it also records, for every message,
// the time from sending the end-of-DATA "." to receiving the 250 and prints
// the p50 and p99 of it. With -rate it offers a fixed load (msgs/s over
// all sessions) instead of sending as fast as the server answers, so
// that two servers' latencies can be compared at the same load. It talks
// only to the address it is given.
//
//	go run ./bench/smtpload -addr 127.0.0.1:2587 -starttls -user u -password p -n 5000 -sessions 20
//	go run ./bench/smtpload -addr 127.0.0.1:2525 -n 5000 -sessions 20 -latency
//	go run ./bench/smtpload -addr 127.0.0.1:2525 -n 3000 -sessions 20 -latency -rate 300
package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:2587", "server host:port")
	n := flag.Int("n", 5000, "messages in total")
	sessions := flag.Int("sessions", 20, "concurrent SMTP sessions")
	perSession := flag.Int("per-session", 0, "messages per session before reconnecting (0: one session per worker)")
	size := flag.Int("size", 4096, "message size in bytes")
	startTLS := flag.Bool("starttls", false, "use STARTTLS")
	implicit := flag.Bool("tls", false, "implicit TLS (port 465)")
	user := flag.String("user", "", "AUTH PLAIN user (empty: no AUTH)")
	password := flag.String("password", "", "AUTH PLAIN password")
	from := flag.String("from", "", "envelope sender (default: the user, or load@bench.test)")
	to := flag.String("to", "rcpt@remote.test", "recipient")
	latency := flag.Bool("latency", false, `record each message's time from the end-of-DATA "." to the 250 and print p50/p99`)
	rate := flag.Float64("rate", 0, "offered load in msgs/s over all sessions: message k is started no sooner than k/rate after the start (0: as fast as the server answers)")
	tenths := flag.Bool("tenths", false, "with -latency, also print p50/p99 of each tenth of the run, in the order the replies came (a warm-up shows in the first)")
	flag.Parse()
	if *from == "" {
		*from = "load@bench.test"
		if strings.Contains(*user, "@") {
			*from = *user
		}
	}
	body := message(*size, *from, *to)
	var sent, failed atomic.Int64
	var firstErr atomic.Value
	var next atomic.Int64
	var lat *latencies
	if *latency {
		lat = &latencies{d: make([]time.Duration, 0, *n)}
	}
	t0 := time.Now()
	var pace func(k int64)
	if *rate > 0 {
		// A schedule, not a per-session delay: the offered load stays
		// rate msgs/s however long each reply takes, as long as the
		// server keeps up (a session that is behind starts at once).
		pace = func(k int64) {
			time.Sleep(time.Until(t0.Add(time.Duration(float64(k) / *rate * float64(time.Second)))))
		}
	}
	var wg sync.WaitGroup
	for range *sessions {
		wg.Go(func() {
			for next.Load() < int64(*n) {
				if err := session(*addr, *startTLS, *implicit, *user, *password, *from, *to, body, *n, *perSession, &next, &sent, lat, pace); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
	el := time.Since(t0)
	mode := "plain"
	switch {
	case *implicit:
		mode = "implicit TLS"
	case *startTLS:
		mode = "STARTTLS"
	}
	if *user != "" {
		mode += " + AUTH"
	}
	fmt.Printf("%d msgs of %d bytes, %d sessions, %s: %.1fs, accepted %.0f msgs/s", sent.Load(), *size, *sessions, mode, el.Seconds(), float64(sent.Load())/el.Seconds())
	if f := failed.Load(); f > 0 {
		fmt.Printf(" (%d failed sessions, first: %v)", f, firstErr.Load())
	}
	fmt.Println()
	if lat != nil {
		if *tenths {
			lat.printTenths()
		}
		lat.print()
	}
	if sent.Load() < int64(*n) {
		os.Exit(1)
	}
}

// latencies collects the end-of-DATA to 250 times of all sessions.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

// print writes one line with the nearest-rank p50, p99 and the maximum.
func (l *latencies) print() {
	if len(l.d) == 0 {
		fmt.Println("latency end-of-DATA to 250: no messages")
		return
	}
	p50, p99, top := ranks(l.d)
	fmt.Printf("latency end-of-DATA to 250 over %d msgs: p50 %.3f ms, p99 %.3f ms, max %.3f ms\n",
		len(l.d), ms(p50), ms(p99), ms(top))
}

// printTenths writes p50/p99/max of each tenth of the replies, in the
// order they came.
func (l *latencies) printTenths() {
	n := len(l.d)
	for i := range 10 {
		part := slices.Clone(l.d[i*n/10 : (i+1)*n/10])
		if len(part) == 0 {
			continue
		}
		p50, p99, top := ranks(part)
		fmt.Printf("tenth %d: %d msgs, p50 %.3f ms, p99 %.3f ms, max %.3f ms\n", i+1, len(part), ms(p50), ms(p99), ms(top))
	}
}

// ranks sorts d and returns its nearest-rank p50 and p99 and its maximum.
func ranks(d []time.Duration) (p50, p99, top time.Duration) {
	slices.Sort(d)
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(d))+0.999999) - 1
		return d[max(0, min(i, len(d)-1))]
	}
	return rank(0.50), rank(0.99), d[len(d)-1]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// session sends messages until the shared budget is used up or the
// per-session count is reached. With lat set it records each message's
// end-of-DATA to 250 time.
func session(addr string, startTLS, implicit bool, user, password, from, to string, body []byte, total, perSession int, next, sent *atomic.Int64, lat *latencies, pace func(k int64)) error {
	cfg := &tls.Config{InsecureSkipVerify: true} // a benchmark against our own self-signed certificate
	var c *smtp.Client
	var err error
	switch {
	case implicit:
		c, err = smtp.DialTLS(addr, cfg)
	case startTLS:
		c, err = smtp.DialStartTLS(addr, cfg)
	default:
		c, err = smtp.Dial(addr)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	if user != "" {
		if err := c.Auth(sasl.NewPlainClient("", user, password)); err != nil {
			return fmt.Errorf("auth: %w", err)
		}
	}
	for i := 0; perSession == 0 || i < perSession; i++ {
		k := next.Add(1)
		if k > int64(total) {
			break
		}
		if pace != nil {
			pace(k - 1)
		}
		if err := send(c, from, to, body, lat); err != nil {
			next.Add(-1)
			var se *smtp.SMTPError
			if errors.As(err, &se) {
				return fmt.Errorf("send: %w", err)
			}
			return err
		}
		sent.Add(1)
	}
	return c.Quit()
}

// send is Client.SendMail for one ASCII recipient, spelled out so that the
// closing of DATA can be timed: the body is written into the client's
// buffer first, and the clock starts just before Close, which flushes the
// buffer's tail together with the "." and waits for the reply.
func send(c *smtp.Client, from, to string, body []byte, lat *latencies) error {
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	if err := c.Rcpt(to, nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(body); err != nil {
		return err
	}
	t := time.Now()
	if err := w.Close(); err != nil {
		return err
	}
	if lat != nil {
		lat.add(time.Since(t))
	}
	return nil
}

func message(size int, from, to string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: smtpload\r\n\r\n", from, to)
	line := strings.Repeat("x", 76) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return []byte(b.String())
}
