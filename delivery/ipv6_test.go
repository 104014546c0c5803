package delivery

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

func TestOrderAddrs(t *testing.T) {
	a := func(s ...string) []netip.Addr {
		out := make([]netip.Addr, len(s))
		for i, x := range s {
			out[i] = netip.MustParseAddr(x)
		}
		return out
	}
	mixed := a("192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::1", "2001:db8::2")
	for _, c := range []struct {
		pref string
		in   []netip.Addr
		want []netip.Addr
	}{
		{config.AddressAny, mixed, a("192.0.2.1", "2001:db8::1", "192.0.2.2", "2001:db8::2", "192.0.2.3")},
		{config.AddressIPv4, mixed, mixed},
		{config.AddressIPv6, mixed, a("2001:db8::1", "2001:db8::2", "192.0.2.1", "192.0.2.2", "192.0.2.3")},
		{config.AddressIPv6, a("192.0.2.1", "192.0.2.2"), a("192.0.2.1", "192.0.2.2")},
		{config.AddressAny, a("2001:db8::1"), a("2001:db8::1")},
	} {
		if got := orderAddrs(c.in, c.pref); !slices.Equal(got, c.want) {
			t.Errorf("orderAddrs(%v, %s) = %v, want %v", c.in, c.pref, got, c.want)
		}
	}
}

// needIPv6 skips the test when this machine cannot listen on ::1.
func needIPv6(t *testing.T) {
	t.Helper()
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback (::1) on this machine: %v", err)
	}
	_ = l.Close()
}

// recordDials makes s record the addresses it dials.
func recordDials(s *Service, mu *sync.Mutex, dials *[]string) {
	dial := s.Dial
	s.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		*dials = append(*dials, addr)
		mu.Unlock()
		return dial(ctx, network, addr)
	}
}

// An MX host with only an AAAA record gets its mail over IPv6.
func TestDeliverIPv6Only(t *testing.T) {
	needIPv6(t)
	h := newHarness(t, "v6.test. MX 10 mx.v6.test.", "mx.v6.test. AAAA ::1")
	sink := testutil.StartSinkOn(t, "[::1]:0")
	h.sink = sink
	h.cfg.Delivery.Port = sink.Port
	h.start(nil)
	h.publishOut(newEnv("v6.test", "x@v6.test"), sampleBody)
	h.waitMails(1)
	h.waitEmpty()
}

// With address_preference = "ipv6" the IPv6 address is tried first; when
// nothing answers there, the host's IPv4 address takes the mail.
func TestIPv6FallsBackToIPv4(t *testing.T) {
	needIPv6(t)
	h := newHarness(t, "dual.test. MX 10 mx.dual.test.", "mx.dual.test. A 127.0.0.1", "mx.dual.test. AAAA ::1")
	h.cfg.Delivery.AddressPreference = config.AddressIPv6
	// The sink listens on 127.0.0.1 only: [::1] on its port refuses.
	var mu sync.Mutex
	var dials []string
	h.start(func(s *Service) { recordDials(s, &mu, &dials) })
	h.publishOut(newEnv("dual.test", "x@dual.test"), sampleBody)
	h.waitMails(1)
	h.waitEmpty()
	port := strconv.Itoa(h.sink.Port)
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"[::1]:" + port, "127.0.0.1:" + port}; !slices.Equal(dials, want) {
		t.Errorf("dialled %v, want %v", dials, want)
	}
}
