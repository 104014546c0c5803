package delivery

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailroot/mailroot/ingress"
	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/resolver"
	"github.com/mailroot/mailroot/internal/testutil"
)

// dials records the addresses delivery connects to.
type dials struct {
	mu    sync.Mutex
	addrs []string
}

func (d *dials) seam(s *Service) {
	next := s.Dial
	s.Dial = func(ctx context.Context, network, address string) (net.Conn, error) {
		d.mu.Lock()
		d.addrs = append(d.addrs, address)
		d.mu.Unlock()
		return next(ctx, network, address)
	}
}

func (d *dials) list() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.addrs...)
}

// site returns a [[site]] of kind mta named name on listen.
func site(cfg config.Config, name, hostname string, listen ...string) config.Site {
	s := cfg.SiteOf(config.KindMTA)
	s.Name, s.Listen = name, listen
	if hostname != "" {
		s.Hostname = hostname
	}
	return s
}

// loopNDR waits for the report to the sender of env and checks it says
// 5.4.6 with diagnostic want, and that delivery connected to nobody.
func loopNDR(t *testing.T, h *harness, in *inbox, d *dials, want string) {
	t.Helper()
	n := in.next()
	if n.env.From != "" || len(n.env.Rcpts) != 1 || n.env.Rcpts[0].Addr != "sender@origin.test" {
		t.Errorf("report from %q to %v, want from <> to the sender", n.env.From, n.env.Addrs())
	}
	rc := n.p.Report.Recipients[0]
	if rc.Status != "5.4.6" || rc.DiagnosticCode != "X-Mailroot; "+want {
		t.Errorf("status %s diagnostic %q,\nwant %q", rc.Status, rc.DiagnosticCode, want)
	}
	if !strings.Contains(n.p.Text, want) {
		t.Errorf("text does not give the reason %q:\n%s", want, n.p.Text)
	}
	h.waitEmpty()
	in.none()
	if got := d.list(); len(got) != 0 {
		t.Errorf("delivery connected to %v", got)
	}
	if n := h.sink.Transactions(); n != 0 {
		t.Errorf("%d transactions with ourselves", n)
	}
}

// A [[site]] on a port other than 25 is ourselves: mail whose MX resolves
// to its address and port bounces at the first hop, and so does mail whose
// MX host is the site's host name; a more preferred MX that is not ours is
// used.
func TestLoopToSelfSite(t *testing.T) {
	for _, tc := range []struct {
		name string
		zone []string
		want func(port int) string // "" = delivered to the sink
	}{
		{"MX address is the site's", []string{"site.test. MX 10 mx.site.test.", "mx.site.test. A 127.0.0.1"},
			func(p int) string {
				return fmt.Sprintf("5.4.6 mail for site.test loops back to myself: MX host mx.site.test has address 127.0.0.1, where this server listens (site relay, listen 127.0.0.1:%d)", p)
			}},
		{"MX host is the site's host name", []string{"site.test. MX 10 relay.site.test.", "site.test. MX 20 backup.site.test.", "relay.site.test. A 192.0.2.1"},
			func(int) string {
				return "5.4.6 mail for site.test loops back to myself: MX host relay.site.test is the host name of site relay"
			}},
		{"MX address is the site host name's", []string{"site.test. MX 10 mx.site.test.", "mx.site.test. A 127.0.0.4", "relay.site.test. A 127.0.0.4"},
			func(p int) string {
				return fmt.Sprintf("5.4.6 mail for site.test loops back to myself: MX host mx.site.test has address 127.0.0.4, an address of the host name relay.site.test of site relay, and this server listens on port %d", p)
			}},
		{"more preferred MX is not ours", []string{"site.test. MX 10 mx1.site.test.", "site.test. MX 20 mx.site.test.", "mx1.site.test. A 127.0.0.1", "mx.site.test. A 127.0.0.3"},
			nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.zone...)
			p := h.sink.Port
			// [ingress] listens elsewhere: only the site says where we are.
			h.cfg.Ingress.Listen = []string{"127.0.0.9:25"}
			own := "127.0.0.1"
			if tc.want == nil {
				own = "127.0.0.3"
			}
			h.cfg.Sites = []config.Site{
				site(h.cfg, "relay", "relay.site.test", fmt.Sprintf("%s:%d", own, p)),
				site(h.cfg, "other", "", "127.0.0.9:2587"),
			}
			if err := h.cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			in := h.watchIn()
			var d dials
			h.start(d.seam)
			env := newEnv("site.test", "x@site.test")
			h.publishOut(env, sampleBody)
			if tc.want == nil {
				if m := h.waitMails(1); m[0].To[0] != "x@site.test" {
					t.Errorf("delivered %+v", m[0])
				}
				if got := d.list(); len(got) != 1 || got[0] != fmt.Sprintf("127.0.0.1:%d", p) {
					t.Errorf("connected to %v, want only the more preferred MX", got)
				}
				return
			}
			loopNDR(t, h, in, &d, tc.want(p))
		})
	}
}

