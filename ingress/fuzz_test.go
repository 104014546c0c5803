package ingress

import (
	"context"
	"encoding/base64"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailroot/mailroot/internal/bus"
	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

// panicCatcher is a slog handler that notices logged panics (the
// session's "panic in SMTP session").
type panicCatcher struct {
	slog.Handler
	seen *atomic.Value
}

func (p panicCatcher) Handle(ctx context.Context, r slog.Record) error {
	if strings.Contains(strings.ToLower(r.Message), "panic") {
		p.seen.Store(r.Message)
	}
	return p.Handler.Handle(ctx, r)
}

func (p panicCatcher) WithAttrs(a []slog.Attr) slog.Handler {
	return panicCatcher{p.Handler.WithAttrs(a), p.seen}
}

func (p panicCatcher) WithGroup(g string) slog.Handler {
	return panicCatcher{p.Handler.WithGroup(g), p.seen}
}

func fuzzSeeds() [][]byte {
	plain := base64.StdEncoding.EncodeToString([]byte("\x00fuzz@local.test\x00" + testPassword))
	return [][]byte{
		[]byte("EHLO x\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\nSubject: s\r\n\r\nbody\r\n.\r\nQUIT\r\n"),
		[]byte("EHLO x\r\nMAIL FROM:<a@remote.test> BODY=BINARYMIME\r\nRCPT TO:<b@local.test>\r\nBDAT 5\r\n\x00\n\r.\nBDAT 3 LAST\r\nabcQUIT\r\n"),
		[]byte("EHLO x\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<postmaster>\r\nDATA\r\nhello\n.\nMAIL FROM:<x@y>\r\n.\r\n"),
		[]byte("EHLO x\r\nAUTH PLAIN " + plain + "\r\nATRN dialup.test\r\n220 hi\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n"),
		[]byte("EHLO x\r\nAUTH LOGIN\r\nZnV6eg==\r\nd3Jvbmc=\r\nETRN dialup.test\r\nETRN @test\r\nSTARTTLS\r\n\x16\x03\x01"),
		[]byte("HELO x\r\nRSET\r\nNOOP\r\nVRFY a\r\nEXPN b\r\nHELP\r\nFOO\r\n\r\nMAIL FROM:<webapp>\r\nRCPT TO:<\"a@b\"@local.test>\r\nRCPT TO:<@a:b@c>\r\nQUIT\r\n"),
		[]byte("EHLO x\r\nMAIL FROM:<a@remote.test> SIZE=99999999999 SMTPUTF8 REQUIRETLS RET=HDRS ENVID=x+2B\r\nRCPT TO:<b@local.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;x+2Bb@c\r\n"),
		[]byte("EHLO x\rMAIL\r\n"),
	}
}

// FuzzSession feeds random command streams to a live ingress (real TCP,
// real JetStream) and checks that no connection panics and that every
// connection and its goroutines go away. CI runs it briefly (.ci/run);
// the seeds are above and in testdata/fuzz/FuzzSession.
func FuzzSession(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	var seen atomic.Value
	h := panicCatcher{slog.NewTextHandler(io.Discard, nil), &seen}
	fx := startLogged(f, func(c *config.Config) {
		c.Domains = []config.Domain{{Name: "dialup.test", Type: config.DomainRemote, Hold: true}}
		withUsers(f, c, testUser(f, "fuzz@local.test", nil, []string{"dialup.test"}))
		c.Ingress.AllowInsecureAuth = true
		c.Ingress.ATRN = true
		c.Ingress.Timeout = config.Duration(3 * time.Second)
		c.Ingress.MaxMessageSize = 100 << 10
		c.Auth.FailLimit = 1 << 30
	}, nil, slog.New(h))
	publishHeld(f, fx.js, bus.Token("dialup.test"), "held1", "Subject: h\r\n\r\nx\r\n", "a@dialup.test")
	testutilWaitIdle(f, fx)
	runtime.GC()
	base := runtime.NumGoroutine()

	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", fx.addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		done := make(chan struct{})
		go func() { _, _ = io.Copy(io.Discard, c); close(done) }()
		_, _ = c.Write(in)
		_ = c.(*net.TCPConn).CloseWrite()
		<-done
		_ = c.Close()
		testutilWaitIdle(t, fx)
		if p := seen.Load(); p != nil {
			t.Fatalf("panic logged: %v", p)
		}
		testutil.WaitFor(t, 10*time.Second, "goroutines back to the baseline", func() bool {
			return runtime.NumGoroutine() <= base+10
		})
	})
}
