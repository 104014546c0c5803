package bus

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mailroot/mailroot/internal/testutil"
)

// A start the embedded server cannot finish returns the server's own
// reason (which it gives through its logger's Fatalf and then never
// becomes ready), not a timeout.
func TestStartEmbeddedReportsFatal(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		o    EmbeddedOptions
		want []string
	}{
		{"listen address in use", EmbeddedOptions{StoreDir: t.TempDir(), Listen: busy.Addr().String()}, []string{busy.Addr().String(), "address already in use"}},
		{"store is a file", EmbeddedOptions{StoreDir: file}, []string{"Can't start JetStream", "not a directory"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ns, err := StartEmbedded(tt.o, testutil.Logger(t))
			if err == nil {
				ns.Shutdown()
				t.Fatal("started")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// A good start still waits for the server, listening or not.
func TestStartEmbeddedReady(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	for _, listen := range []string{"", addr} {
		ns, err := StartEmbedded(EmbeddedOptions{StoreDir: t.TempDir(), Listen: listen}, testutil.Logger(t))
		if err != nil {
			t.Fatalf("listen %q: %v", listen, err)
		}
		nc, err := ConnectInProcess(ns, "test")
		if err != nil {
			t.Fatal(err)
		}
		nc.Close()
		ns.Shutdown()
		ns.WaitForShutdown()
	}
}