// localAddr is an address of one of this machine's interfaces, a
// non-loopback one when there is one.
func localAddr(t *testing.T) netip.Addr {
	t.Helper()
	for _, a := range interfaceAddrs() {
		if a.Is4() && !a.IsLoopback() && !a.IsLinkLocalUnicast() {
			return a
		}
	}
	return netip.MustParseAddr("127.0.0.1")
}

// A site listening on all addresses makes every interface address of the
// machine ourselves on that port.
func TestLoopToSelfAllAddresses(t *testing.T) {
	ip := localAddr(t)
	for _, listen := range []string{"0.0.0.0:%d", "[::]:%d", ":%d"} {
		t.Run(fmt.Sprintf(listen, 25), func(t *testing.T) {
			h := newHarness(t, "any.test. MX 10 mx.any.test.", "mx.any.test. A "+ip.String())
			p := h.sink.Port
			h.cfg.Sites = []config.Site{site(h.cfg, "mx", "", fmt.Sprintf(listen, p))}
			in := h.watchIn()
			var d dials
			h.start(d.seam)
			h.publishOut(newEnv("any.test", "x@any.test"), sampleBody)
			loopNDR(t, h, in, &d, fmt.Sprintf("5.4.6 mail for any.test loops back to myself: MX host mx.any.test has address %s, an address of this machine, where this server listens on all addresses (site mx, listen %s)", ip, fmt.Sprintf(listen, p)))
		})
	}
}

// startIngress runs an ingress Service on its own configuration (another
// process of a split deployment) on js; it returns the service and a
// function stopping it.
func startIngress(t *testing.T, h *harness, edit func(*config.Config)) (*ingress.Service, func()) {
	t.Helper()
	cfg := config.Default()
	cfg.Hostname = "in.split.test"
	cfg.DataDir = t.TempDir()
	if edit != nil {
		edit(&cfg)
	}
	if cfg.Sites == nil {
		cfg.Sites = []config.Site{site(cfg, "mx", "", "127.0.0.1:0")}
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	svc, err := ingress.New(cfg, testutil.Logger(t), h.js)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = svc.Run(ctx); close(done) }()
	stop := sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(stop)
	select {
	case <-svc.Ready():
	case <-time.After(wait):
		t.Fatal("ingress not ready")
	}
	return svc, stop
}

// announcedNode waits for the mta-listeners entry of the ingress with host
// name hostname and returns its node name, the entry's key.
func announcedNode(t *testing.T, h *harness, hostname string) string {
	t.Helper()
	kv, err := h.js.KeyValue(t.Context(), bus.BucketListeners)
	if err != nil {
		t.Fatal(err)
	}
	var node string
	testutil.WaitFor(t, wait, "the entry of "+hostname+" in "+bus.BucketListeners, func() bool {
		keys, _ := kv.Keys(t.Context())
		for _, k := range keys {
			var info bus.ListenerInfo
			if e, err := kv.Get(t.Context(), k); err == nil && json.Unmarshal(e.Value(), &info) == nil && info.Hostname == hostname {
				if info.Node != k {
					t.Fatalf("entry %s names node %s", k, info.Node)
				}
				node = k
				return true
			}
		}
		return false
	})
	return node
}

// In a split deployment delivery knows the other processes' listeners only
// from the mta-listeners bucket. An ingress on another configuration,
// started before delivery, is ourselves by its bound address from the
// first message on; one started while delivery runs is ourselves by its
// host name, and stops being so when it stops.
func TestLoopToSelfSplitDeployment(t *testing.T) {
	h := newHarness(t, "split.test. MX 10 mx.split.test.", "mx.split.test. A 127.0.0.1",
		"name.test. MX 10 late.split.test.", "late.split.test. A 192.0.2.1")
	ing, _ := startIngress(t, h, nil)
	bound := ing.SiteAddrs("mx")[0]
	h.cfg.Hostname = "out.split.test"
	h.cfg.Delivery.Port = int(netip.MustParseAddrPort(bound).Port()) // the MX port is the ingress's
	if why := newSelf(h.cfg, func(context.Context, string) ([]netip.Addr, error) { return nil, resolver.ErrNoData }).is(t.Context(), netip.MustParseAddr("127.0.0.1"), h.cfg.Delivery.Port); why != "" {
		t.Fatalf("delivery's own configuration has the listener: %s", why)
	}
	in := h.watchIn()
	var d dials
	h.start(d.seam)
	node := announcedNode(t, h, "in.split.test")
	h.publishOut(newEnv("split.test", "x@split.test"), sampleBody)
	loopNDR(t, h, in, &d, fmt.Sprintf("5.4.6 mail for split.test loops back to myself: MX host mx.split.test has address 127.0.0.1, where ingress %s listens (site mx, bound to %s)", node, bound))

	_, stop := startIngress(t, h, func(c *config.Config) { c.Hostname = "late.split.test" })
	late := announcedNode(t, h, "late.split.test")
	testutil.WaitFor(t, wait, "delivery to learn the new ingress's host name", func() bool {
		return h.svc.self.name("late.split.test") != ""
	})
	h.publishOut(newEnv("name.test", "x@name.test"), sampleBody)
	loopNDR(t, h, in, &d, fmt.Sprintf("5.4.6 mail for name.test loops back to myself: MX host late.split.test is the host name of ingress %s", late))

	stop()
	testutil.WaitFor(t, wait, "the stopped ingress to be forgotten", func() bool {
		return h.svc.self.name("late.split.test") == ""
	})
	if h.svc.self.name("in.split.test") == "" {
		t.Error("the running ingress was forgotten too")
	}
}

