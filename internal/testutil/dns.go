package testutil

import (
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// DNS is a real authoritative DNS server on 127.0.0.1 answering from a zone
// map. Names not in the map get NXDOMAIN.
type DNS struct {
	Addr string // "127.0.0.1:port", UDP and TCP

	mu      sync.Mutex
	records map[string][]dns.RR // by lower-case FQDN
	queries int
	ad      bool
	silent  bool
	rcode   int
}

// SetAD makes the server set the AD bit (DNSSEC-validated) on its answers,
// as a validating resolver does, or stop setting it.
func (d *DNS) SetAD(on bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ad = on
}

// SetSilent makes the server read questions and answer none, as a dead
// or unreachable server does, or answer again.
func (d *DNS) SetSilent(on bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.silent = on
}

// SetRcode makes the server answer every question with rcode (e.g.
// dns.RcodeServerFailure); dns.RcodeSuccess answers from the map again.
func (d *DNS) SetRcode(rcode int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rcode = rcode
}

// StartDNS serves the records given in zone-file syntax, e.g.
// "example.test. MX 10 mx.example.test." or "mx.example.test. A 127.0.0.1".
func StartDNS(t testing.TB, zone ...string) *DNS {
	t.Helper()
	d := &DNS{records: map[string][]dns.RR{}}
	for _, z := range zone {
		d.Add(t, z)
	}
	// UDP and TCP share the port number; the random UDP port may be taken
	// for TCP by someone else, so try a few pairs.
	var pc net.PacketConn
	var l net.Listener
	var err error
	for range 20 {
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("dns listen: %v", err)
		}
		d.Addr = pc.LocalAddr().String()
		if l, err = net.Listen("tcp", d.Addr); err == nil {
			break
		}
		_ = pc.Close()
	}
	if err != nil {
		t.Fatalf("dns listen tcp: %v", err)
	}
	udp := &dns.Server{PacketConn: pc, Handler: d}
	tcp := &dns.Server{Listener: l, Handler: d}
	go func() { _ = udp.ActivateAndServe() }()
	go func() { _ = tcp.ActivateAndServe() }()
	t.Cleanup(func() { _ = udp.Shutdown(); _ = tcp.Shutdown() })
	return d
}

// Add adds one record in zone-file syntax.
func (d *DNS) Add(t testing.TB, record string) {
	t.Helper()
	rr, err := dns.NewRR(record)
	if err != nil {
		t.Fatalf("dns record %q: %v", record, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	name := strings.ToLower(rr.Header().Name)
	d.records[name] = append(d.records[name], rr)
}

// Queries is the number of questions answered.
func (d *DNS) Queries() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queries
}

// ServeDNS answers from the map.
func (d *DNS) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	d.mu.Lock()
	d.queries++
	if d.silent {
		d.mu.Unlock()
		return
	}
	m.AuthenticatedData = d.ad
	if d.rcode != dns.RcodeSuccess {
		m.Rcode = d.rcode
		d.mu.Unlock()
		_ = w.WriteMsg(m)
		return
	}
	for _, q := range r.Question {
		rrs, ok := d.records[strings.ToLower(q.Name)]
		if !ok {
			m.Rcode = dns.RcodeNameError
			continue
		}
		for _, rr := range rrs {
			if rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, dns.Copy(rr))
			}
		}
	}
	d.mu.Unlock()
	_ = w.WriteMsg(m)
}

// LookupTXT asks the server for the TXT records of name over UDP, each
// record's strings joined (RFC 7208 §3.3), as a verifier in a test needs
// (go-msgauth's dkim.VerifyOptions.LookupTXT).
func (d *DNS) LookupTXT(name string) ([]string, error) {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
	r, _, err := new(dns.Client).Exchange(q, d.Addr)
	if err != nil {
		return nil, err
	}
	if r.Rcode != dns.RcodeSuccess {
		return nil, &net.DNSError{Err: dns.RcodeToString[r.Rcode], Name: name, IsNotFound: r.Rcode == dns.RcodeNameError}
	}
	var out []string
	for _, rr := range r.Answer {
		if t, ok := rr.(*dns.TXT); ok {
			out = append(out, strings.Join(t.Txt, ""))
		}
	}
	return out, nil
}
