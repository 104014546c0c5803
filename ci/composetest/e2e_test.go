//go:build integration

package composetest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailroot/mailroot/internal/testutil"
)

// TestComposeE2E runs against the unchanged docker-compose.yml plus the
// sink overlay, started with one delivery worker (ci/compose-e2e.sh):
//
//  1. mail sent over SMTP from the host reaches the sink;
//  2. local mail lands in the Drop volume and a file in the Pickup volume
//     is sent;
//  3. a burst is queued behind one slow worker, two workers are added with
//     `up -d --scale delivery=3`, and each of the three delivers a share,
//     while no other container is recreated or restarted.
func TestComposeE2E(t *testing.T) {
	waitHealthy(t, 3*time.Minute)
	if n := len(containers(t, "delivery")); n != 1 {
		t.Fatalf("%d delivery containers, the script starts 1", n)
	}
	run := fmt.Sprintf("%x", time.Now().UnixNano())
	sinkPost(t, "/reset")
	sinkPost(t, "/delay?d=0s")

	t.Run("smtp to sink", func(t *testing.T) {
		r := send(t, sendOptions{N: 1, Conns: 1, Prefix: "single." + run, Timeout: time.Minute})
		waitDelivered(t, r.Accepted, time.Minute)
	})

	t.Run("drop and pickup volumes", func(t *testing.T) {
		delivery := containers(t, "delivery")[0]
		qid := sendLocal(t)
		waitFor(t, time.Minute, "the message in Drop/localhost/"+qid+".eml", func() bool {
			return copyOut(delivery.Name, "/var/spool/mailroot/Drop/localhost/"+qid+".eml") != nil
		})
		id := "<pickup." + run + "@composetest>"
		eml := "X-Sender: app@localhost\r\nX-Receiver: rcpt@example.com\r\nMessage-ID: " + id + "\r\nSubject: pickup\r\n\r\nfrom a file\r\n"
		copyIn(t, containers(t, "pickupwatcher")[0].Name, "/var/spool/mailroot/Pickup", "compose-e2e.eml", eml)
		waitDelivered(t, []string{id}, time.Minute)
	})

	t.Run("scale delivery while mail is queued", func(t *testing.T) {
		before := containers(t, "")
		first := containers(t, "delivery")[0]
		sinkPost(t, "/reset")
		// 8 slots per worker (ci/e2e.toml) and a sink that takes 200 ms
		// per message: one worker drains 40 messages a second.
		sinkPost(t, "/delay?d=200ms")
		defer sinkPost(t, "/delay?d=0s")
		const n = 600
		burst := send(t, sendOptions{N: n, Conns: 8, Prefix: "burst." + run, Timeout: 2 * time.Minute})
		queued := n - stats(t).Messages
		scaleAt := time.Now()
		// Exactly what the README tells users to type (plus --no-build:
		// the images were built by the script).
		compose(t, "up", "-d", "--no-build", "--scale", "delivery=3")
		// Time from `up --scale` to the first message from each new worker.
		var firstWork time.Duration
		for time.Since(scaleAt) < time.Minute {
			if st := stats(t); len(st.ByHelo) >= 3 {
				firstWork = time.Since(scaleAt)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		got := waitDelivered(t, burst.Accepted, 3*time.Minute)
		st := stats(t)
		workers := containers(t, "delivery")
		if len(workers) != 3 {
			t.Fatalf("%d delivery containers after --scale delivery=3", len(workers))
		}
		t.Logf("burst of %d: %d still queued when two workers were added; both delivered within %.1fs of `up --scale`; shares by EHLO name: %v",
			n, queued, firstWork.Seconds(), st.ByHelo)
		if queued < n/4 {
			t.Errorf("only %d of %d messages were queued when the workers were added: the test proves nothing", queued, n)
		}
		for _, w := range workers {
			share := st.ByHelo[w.Hostname]
			if share < n/20 {
				t.Errorf("worker %s (EHLO %s) delivered %d of %d", w.Name, w.Hostname, share, n)
			}
		}
		if len(st.ByHelo) != 3 {
			t.Errorf("deliveries from %d EHLO names, want the 3 workers: %v", len(st.ByHelo), st.ByHelo)
		}
		if dups := dupCount(got, burst.Accepted); dups > 0 {
			t.Errorf("%d duplicates at the sink without any failure", dups)
		}
		// Adding workers restarted nothing: same containers, same start times.
		after := map[string]container{}
		for _, c := range containers(t, "") {
			after[c.ID] = c
		}
		for _, c := range before {
			a, ok := after[c.ID]
			if !ok || a.StartedAt != c.StartedAt {
				t.Errorf("%s was recreated or restarted by the scale-up", c.Name)
			}
		}
		if first.Hostname == "" || st.ByHelo[first.Hostname] == 0 {
			t.Errorf("the first worker %s delivered nothing", first.Name)
		}
		waitHealthy(t, 2*time.Minute)
	})

	t.Run("users and tls survive recreate", func(t *testing.T) {
		name, user := containers(t, "ingress")[0].Name, "keep."+run+"@localhost"
		add := exec.Command("docker", "exec", "-i", name, "mailroot", "user", "add", user, "-password-stdin")
		add.Stdin = strings.NewReader("kept password\n")
		if out, err := add.CombinedOutput(); err != nil {
			t.Fatalf("mailroot user add: %v\n%s", err, out)
		}
		cert := copyOut(name, "/var/spool/mailroot/tls/selfsigned.crt")
		if cert == nil {
			t.Fatal("no self-signed certificate in the ingress container")
		}
		compose(t, "up", "-d", "--no-build", "--force-recreate", "ingress")
		waitHealthy(t, 2*time.Minute)
		name = containers(t, "ingress")[0].Name
		if out, _ := exec.Command("docker", "exec", name, "mailroot", "user", "list").CombinedOutput(); !strings.Contains(string(out), user) {
			t.Errorf("after --force-recreate the users file lacks %s:\n%s", user, out)
		}
		if got := copyOut(name, "/var/spool/mailroot/tls/selfsigned.crt"); !bytes.Equal(got, cert) {
			t.Error("after --force-recreate ingress has another certificate")
		}
	})
}

// dupCount counts extra copies of ids at the sink.
func dupCount(got map[string]int, ids []string) int {
	d := 0
	for _, id := range ids {
		if got[id] > 1 {
			d += got[id] - 1
		}
	}
	return d
}

// sendLocal sends one message to a local domain and returns its queue id.
func sendLocal(t *testing.T) string {
	t.Helper()
	c, err := smtp.Dial("127.0.0.1:" + env(t, "MAILROOT_SMTP_PORT"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Mail("sender@localhost", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("postmaster@localhost", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, "Subject: to Drop\r\n\r\nlocal mail\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatal(err)
	}
	// "OK queued as <qid>"
	msg := resp.StatusText
	i := strings.LastIndex(msg, " ")
	if i < 0 {
		t.Fatalf("no queue id in %q", msg)
	}
	return strings.TrimSpace(msg[i+1:])
}

// copyOut reads one file out of a container (docker cp works on images
// without a shell); nil when it is not there.
func copyOut(name, path string) []byte {
	out, err := exec.Command("docker", "cp", name+":"+path, "-").Output()
	if err != nil {
		return nil
	}
	tr := tar.NewReader(bytes.NewReader(out))
	if _, err := tr.Next(); err != nil {
		return nil
	}
	b, _ := io.ReadAll(tr)
	return b
}

// copyIn writes one file into a directory of a container.
func copyIn(t *testing.T, name, dir, file, content string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	_ = tw.WriteHeader(&tar.Header{Name: file, Mode: 0o644, Size: int64(len(content)), ModTime: time.Now(), Uid: 65532, Gid: 65532})
	_, _ = tw.Write([]byte(content))
	_ = tw.Close()
	cmd := exec.Command("docker", "cp", "-", name+":"+dir)
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker cp into %s:%s: %v\n%s", name, dir, err, out)
	}
}

// waitFor is testutil.WaitFor with cond evaluated at most every 500 ms:
// each evaluation runs docker.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	var last time.Time
	testutil.WaitFor(t, timeout, what, func() bool {
		if time.Since(last) < 500*time.Millisecond {
			return false
		}
		last = time.Now()
		return cond()
	})
}
