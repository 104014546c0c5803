//go:build integration

package composetest

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func envFloat(name string, def float64) float64 {
	if v, err := strconv.ParseFloat(os.Getenv(name), 64); err == nil && v > 0 {
		return v
	}
	return def
}

// jsz is the part of nats-server's /jsz?streams=true the tests read.
type jsz struct {
	Meta struct {
		Leader string `json:"leader"`
	} `json:"meta_cluster"`
	Accounts []struct {
		Streams []struct {
			Name    string `json:"name"`
			Cluster struct {
				Leader string `json:"leader"`
			} `json:"cluster"`
			State struct {
				Messages uint64 `json:"messages"`
			} `json:"state"`
		} `json:"stream_detail"`
	} `json:"account_details"`
}

// eachNATSNode fetches a monitoring path from each running NATS node (the
// stand-in and the official alpine image both have wget), decodes the JSON
// and returns the first node for which found is true.
func eachNATSNode[V any](t testing.TB, path string, found func(c container, v *V) bool) (container, bool) {
	t.Helper()
	for _, svc := range []string{"nats", "nats-2", "nats-3"} {
		for _, c := range containers(t, svc) {
			out, err := execOut("docker", "exec", c.Name, "wget", "-q", "-O", "-", "http://127.0.0.1:8222"+path)
			if err != nil {
				continue
			}
			var v V
			if json.Unmarshal(out, &v) == nil && found(c, &v) {
				return c, true
			}
		}
	}
	return container{}, false
}

// mailStream returns the MAIL stream's leader and size, as a node that
// knows the leader reports them.
func mailStream(t testing.TB) (leader string, msgs uint64, ok bool) {
	t.Helper()
	_, ok = eachNATSNode(t, "/jsz?streams=true", func(_ container, j *jsz) bool {
		for _, a := range j.Accounts {
			for _, s := range a.Streams {
				if s.Name == "MAIL" && s.Cluster.Leader != "" {
					leader, msgs = s.Cluster.Leader, s.State.Messages
					return true
				}
			}
		}
		return false
	})
	return leader, msgs, ok
}

// connz is the part of /connz the tests read.
type connz struct {
	Conns []struct {
		Name string `json:"name"`
	} `json:"connections"`
}

// nodeServing returns the NATS container a client connection with the
// given name (e.g. "mailroot-ingress") is attached to.
func nodeServing(t testing.TB, connName string) (container, bool) {
	t.Helper()
	return eachNATSNode(t, "/connz?limit=4096", func(_ container, cz *connz) bool {
		for _, conn := range cz.Conns {
			if conn.Name == connName {
				return true
			}
		}
		return false
	})
}

// serviceOfServer maps a NATS server name (--name) to its compose service.
func serviceOfServer(name string) string {
	if name == "nats-1" {
		return "nats"
	}
	return name
}

// chaosEvent is one container killed during the chaos run.
type chaosEvent struct {
	What      string
	Container string
	Accepted  int64 // 250s so far
	AtSink    int   // messages at the sink so far
}

