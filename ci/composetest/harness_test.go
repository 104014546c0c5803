//go:build integration

package composetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// env returns a required variable set by the ci/ scripts.
func env(t testing.TB, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Skipf("%s not set: run this through ci/compose-e2e.sh or ci/chaos.sh", name)
	}
	return v
}

// compose runs the Compose command of the scripts with args.
func compose(t testing.TB, args ...string) string {
	t.Helper()
	dc := strings.Fields(env(t, "MAILROOT_DC"))
	cmd := exec.Command(dc[0], append(dc[1:], args...)...)
	cmd.Dir = "../.."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", strings.Join(dc, " "), strings.Join(args, " "), err, out)
	}
	return string(out)
}

// docker runs the docker CLI.
func docker(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// container is what the tests need to know about one container.
type container struct {
	ID, Name, Service, Hostname string
	StartedAt                   string
	Health                      string
}

// containers lists the project's containers, of one service or all ("").
// Compose names differ between 1.29 and v2, so selection is by label.
func containers(t testing.TB, service string) []container {
	t.Helper()
	args := []string{"ps", "-aq", "--filter", "label=com.docker.compose.project=" + env(t, "COMPOSE_PROJECT_NAME")}
	if service != "" {
		args = append(args, "--filter", "label=com.docker.compose.service="+service)
	}
	ids := strings.Fields(docker(t, args...))
	if len(ids) == 0 {
		return nil
	}
	out := docker(t, append([]string{"inspect", "--format",
		`{{.Id}}|{{.Name}}|{{index .Config.Labels "com.docker.compose.service"}}|{{.Config.Hostname}}|{{.State.StartedAt}}|{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}`}, ids...)...)
	var cs []container
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(line, "|")
		if len(f) != 6 {
			t.Fatalf("docker inspect: %q", line)
		}
		cs = append(cs, container{ID: f[0], Name: strings.TrimPrefix(f[1], "/"), Service: f[2], Hostname: f[3], StartedAt: f[4], Health: f[5]})
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].Name < cs[j].Name })
	return cs
}

// waitHealthy waits until every container of the project is healthy.
func waitHealthy(t testing.TB, timeout time.Duration) {
	t.Helper()
	var last []container
	deadline := time.Now().Add(timeout)
	for {
		last = containers(t, "")
		ok := len(last) > 0
		for _, c := range last {
			ok = ok && c.Health == "healthy"
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("containers not healthy after %v: %+v", timeout, last)
		}
		time.Sleep(time.Second)
	}
}

// scaleDelivery sets the number of delivery containers without touching
// any other container.
func scaleDelivery(t testing.TB, n int) {
	t.Helper()
	compose(t, "up", "-d", "--no-build", "--no-recreate", "--no-deps", "--scale", fmt.Sprintf("delivery=%d", n), "delivery")
}

// sinkStats is cmd/smtpsink's /stats.
type sinkStats struct {
	Messages   int            `json:"messages"`
	Unique     int            `json:"unique"`
	Duplicates int            `json:"duplicates"`
	ByHelo     map[string]int `json:"by_helo"`
	First      time.Time      `json:"first"`
	Last       time.Time      `json:"last"`
}

func sinkURL(t testing.TB, path string) string {
	return "http://127.0.0.1:" + env(t, "SINK_HTTP_PORT") + path
}

