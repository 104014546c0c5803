package main

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

func startSink(t *testing.T) (smtpAddr string, s *sink, h *httptest.Server) {
	t.Helper()
	s = newSink()
	srv := smtp.NewServer(s)
	srv.Domain = "sink.test"
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	h = httptest.NewServer(s.handler())
	t.Cleanup(h.Close)
	return l.Addr().String(), s, h
}

func send(t *testing.T, addr, helo, msgID string) {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello(helo); err != nil {
		t.Fatal(err)
	}
	msg := "Subject: x\r\n\r\nbody\r\n"
	if msgID != "" {
		msg = "Message-ID: " + msgID + "\r\n" + msg
	}
	if err := c.SendMail("a@example.test", []string{"b@example.test"}, strings.NewReader(msg)); err != nil {
		t.Fatal(err)
	}
	_ = c.Quit()
}

func getStats(t *testing.T, h *httptest.Server) Stats {
	t.Helper()
	resp, err := http.Get(h.URL + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestSinkCounts(t *testing.T) {
	addr, _, h := startSink(t)
	send(t, addr, "worker-a", "<1@test>")
	send(t, addr, "worker-a", "<2@test>")
	send(t, addr, "worker-b", "<1@test>") // a duplicate
	send(t, addr, "worker-b", "")         // no Message-ID: unique
	st := getStats(t, h)
	if st.Messages != 4 || st.Unique != 3 || st.Duplicates != 1 {
		t.Errorf("messages/unique/duplicates = %d/%d/%d, want 4/3/1", st.Messages, st.Unique, st.Duplicates)
	}
	if st.ByHelo["worker-a"] != 2 || st.ByHelo["worker-b"] != 2 {
		t.Errorf("by_helo = %v", st.ByHelo)
	}
	resp, err := http.Get(h.URL + "/ids")
	if err != nil {
		t.Fatal(err)
	}
	var ids map[string]int
	_ = json.NewDecoder(resp.Body).Decode(&ids)
	resp.Body.Close()
	if ids["<1@test>"] != 2 || ids["<2@test>"] != 1 {
		t.Errorf("ids = %v", ids)
	}
	for _, u := range []string{"/reset", "/delay?d=1ms"} {
		resp, err := http.Post(h.URL+u, "", nil)
		if err != nil || resp.StatusCode != http.StatusNoContent {
			t.Fatalf("POST %s: %v %v", u, err, resp)
		}
		resp.Body.Close()
	}
	if st := getStats(t, h); st.Messages != 0 || len(st.ByHelo) != 0 {
		t.Errorf("after reset: %+v", st)
	}
	resp, err = http.Post(h.URL+"/delay?d=soon", "", nil)
	if err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("bad delay accepted: %v %v", err, resp)
	}
	resp.Body.Close()
}

func TestSinkDelay(t *testing.T) {
	addr, s, _ := startSink(t)
	s.setDelay(200 * time.Millisecond)
	start := time.Now()
	send(t, addr, "w", "<d@test>")
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("DATA answered after %v, want the 200ms delay", d)
	}
}

func TestHealthcheckProbe(t *testing.T) {
	_, _, h := startSink(t)
	if got := healthcheck(strings.TrimPrefix(h.URL, "http://")); got != 0 {
		t.Errorf("healthcheck of a running sink = %d", got)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	if got := healthcheck(addr); got != 1 {
		t.Errorf("healthcheck of nothing = %d", got)
	}
}
