package node

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/mailroot/mailroot/internal/testutil"
)

// `mailroot nats` runs the embedded server alone; actors in other
// processes that connect to it get its group commit (their Room syncs
// through mta.ctl.sync after every PubAck) and mail flows through them.
func TestServerOnlyGivesItsGroupCommit(t *testing.T) {
	w := newWorld(t)
	srvCfg := testConfig(t, w, t.TempDir())
	srvCfg.NATS.Listen = freeAddr(t)
	srv := startNode(t, srvCfg, ServerOnly)
	if len(srv.order) != 0 || srv.Server == nil {
		t.Fatalf("server-only node runs actors %v (server %v)", srv.order, srv.Server != nil)
	}

	cfg := testConfig(t, w, t.TempDir())
	cfg.NATS.URL = "nats://" + srvCfg.NATS.Listen
	n, err := Connect(context.Background(), cfg, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Stop)
	<-n.Ingress.Ready()
	if n.Room.Sync == nil {
		t.Fatal("actors connected to `mailroot nats` do not ask for its syncs")
	}
	const msg = "Subject: split\r\n\r\nsynced\r\n"
	qid := submitSMTP(t, n.Ingress.Addrs()[0], "a@local.test", []string{"b@remote.test"}, msg)
	testutil.WaitFor(t, 20*time.Second, "delivery through the split node", func() bool { return w.mx["remote.test"].Count() == 1 })
	checkReceived(t, w.mx["remote.test"].Mails()[0].Data, qid, msg)

	// Against a server that is not Mailroot's, nothing is asked.
	plain := testutil.StartNATS(t)
	cfg2 := testConfig(t, w, t.TempDir())
	cfg2.NATS.URL = plain.URL()
	n2, err := Connect(context.Background(), cfg2, testutil.Logger(t), Router)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n2.Stop)
	if n2.Room.Sync != nil {
		t.Error("actors on a stock server ask for syncs nobody answers")
	}
}

// freeAddr is a loopback address with a port nobody listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprintf("127.0.0.1:%d", l.Addr().(*net.TCPAddr).Port)
}