func sinkGet(t testing.TB, path string, v any) {
	t.Helper()
	resp, err := http.Get(sinkURL(t, path))
	if err != nil {
		t.Fatalf("sink %s: %v", path, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("sink %s: %v", path, err)
	}
}

func sinkPost(t testing.TB, path string) {
	t.Helper()
	resp, err := http.Post(sinkURL(t, path), "", nil)
	if err != nil {
		t.Fatalf("sink %s: %v", path, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("sink %s: %s", path, resp.Status)
	}
}

func stats(t testing.TB) sinkStats {
	t.Helper()
	var s sinkStats
	sinkGet(t, "/stats", &s)
	return s
}

func sinkIDs(t testing.TB) map[string]int {
	t.Helper()
	ids := map[string]int{}
	sinkGet(t, "/ids", &ids)
	return ids
}

// sendResult is what a sender saw.
type sendResult struct {
	// Accepted are the Message-IDs that got a 250 after DATA.
	Accepted []string
	// Ambiguous are Message-IDs of which an earlier attempt failed after
	// the data had been sent (no reply, or 4xx): Mailroot may have stored
	// that attempt, so a second copy at the sink is the sender's retry,
	// not a duplicate made by Mailroot.
	Ambiguous map[string]bool
	// Retries counts failed attempts (any stage).
	Retries int
	// Elapsed is the time from the first connection to the last 250.
	Elapsed time.Duration
}

// sendOptions say how much to send and how fast.
type sendOptions struct {
	N       int     // messages
	Conns   int     // parallel SMTP connections
	Rate    float64 // messages per second over all connections; 0 = as fast as possible
	Prefix  string  // Message-ID prefix, unique per run
	Timeout time.Duration
	// Progress, when set, is incremented after each accepted message.
	Progress *atomic.Int64
}

// send delivers opts.N messages to ingress over SMTP as a well-behaved
// client would: a message that gets a 4xx or loses its connection is sent
// again until it is accepted or opts.Timeout passes.
func send(t testing.TB, opts sendOptions) sendResult {
	t.Helper()
	addr := "127.0.0.1:" + env(t, "MAILROOT_SMTP_PORT")
	ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout)
	defer cancel()
	jobs := make(chan int)
	var mu sync.Mutex
	res := sendResult{Ambiguous: map[string]bool{}}
	var failed atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < max(opts.Conns, 1); w++ {
		wg.Go(func() {
			var c *smtp.Client
			defer func() {
				if c != nil {
					_ = c.Quit()
				}
			}()
			for i := range jobs {
				id := fmt.Sprintf("<%s.%d@composetest>", opts.Prefix, i)
				for attempt := 0; ; attempt++ {
					if ctx.Err() != nil {
						failed.Add(1)
						break
					}
					if attempt > 0 {
						mu.Lock()
						res.Retries++
						mu.Unlock()
						time.Sleep(min(time.Duration(attempt)*200*time.Millisecond, 2*time.Second))
					}
					if c == nil {
						var err error
						if c, err = smtp.Dial(addr); err != nil {
							c = nil
							continue
						}
						if err := c.Hello("composetest.local"); err != nil {
							c.Close()
							c = nil
							continue
						}
					}
					dataSent, err := sendOne(c, id)
					if err == nil {
						mu.Lock()
						res.Accepted = append(res.Accepted, id)
						res.Elapsed = time.Since(start)
						mu.Unlock()
						if opts.Progress != nil {
							opts.Progress.Add(1)
						}
						break
					}
					if dataSent {
						mu.Lock()
						res.Ambiguous[id] = true
						mu.Unlock()
					}
					var se *smtp.SMTPError
					if errors.As(err, &se) && se.Code >= 500 {
						t.Errorf("%s: permanent failure: %v", id, err)
						failed.Add(1)
						break
					}
					if !errors.As(err, &se) || c.Reset() != nil {
						c.Close() // the connection is in an unknown state
						c = nil
					}
				}
			}
		})
	}
	var tick <-chan time.Time
	if opts.Rate > 0 {
		tk := time.NewTicker(time.Duration(float64(time.Second) / opts.Rate))
		defer tk.Stop()
		tick = tk.C
	}
	for i := 0; i < opts.N; i++ {
		if tick != nil {
			<-tick
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d messages were never accepted (timeout %v)", n, opts.N, opts.Timeout)
	}
	return res
}

// sendOne sends one message on an open connection. dataSent reports
// whether the message data went out before the failure.
func sendOne(c *smtp.Client, id string) (dataSent bool, err error) {
	if err := c.Mail("sender@localhost", nil); err != nil {
		return false, err
	}
	if err := c.Rcpt("rcpt@example.com", nil); err != nil {
		return false, err
	}
	w, err := c.Data()
	if err != nil {
		return false, err
	}
	msg := "Message-ID: " + id + "\r\nFrom: sender@localhost\r\nTo: rcpt@example.com\r\nSubject: composetest\r\n\r\n" +
		strings.Repeat("Mailroot compose test body line.\r\n", 30)
	if _, err := w.Write([]byte(msg)); err != nil {
		return true, err
	}
	return true, w.Close()
}

// waitDelivered waits until every id is at the sink and returns the
// sink's count per Message-ID.
func waitDelivered(t testing.TB, ids []string, timeout time.Duration) map[string]int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := sinkIDs(t)
		var missing []string
		for _, id := range ids {
			if got[id] == 0 {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d accepted messages not at the sink after %v, e.g. %v", len(missing), len(ids), timeout, missing[:min(5, len(missing))])
		}
		time.Sleep(time.Second)
	}
}

// execOut runs a command and returns its standard output.
func execOut(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).Output()
}
