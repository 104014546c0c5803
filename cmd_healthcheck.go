package main

// `mailroot healthcheck` is the container health probe. Images built FROM
// scratch or distroless have no shell and no wget, so the binary checks
// itself: every actor process keeps a heartbeat file in the temp directory
// saying whether its NATS connection is up, and the probe reads it. For
// ingress (and `all`) the probe also opens an SMTP connection to each
// listen address and expects the 220 greeting.

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/node"
)

// Heartbeat timing: the file is rewritten every heartbeatEvery; the probe
// calls it stale after heartbeatStale (the process hangs or is gone).
const (
	heartbeatEvery = 5 * time.Second
	heartbeatStale = 20 * time.Second
)

// heartbeat is the content of a heartbeat file.
type heartbeat struct {
	Role string    `json:"role"`
	PID  int       `json:"pid"`
	NATS string    `json:"nats"`
	At   time.Time `json:"at"`
}

// heartbeatPath is the file of one process in dir ($TMPDIR by default);
// pid "*" makes a glob pattern.
func heartbeatPath(dir, role, pid string) string {
	return filepath.Join(dir, "mailroot-"+role+"-"+pid+".health")
}

// processGone reports whether no process has the given id (a heartbeat
// file left behind by a process that was killed). In a container the
// actor is PID 1 after every restart, so its file is simply rewritten.
func processGone(pid int) bool {
	return pid > 0 && errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// startHeartbeat writes the heartbeat file of role every heartbeatEvery
// until stop is called, which removes it. A failure to write is logged
// once: health reporting must never stop an actor.
func startHeartbeat(role string, nc *nats.Conn, log *slog.Logger) (stop func()) {
	path := heartbeatPath(os.TempDir(), role, strconv.Itoa(os.Getpid()))
	write := func() error {
		hb := heartbeat{Role: role, PID: os.Getpid(), NATS: strings.ToLower(nc.Status().String()), At: time.Now().UTC()}
		b, _ := json.Marshal(hb)
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, b, 0o644); err != nil {
			return err
		}
		return os.Rename(tmp, path)
	}
	if err := write(); err != nil {
		log.Warn("heartbeat file not writable: `mailroot healthcheck` will report unhealthy", "path", path, "err", err)
	}
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(heartbeatEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = write()
			}
		}
	}()
	return func() {
		close(done)
		<-exited
		_ = os.Remove(path)
	}
}

func runHealthcheck(args []string) int {
	fs := flag.NewFlagSet("mailroot healthcheck", flag.ContinueOnError)
	cf := addCommonFlags(fs)
	dir := fs.String("dir", os.TempDir(), "directory of the heartbeat files")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := cf.load()
	if err != nil {
		fmt.Printf("unhealthy: %v\n", err)
		return 1
	}
	roles, err := checkHealth(*dir, cfg, time.Now())
	if err != nil {
		fmt.Printf("unhealthy: %v\n", err)
		return 1
	}
	fmt.Printf("healthy: %s\n", strings.Join(roles, ", "))
	return 0
}

// checkHealth reads the heartbeat files in dir and probes ingress's SMTP
// listeners. It returns the healthy roles, or why the container is not
// healthy.
func checkHealth(dir string, cfg config.Config, now time.Time) ([]string, error) {
	files, _ := filepath.Glob(heartbeatPath(dir, "*", "*"))
	var roles []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue // the process stopped meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("heartbeat: %w", err)
		}
		var hb heartbeat
		if err := json.Unmarshal(b, &hb); err != nil {
			return nil, fmt.Errorf("heartbeat %s: %w", f, err)
		}
		if processGone(hb.PID) {
			continue
		}
		if age := now.Sub(hb.At); age > heartbeatStale {
			return nil, fmt.Errorf("%s: last heartbeat %s ago (process hung or gone)", hb.Role, age.Round(time.Second))
		}
		if hb.NATS != "connected" {
			return nil, fmt.Errorf("%s: NATS connection is %s", hb.Role, hb.NATS)
		}
		if hb.Role == node.Ingress || hb.Role == "all" {
			for _, site := range cfg.EffectiveSites() {
				if site.ImplicitTLS {
					continue // it greets only after a TLS handshake
				}
				for _, addr := range site.Listen {
					if err := probeSMTP(addr); err != nil {
						return nil, fmt.Errorf("%s: %w", hb.Role, err)
					}
				}
			}
		}
		roles = append(roles, hb.Role)
	}
	if len(roles) == 0 {
		return nil, fmt.Errorf("no heartbeat in %s: no actor has finished starting", dir)
	}
	return roles, nil
}

// probeSMTP connects to a listen address (a wildcard host becomes the
// loopback address) and expects a 220 greeting.
func probeSMTP(listen string) error {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", listen, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	addr := net.JoinHostPort(host, port)
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return fmt.Errorf("smtp %s: %w", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	tp := bufio.NewReader(c)
	for {
		line, err := tp.ReadString('\n')
		if err != nil {
			return fmt.Errorf("smtp %s: greeting: %w", addr, err)
		}
		if !strings.HasPrefix(line, "220") {
			return fmt.Errorf("smtp %s: greeting %q", addr, strings.TrimSpace(line))
		}
		if len(line) < 4 || line[3] != '-' {
			break
		}
	}
	_, _ = c.Write([]byte("QUIT\r\n"))
	return nil
}
