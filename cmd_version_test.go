package main

import (
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// runMailroot runs bin with args, no MAILROOT_* variable from the test's
// environment and env added, and returns its stdout, stderr and exit status.
func runMailroot(t *testing.T, bin string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	for _, kv := range cmd.Environ() {
		if !strings.HasPrefix(kv, "MAILROOT_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), errOut.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("mailroot %v: %v", args, err)
	}
	return out.String(), errOut.String(), 0
}

func TestVersionCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	for _, args := range [][]string{{"version"}, {"-version"}, {"--version"}} {
		out, errOut, code := runMailroot(t, bin, nil, args...)
		if code != 0 {
			t.Fatalf("mailroot %v: exit %d\n%s", args, code, errOut)
		}
		for _, want := range []string{"mailroot ", "commit:", "go:          " + runtime.Version(), "nats-server: v" + server.VERSION} {
			if !strings.Contains(out, want) {
				t.Errorf("mailroot %v does not say %q:\n%s", args, want, out)
			}
		}
	}
	if _, _, code := runMailroot(t, bin, nil, "version", "extra"); code != 2 {
		t.Errorf("mailroot version extra: exit %d, want 2", code)
	}
}
