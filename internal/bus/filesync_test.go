package bus

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

// The sync by files fdatasyncs the MAIL stream's block after a write
// (and its directory when the block is new), nothing when nothing was
// written, and never the blocks of the other streams (events).
func TestFileSyncSyncsWhatChanged(t *testing.T) {
	n := testutil.StartNATS(t)
	_, js := n.Connect(t)
	ctx := t.Context()
	if _, err := Setup(ctx, js, config.Default()); err != nil {
		t.Fatal(err)
	}
	fs := newFileSync(n.Dir, MailStreams)
	defer fs.close()
	var synced, dirs []string
	var mu sync.Mutex // the blocks of one sync are synced side by side
	fs.datasync = func(f *os.File) error {
		mu.Lock()
		synced = append(synced, f.Name())
		mu.Unlock()
		return fdatasync(f)
	}
	fs.dirsync = func(d *os.File) error { dirs = append(dirs, d.Name()); return fsyncDir(d) }
	clock := time.Now()
	fs.now = func() time.Time { return clock }

	if _, err := js.Publish(ctx, SubjIn, []byte("a mail")); err != nil {
		t.Fatal(err)
	}
	Emit(js, Event{Type: EventReceived, QueueID: "q1"})
	if err := fs.sync(); err != nil {
		t.Fatal(err)
	}
	mailBlocks := func(paths []string) int {
		k := 0
		for _, p := range paths {
			if strings.HasSuffix(p, ".blk") && strings.Contains(p, filepath.Join("streams", StreamMail, "msgs")) {
				k++
			}
		}
		return k
	}
	if mailBlocks(synced) != 1 {
		t.Fatalf("after a write: synced %q, want the MAIL block", synced)
	}
	if slices.ContainsFunc(synced, func(p string) bool { return strings.Contains(p, StreamEvents) }) {
		t.Fatalf("synced an events block: %q", synced)
	}
	if !slices.ContainsFunc(dirs, func(p string) bool { return strings.HasSuffix(p, filepath.Join(StreamMail, "msgs")) }) {
		t.Fatalf("the new block's directory was not synced: %q", dirs)
	}

	// Nothing written, and past the recent window: nothing synced.
	synced = nil
	clock = clock.Add(2 * recentWindow)
	if err := fs.sync(); err != nil {
		t.Fatal(err)
	}
	if len(synced) != 0 {
		t.Fatalf("nothing written, yet synced %q", synced)
	}
	// A write: the block again.
	if _, err := js.Publish(ctx, SubjIn, []byte("another mail")); err != nil {
		t.Fatal(err)
	}
	if err := fs.sync(); err != nil {
		t.Fatal(err)
	}
	if mailBlocks(synced) != 1 {
		t.Fatalf("after the second write: synced %q", synced)
	}
}
