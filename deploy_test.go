package main

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/mailroot/mailroot/internal/config"
)

// The configurations the compose files mount must load: a renamed key
// would otherwise only show when a container refuses to start.
func TestComposeConfigsLoad(t *testing.T) {
	for _, path := range []string{"deploy/compose.toml", "ci/e2e.toml"} {
		t.Run(path, func(t *testing.T) {
			cfg, err := config.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(cfg.Ingress.Listen, "0.0.0.0:25") {
				t.Errorf("ingress.listen = %v: the container must listen on all addresses", cfg.Ingress.Listen)
			}
			if cfg.LogFormat != "json" {
				t.Errorf("log_format = %q, containers log JSON", cfg.LogFormat)
			}
		})
	}
}

// The compose files use only what docker-compose 1.29 (Debian 12) and
// Compose v2+ both accept; `docker-compose config -q` in
// ci/compose-e2e.sh checks the schema where 1.29 is installed, this
// catches the known traps everywhere.
func TestComposeFilesPortable(t *testing.T) {
	rules := []struct {
		re  *regexp.Regexp
		why string
	}{
		{regexp.MustCompile(`^name:`), "top-level name: is rejected by docker-compose 1.29 (use -p)"},
		{regexp.MustCompile(`^version:`), "version: is obsolete in Compose v2"},
		{regexp.MustCompile(`start_interval:`), "healthcheck.start_interval is rejected by 1.29 and needs engine 25"},
		{regexp.MustCompile(`\$\{[^}]*\$\{`), "nested ${A:-${B}} is silently wrong in 1.29"},
		{regexp.MustCompile(`^\s+required:`), "depends_on.*.required is rejected by 1.29"},
		{regexp.MustCompile(`^\s*(develop|include|attach):`), "v2-only key"},
		{regexp.MustCompile(`^\s+container_name:`), "a fixed container name cannot be scaled"},
	}
	for _, path := range []string{"docker-compose.yml", "compose.cluster.yml", "ci/compose.e2e.yml"} {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "#") {
				continue
			}
			for _, r := range rules {
				if r.re.MatchString(line) {
					t.Errorf("%s:%d: %s: %q", path, i+1, r.why, line)
				}
			}
		}
	}
	// Every published port of the base file can be moved to loopback by
	// the test scripts.
	b, _ := os.ReadFile("docker-compose.yml")
	for _, port := range regexp.MustCompile(`(?m)^\s+- "([^"]+)"$`).FindAllStringSubmatch(string(b), -1) {
		if !strings.HasPrefix(port[1], "${") {
			t.Errorf("docker-compose.yml: published port %q has no variable for its host side", port[1])
		}
	}
}
