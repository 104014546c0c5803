package bus

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// BucketListeners is the KV bucket in which every ingress process announces
// the addresses it listens on, so that every delivery process, on any
// host, knows them as itself and never delivers mail to them (a loop;
// docs/DESIGN.md §2). The key is the process's node name (host name and
// process id, as in mta-sessions), the value a ListenerInfo written with a
// ListenersTTL per-key TTL and rewritten every ListenersRefresh, so the
// entry of a process that died vanishes by itself. A process that stops
// overwrites its entry with an empty value that expires in a second.
const BucketListeners = "mta-listeners"

// ListenersTTL is the life of an entry of BucketListeners unless it is
// rewritten; ListenersRefresh is how often an ingress rewrites it. A
// reader also ignores an entry older than ListenersTTL (a watcher can miss
// the expiry marker while disconnected).
const (
	ListenersTTL     = 90 * time.Second
	ListenersRefresh = 30 * time.Second
)

// ListenerInfo is what one ingress process announces.
type ListenerInfo struct {
	// Node names the process (the key), e.g. "mx1-4711".
	Node string `json:"node"`
	// Machine is the operating system's host name (os.Hostname): loopback
	// addresses are ours only for a reader on the same machine.
	Machine string `json:"machine,omitempty"`
	// Hostname is the process's configured host name.
	Hostname string `json:"hostname"`
	// Sites are the process's sites with the addresses they are bound to.
	Sites []ListenerSite `json:"sites"`
	// Interfaces are the addresses of the machine's interfaces, given when
	// some site is bound to all addresses (0.0.0.0, [::]).
	Interfaces []string `json:"interfaces,omitempty"`
}

// ListenerSite is one site of a ListenerInfo.
type ListenerSite struct {
	Name     string `json:"name"`
	Hostname string `json:"hostname"`
	// Addrs are the bound addresses, "ip:port" (port 0 resolved).
	Addrs []string `json:"addrs"`
}

// EnsureListeners creates or updates the mta-listeners bucket.
func EnsureListeners(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:         BucketListeners,
		Description:    "listen addresses of every ingress process, for delivery's loop check",
		History:        1,
		Storage:        jetstream.FileStorage,
		Replicas:       max(replicas, 1),
		LimitMarkerTTL: time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("bus: create kv %s: %w", BucketListeners, err)
	}
	return kv, nil
}