// An ingress of a split deployment bound to all addresses announces its
// machine's interface addresses: mail to any of them on its port bounces.
func TestLoopToSelfSplitAllAddresses(t *testing.T) {
	ip := localAddr(t)
	h := newHarness(t, "split.test. MX 10 mx.split.test.", "mx.split.test. A "+ip.String())
	h.cfg.Hostname = "out.split.test"
	ing, _ := startIngress(t, h, func(c *config.Config) { c.Sites = []config.Site{site(*c, "mx", "", "0.0.0.0:0")} })
	bound := ing.SiteAddrs("mx")[0]
	ap := netip.MustParseAddrPort(bound)
	h.cfg.Delivery.Port = int(ap.Port())
	in := h.watchIn()
	var d dials
	h.start(d.seam)
	node := announcedNode(t, h, "in.split.test")
	h.publishOut(newEnv("split.test", "x@split.test"), sampleBody)
	loopNDR(t, h, in, &d, fmt.Sprintf("5.4.6 mail for split.test loops back to myself: MX host mx.split.test has address %s, an address of the machine of ingress %s, where it listens on all addresses (site mx, bound to %s)", ip, node, bound))
}

// Announced loopback addresses are another machine's unless the entry
// comes from this one; an entry past its TTL counts for nothing.
func TestSelfAnnouncedLoopbackAndExpiry(t *testing.T) {
	cfg := config.Default()
	cfg.Ingress.Listen = []string{"192.0.2.99:25"}
	s := newSelf(cfg, func(context.Context, string) ([]netip.Addr, error) { return nil, resolver.ErrNoData })
	s.ifaces = func() []netip.Addr { return nil }
	s.machine = "here"
	info := bus.ListenerInfo{Node: "n1", Machine: "there", Hostname: "n1.test",
		Sites:      []bus.ListenerSite{{Name: "mx", Hostname: "n1.test", Addrs: []string{"127.0.0.1:2525", "192.0.2.7:2525", "[::]:2526"}}},
		Interfaces: []string{"127.0.0.1", "::1", "192.0.2.8"}}
	now := time.Now()
	s.now = func() time.Time { return now }
	s.setRemote(map[string]announced{"n1": {view: s.announcedView(info), expires: now.Add(time.Minute)}})
	for _, tc := range []struct {
		ip   string
		port int
		ours bool
	}{
		{"127.0.0.1", 2525, false}, {"192.0.2.7", 2525, true}, {"192.0.2.7", 2526, false},
		{"192.0.2.8", 2526, true}, {"::1", 2526, false}, {"127.0.0.1", 2526, false},
	} {
		if why := s.is(t.Context(), netip.MustParseAddr(tc.ip), tc.port); (why != "") != tc.ours {
			t.Errorf("%s:%d: %q, want ours=%v", tc.ip, tc.port, why, tc.ours)
		}
	}
	info.Machine = "here"
	s.setRemote(map[string]announced{"n1": {view: s.announcedView(info), expires: now.Add(time.Minute)}})
	if why := s.is(t.Context(), netip.MustParseAddr("127.0.0.1"), 2525); why == "" {
		t.Error("a loopback listener of this machine is not ours")
	}
	if why := s.is(t.Context(), netip.MustParseAddr("::1"), 2526); why == "" {
		t.Error("a loopback interface of this machine is not ours")
	}
	now = now.Add(2 * time.Minute)
	if why := s.is(t.Context(), netip.MustParseAddr("192.0.2.7"), 2525); why != "" {
		t.Errorf("expired entry still counts: %s", why)
	}
	if what := s.name("n1.test"); what != "" {
		t.Errorf("expired entry's host name still counts: %s", what)
	}
}
