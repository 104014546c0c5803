package bus

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailroot/mailroot/internal/config"
	"github.com/mailroot/mailroot/internal/testutil"
)

func TestSetupRetriesOnlyTemporaryErrors(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("bus: create stream MAIL: %w", context.DeadlineExceeded), true},
		{fmt.Errorf("bus: create kv: %w", nats.ErrTimeout), true},
		{nats.ErrNoResponders, true},
		{&jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, true},
		{fmt.Errorf("bus: create stream MAIL: %w", &jetstream.APIError{Code: 400, ErrorCode: 10058, Description: "stream name already in use with a different configuration"}), false},
		{errors.New("bus: unknown consumer \"x\""), false},
	}
	for _, tc := range tests {
		if got := temporary(tc.err); got != tc.want {
			t.Errorf("temporary(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// A definite refusal is returned at once, not retried for SetupRetryFor.
func TestSetupFailsFastOnDefiniteError(t *testing.T) {
	n := testutil.StartNATS(t)
	_, js := n.Connect(t)
	start := time.Now()
	_, err := Setup(testutil.Context(t), js, config.Default(), "no-such-consumer")
	if err == nil {
		t.Fatal("Setup with an unknown consumer succeeded")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("a definite error took %v", d)
	}
}
