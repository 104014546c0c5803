package main

// `mailroot version` says which build is running: the first thing to
// check on a server, and the first line of a bug report.

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/nats-io/nats-server/v2/server"
)

const natsServerModule = "github.com/nats-io/nats-server/v2"

func versionCommand(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintln(stderr, "usage: mailroot version")
		return 2
	}
	fmt.Fprint(stdout, versionText())
	return 0
}

// versionText is the module version, the VCS state the binary was built
// from, and the Go and nats-server versions compiled in.
func versionText() string {
	version, commit, natsVersion := "(devel)", "", "v"+server.VERSION
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		var rev, at, modified string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				at = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
		if rev != "" {
			commit = rev
			if at != "" {
				commit += " " + at
			}
			if modified == "true" {
				commit += " (modified)"
			}
		}
		for _, d := range bi.Deps {
			if d.Path == natsServerModule {
				natsVersion = d.Version
				if r := d.Replace; r != nil && r.Version != "" {
					natsVersion = r.Version
				} else if r != nil {
					natsVersion += " (replaced by " + r.Path + ")"
				}
			}
		}
	}
	if commit == "" {
		commit = "unknown (built without VCS information)"
	}
	return fmt.Sprintf("mailroot %s\ncommit:      %s\ngo:          %s %s/%s\nnats-server: %s\n",
		version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH, natsVersion)
}
