package consultest

import (
	"os"
	"path/filepath"
	"testing"
)

// Version is the Consul version the tests run against. It must equal the
// github.com/hashicorp/consul requirement in tools/consul/go.mod, which is
// the version tools/consul/build.sh builds; TestVersionMatchesToolsModule
// keeps the two in step.
const Version = "v1.22.3"

// Binary returns the path of the Consul agent binary: $CONSUL_BIN if set,
// else the path tools/consul/build.sh builds into
// (${XDG_CACHE_HOME:-$HOME/.cache}/consul-sd-adapter/consul-<Version>).
// It fails the test when the binary is missing: skipping would let a
// machine without Consul report integration tests as passing.
func Binary(t testing.TB) string {
	t.Helper()
	path, err := binaryPath()
	if err != nil {
		t.Fatalf("locating consul binary: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		t.Fatalf("consul binary not found at %s: run `make consul`", path)
	}
	return path
}

func binaryPath() (string, error) {
	if p := os.Getenv("CONSUL_BIN"); p != "" {
		return p, nil
	}
	// Same rule as build.sh's ${XDG_CACHE_HOME:-$HOME/.cache}: empty counts
	// as unset.
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", err
		}
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "consul-sd-adapter", "consul-"+Version), nil
}
