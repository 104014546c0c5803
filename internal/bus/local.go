package bus

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"

	"github.com/mailroot/mailroot/internal/atomicfile"
)

// Local access (docs/DESIGN.md §7): the embedded server of `mailroot all`
// listens on the loopback with credentials only the data_dir's owner can
// read, so the tools on the same machine (`mailroot queue`, `mailq`)
// find it with no flags, as Postfix's mailq finds its queue.

// LocalAccessFile is the name, in data_dir, of the file naming the running
// embedded server: its URL and credentials, mode 0600. It exists while the
// server runs and is removed when it stops.
const LocalAccessFile = "nats-local.json"

// LocalUser is the user name of the generated local credentials.
const LocalUser = "mailroot-local"

// ErrNoLocalAccess means no embedded server announced itself in data_dir.
var ErrNoLocalAccess = errors.New("bus: no local server")

// LocalAccess is the content of LocalAccessFile.
type LocalAccess struct {
	// URL is the server's client URL, nats://host:port.
	URL string `json:"url"`
	// User and Password, or Token, authenticate to it (all may be empty
	// when the listener has no authentication).
	User     string `json:"user,omitempty"`
	Password string `json:"password,omitempty"`
	Token    string `json:"token,omitempty"`
	// PID is the process that runs the server, for the operator.
	PID int `json:"pid,omitempty"`
}

// NewLocalPassword returns a random password for the local listener.
func NewLocalPassword() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("bus: local password: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// LocalURL is the URL a client on this machine uses to reach a listener
// bound to addr: an unspecified address (0.0.0.0, ::) is reached on the
// loopback.
func LocalURL(addr net.Addr) (string, error) {
	ta, ok := addr.(*net.TCPAddr)
	if !ok || ta.Port == 0 {
		return "", fmt.Errorf("bus: local url: listener address %v is not host:port", addr)
	}
	ip := ta.IP
	if ip == nil || ip.IsUnspecified() {
		ip = net.IPv4(127, 0, 0, 1)
		if ta.IP != nil && ta.IP.To4() == nil {
			ip = net.IPv6loopback
		}
	}
	return "nats://" + net.JoinHostPort(ip.String(), fmt.Sprint(ta.Port)), nil
}

// WriteLocalAccess writes a to dataDir/LocalAccessFile, mode 0600, atomically:
// a reader sees the old file or the whole new one, never half of it.
func WriteLocalAccess(dataDir string, a LocalAccess) error {
	data, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return fmt.Errorf("bus: local access: %w", err)
	}
	path := filepath.Join(dataDir, LocalAccessFile)
	if err := atomicfile.WriteBytes(path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("bus: write %s: %w", path, err)
	}
	return nil
}

// RemoveLocalAccess removes dataDir/LocalAccessFile; a missing file is no error.
func RemoveLocalAccess(dataDir string) error {
	path := filepath.Join(dataDir, LocalAccessFile)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("bus: remove %s: %w", path, err)
	}
	return nil
}

// ReadLocalAccess reads dataDir/LocalAccessFile. A missing file is
// ErrNoLocalAccess.
func ReadLocalAccess(dataDir string) (LocalAccess, error) {
	path := filepath.Join(dataDir, LocalAccessFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return LocalAccess{}, fmt.Errorf("%w: %s does not exist (is `mailroot all` running on this data_dir?)", ErrNoLocalAccess, path)
	}
	if err != nil {
		return LocalAccess{}, fmt.Errorf("bus: read %s: %w", path, err)
	}
	a, err := ParseLocalAccess(data)
	if err != nil {
		return LocalAccess{}, fmt.Errorf("bus: %s: %w", path, err)
	}
	return a, nil
}

// ParseLocalAccess parses the content of LocalAccessFile and checks that its
// URL is a nats:// URL with a host and port and no credentials of its own.
func ParseLocalAccess(data []byte) (LocalAccess, error) {
	var a LocalAccess
	if err := json.Unmarshal(data, &a); err != nil {
		return LocalAccess{}, fmt.Errorf("not a local access file: %w", err)
	}
	u, err := url.Parse(a.URL)
	if err != nil {
		return LocalAccess{}, fmt.Errorf("url %q: %w", a.URL, err)
	}
	if u.Scheme != "nats" || u.Port() == "" || u.Hostname() == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return LocalAccess{}, fmt.Errorf("url %q is not nats://host:port", a.URL)
	}
	if a.Token != "" && (a.User != "" || a.Password != "") {
		return LocalAccess{}, errors.New("both a token and a user/password")
	}
	return a, nil
}
