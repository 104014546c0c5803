package node

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/testutil"
)

// Without nats.listen the embedded server listens on the loopback with a
// password of its own, announced in data_dir (mode 0600) while it runs:
// the file's credentials get in over TCP, none do not, the in-process
// actors are unaffected, a second node on the store is still refused
// without touching the first one's file, and Stop removes it.
func TestLocalAccessFile(t *testing.T) {
	w := newWorld(t)
	cfg := testConfig(t, w, t.TempDir())
	n := startNode(t, cfg)
	path := filepath.Join(cfg.DataDir, bus.LocalAccessFile)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", path, st.Mode().Perm())
	}
	a, err := bus.ReadLocalAccess(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	if a.User != bus.LocalUser || len(a.Password) < 20 || a.PID != os.Getpid() {
		t.Errorf("local access %+v: want user %s, a generated password and pid %d", a, bus.LocalUser, os.Getpid())
	}
	nc, err := nats.Connect(a.URL, nats.UserInfo(a.User, a.Password))
	if err != nil {
		t.Fatalf("connect with the file's credentials: %v", err)
	}
	if _, err := nc.Request("$JS.API.INFO", nil, 5*time.Second); err != nil {
		t.Errorf("JetStream over the local listener: %v", err)
	}
	nc.Close()
	if nc, err := nats.Connect(a.URL); err == nil {
		nc.Close()
		t.Error("the local listener admits a client without credentials")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("without credentials: %v, want an authorization error", err)
	}

	// The in-process actors deliver as before.
	qid := submitSMTP(t, n.Ingress.Addrs()[0], "a@local.test", []string{"b@remote.test"}, "Subject: x\r\n\r\nlocal\r\n")
	testutil.WaitFor(t, 20*time.Second, "delivery", func() bool { return w.mx["remote.test"].Count() == 1 })
	checkReceived(t, w.mx["remote.test"].Mails()[0].Data, qid, "Subject: x\r\n\r\nlocal\r\n")
	if more, err := n.ConnectInProcess("more"); err != nil {
		t.Errorf("another in-process connection: %v", err)
	} else {
		more.Close()
	}

	// Another node on another data_dir listens on a port of its own.
	cfg2 := testConfig(t, w, t.TempDir())
	startNode(t, cfg2, Router)
	if b, err := bus.ReadLocalAccess(cfg2.DataDir); err != nil || b.URL == a.URL || b.Password == a.Password {
		t.Errorf("a second node elsewhere: %+v, %v; want another URL and password than %+v", b, err, a)
	}

	if _, err := StartEmbedded(context.Background(), cfg, testutil.Logger(t), Router); err == nil {
		t.Fatal("a second node on the same data_dir started")
	}
	if b, err := bus.ReadLocalAccess(cfg.DataDir); err != nil || b != a {
		t.Errorf("after a refused second node the file is %+v, %v; want %+v", b, err, a)
	}

	n.Stop()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Stop %s: %v, want it gone", path, err)
	}
}

// With nats.listen the file names that listener, with the configured
// credentials and no generated ones.
func TestLocalAccessNamesListen(t *testing.T) {
	w := newWorld(t)
	cfg := testConfig(t, w, t.TempDir())
	cfg.NATS.Listen = freeAddr(t)
	startNode(t, cfg, Router)
	a, err := bus.ReadLocalAccess(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	if a.URL != "nats://"+cfg.NATS.Listen || a.User != "" || a.Password != "" {
		t.Errorf("local access %+v, want url nats://%s and no credentials", a, cfg.NATS.Listen)
	}
	nc, err := nats.Connect(a.URL)
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
}
