package bus

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"testing"
)

func TestLocalAccessRoundTrip(t *testing.T) {
	dir := t.TempDir()
	want := LocalAccess{URL: "nats://127.0.0.1:4222", User: LocalUser, Password: "secret", PID: 7}
	if err := WriteLocalAccess(dir, want); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, LocalAccessFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("stat: %v, mode %v; want 0600", err, st.Mode().Perm())
	}
	got, err := ReadLocalAccess(dir)
	if err != nil || got != want {
		t.Fatalf("read %+v, %v; want %+v", got, err, want)
	}
	if err := RemoveLocalAccess(dir); err != nil {
		t.Fatal(err)
	}
	if err := RemoveLocalAccess(dir); err != nil {
		t.Fatalf("removing a missing file: %v", err)
	}
	if _, err := ReadLocalAccess(dir); err == nil {
		t.Fatal("read a removed file")
	}
}

func TestParseLocalAccessRejects(t *testing.T) {
	for _, s := range []string{
		``, `{`, `[]`, `{"url":""}`, `{"url":"http://127.0.0.1:4222"}`, `{"url":"nats://127.0.0.1"}`,
		`{"url":"nats://u:p@127.0.0.1:4222"}`, `{"url":"nats://127.0.0.1:4222/x"}`,
		`{"url":"nats://127.0.0.1:4222","token":"t","user":"u"}`,
	} {
		if a, err := ParseLocalAccess([]byte(s)); err == nil {
			t.Errorf("ParseLocalAccess(%q) = %+v, want an error", s, a)
		}
	}
}

func TestLocalURL(t *testing.T) {
	for _, c := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5}, "nats://127.0.0.1:5"},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 5}, "nats://127.0.0.1:5"},
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 5}, "nats://[::1]:5"},
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 5}, "nats://192.0.2.1:5"},
	} {
		if got, err := LocalURL(c.addr); err != nil || got != c.want {
			t.Errorf("LocalURL(%v) = %q, %v; want %q", c.addr, got, err, c.want)
		}
	}
	if _, err := LocalURL(&net.UnixAddr{Name: "x"}); err == nil {
		t.Error("LocalURL of a unix address")
	}
}

func FuzzParseLocalAccess(f *testing.F) {
	f.Add([]byte(`{"url":"nats://127.0.0.1:4222","user":"mailroot-local","password":"p","pid":1}`))
	f.Add([]byte(`{"url":"nats://[::1]:4222","token":"t"}`))
	f.Add([]byte(`{"url":"nats://127.0.0.1:0"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := ParseLocalAccess(data)
		if err != nil {
			return
		}
		// What parses is written back the same (WriteLocalAccess's
		// encoding) and parses again to the same thing.
		data, err = json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		b, err := ParseLocalAccess(data)
		if err != nil || b != a {
			t.Fatalf("re-parse of %s: %+v, %v; want %+v", data, b, err, a)
		}
	})
}