// TestChaos runs on the cluster overlay (ci/chaos.sh): while 5,000
// messages are being sent, it kills the MAIL stream's leader node, then the
// node ingress is connected to (it may be the same one, restarted), then a
// delivery worker, then the router, each with `docker kill` and started
// again after a pause. Every accepted message must reach the sink;
// duplicates are counted and must stay within what was in flight.
func TestChaos(t *testing.T) {
	if os.Getenv("MAILROOT_CHAOS") == "" {
		t.Skip("MAILROOT_CHAOS not set: run ci/chaos.sh")
	}
	waitHealthy(t, 3*time.Minute)
	n := envInt("CHAOS_MESSAGES", 5000)
	rate := envFloat("CHAOS_RATE", 100)
	pause := time.Duration(envInt("CHAOS_DOWN_SECONDS", 5)) * time.Second
	workers := containers(t, "delivery")
	if len(workers) < 2 {
		t.Fatalf("%d delivery workers; ci/chaos.sh starts two so that one can be killed", len(workers))
	}
	if _, _, ok := mailStream(t); !ok {
		t.Fatal("no MAIL stream leader: is this the cluster overlay?")
	}
	sinkPost(t, "/reset")
	sinkPost(t, "/delay?d=0s")

	var progress atomic.Int64
	done := make(chan sendResult, 1)
	start := time.Now()
	go func() {
		done <- send(t, sendOptions{N: n, Conns: 8, Rate: rate, Prefix: fmt.Sprintf("chaos.%x", start.UnixNano()),
			Timeout: 15 * time.Minute, Progress: &progress})
	}()
	plan := []struct {
		at   float64
		what string
		pick func() container
	}{
		{0.15, "NATS node leading the MAIL stream", func() container {
			leader, _, ok := mailStream(t)
			if !ok {
				t.Fatal("no MAIL stream leader")
			}
			return containers(t, serviceOfServer(leader))[0]
		}},
		{0.30, "NATS node serving ingress", func() container {
			c, ok := nodeServing(t, "mailroot-ingress")
			if !ok {
				t.Fatal("ingress is connected to no NATS node")
			}
			return c
		}},
		{0.45, "delivery worker", func() container { return containers(t, "delivery")[0] }},
		{0.75, "router", func() container { return containers(t, "router")[0] }},
	}
	var events []chaosEvent
	for _, p := range plan {
		for progress.Load() < int64(p.at*float64(n)) {
			time.Sleep(50 * time.Millisecond)
		}
		c := p.pick()
		ev := chaosEvent{What: p.what, Container: c.Name, Accepted: progress.Load(), AtSink: stats(t).Messages}
		docker(t, "kill", c.Name)
		t.Logf("%5.1fs killed %s (%s): %d accepted, %d at the sink", time.Since(start).Seconds(), c.Name, p.what, ev.Accepted, ev.AtSink)
		events = append(events, ev)
		time.Sleep(pause)
		docker(t, "start", c.Name)
		t.Logf("%5.1fs started %s again", time.Since(start).Seconds(), c.Name)
	}
	r := <-done
	sendTime := time.Since(start)
	if len(r.Accepted) != n {
		t.Errorf("%d of %d messages accepted", len(r.Accepted), n)
	}
	got := waitDelivered(t, r.Accepted, 6*time.Minute)
	allAt := time.Since(start)
	// Redeliveries of what a killed process held come after AckWait; the
	// count is final once the queue is empty.
	waitFor(t, 6*time.Minute, "the MAIL stream to be empty", func() bool {
		_, msgs, ok := mailStream(t)
		return ok && msgs == 0
	})
	got = sinkIDs(t)
	st := stats(t)

	var dups, dupsAmbiguous, unexpected int
	accepted := map[string]bool{}
	for _, id := range r.Accepted {
		accepted[id] = true
		if c := got[id]; c > 1 {
			if r.Ambiguous[id] {
				dupsAmbiguous += c - 1
			} else {
				dups += c - 1
			}
		}
	}
	for id := range got {
		if !accepted[id] {
			unexpected++
		}
	}
	// What can be in flight at a kill: every delivery worker's slots
	// (ci/e2e.toml: 8) — the router's and ingress's repeats are
	// deduplicated by Nats-Msg-Id.
	limit := len(plan) * len(workers) * 8
	summary := fmt.Sprintf("CHAOS messages=%d accepted=%d delivered_unique=%d missing=0 duplicates=%d "+
		"duplicates_after_sender_retry=%d sender_retries=%d ambiguous=%d unexpected=%d send=%.1fs all_delivered=%.1fs settled=%.1fs",
		n, len(r.Accepted), st.Unique, dups, dupsAmbiguous, r.Retries, len(r.Ambiguous), unexpected,
		sendTime.Seconds(), allAt.Seconds(), time.Since(start).Seconds())
	t.Log(summary)
	for _, e := range events {
		t.Logf("CHAOS kill %-34s %-24s at %d accepted / %d delivered", e.What, e.Container, e.Accepted, e.AtSink)
	}
	if dups > limit {
		t.Errorf("%d duplicates, more than could have been in flight at the %d kills (%d)", dups, len(plan), limit)
	}
	if unexpected > 0 {
		t.Errorf("%d messages at the sink that were never sent", unexpected)
	}
	if path := os.Getenv("CHAOS_SUMMARY"); path != "" {
		_ = os.WriteFile(path, []byte(summary+"\n"), 0o644)
	}
	waitHealthy(t, 3*time.Minute)
}

// TestScaling measures throughput with 1, 2 and 4 delivery workers
// (ci/chaos.sh scaling):
//
//   - end to end: N messages sent over SMTP as fast as 16 connections go,
//     from the first connection to the last message at the sink;
//   - drain: N messages queued with no worker running, then k workers
//     started; first to last message at the sink.
//
// Each worker has 8 SMTP slots (ci/e2e.toml); the sink answers at once
// or after a delay (SCALING_SINK_DELAYS, default "0s,50ms") that stands
// for a remote server's latency.
func TestScaling(t *testing.T) {
	if os.Getenv("MAILROOT_SCALING") == "" {
		t.Skip("MAILROOT_SCALING not set: run ci/chaos.sh scaling")
	}
	waitHealthy(t, 3*time.Minute)
	n := envInt("SCALING_MESSAGES", 2000)
	delays := strings.Split(os.Getenv("SCALING_SINK_DELAYS"), ",")
	if delays[0] == "" {
		delays = []string{"0s", "50ms"}
	}
	var lines []string
	for _, d := range delays {
		for _, k := range []int{1, 2, 4} {
			scaleDelivery(t, k)
			waitHealthy(t, 2*time.Minute)
			sinkPost(t, "/reset")
			sinkPost(t, "/delay?d="+d)
			prefix := fmt.Sprintf("scale.%s.%d.%x", d, k, time.Now().UnixNano())
			start := time.Now()
			r := send(t, sendOptions{N: n, Conns: 16, Prefix: prefix + ".e2e", Timeout: 10 * time.Minute})
			waitDelivered(t, r.Accepted, 10*time.Minute)
			st := stats(t)
			e2e := float64(n) / st.Last.Sub(start).Seconds()
			accept := float64(n) / r.Elapsed.Seconds()

			scaleDelivery(t, 0)
			sinkPost(t, "/reset")
			r = send(t, sendOptions{N: n, Conns: 16, Prefix: prefix + ".drain", Timeout: 10 * time.Minute})
			scaleDelivery(t, k)
			waitDelivered(t, r.Accepted, 10*time.Minute)
			st = stats(t)
			drain := float64(n) / st.Last.Sub(st.First).Seconds()
			line := fmt.Sprintf("SCALING sink_delay=%s workers=%d messages=%d end_to_end=%.0f/s accepted_by_ingress=%.0f/s drain=%.0f/s shares=%v",
				d, k, n, e2e, accept, drain, shares(st.ByHelo))
			t.Log(line)
			lines = append(lines, line)
		}
	}
	sinkPost(t, "/delay?d=0s")
	if path := os.Getenv("SCALING_SUMMARY"); path != "" {
		_ = os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	}
}

// shares lists per-worker counts, largest first.
func shares(byHelo map[string]int) []int {
	var out []int
	for _, v := range byHelo {
		out = append(out, v)
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] > out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}
