package envelope

import (
	"testing"
	"time"
)

// A queue id tells when it was made, to the millisecond; ids of another
// shape tell nothing.
func TestQueueIDTime(t *testing.T) {
	for _, at := range []time.Time{time.UnixMilli(0), time.UnixMilli(1772600767123), time.Now().Truncate(time.Millisecond)} {
		id := queueIDAt(at)
		got, ok := QueueIDTime(id)
		if !ok || !got.Equal(at) {
			t.Errorf("QueueIDTime(%s) = %v %v, want %v", id, got, ok, at)
		}
	}
	for _, id := range []string{"", QueueIDFor("key"), "01M8VYHWMJ43X3Q8PE27JKA1D", "81M8VYHWMJ43X3Q8PE27JKA1DR", "01M8VYHWMJ43X3Q8PE27JKA1Du", "not-a-queue-id"} {
		if got, ok := QueueIDTime(id); ok {
			t.Errorf("QueueIDTime(%q) = %v, want no time", id, got)
		}
	}
}
