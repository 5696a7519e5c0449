package consultest

import (
	"fmt"
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
	path, err := BinaryPath()
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// BinaryPath is Binary for programs that are not tests.
func BinaryPath() (string, error) {
	path, err := binaryPath()
	if err != nil {
		return "", err
	}
	if fi, err := os.Stat(path); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("consul binary not found at %s: run `make consul`", path)
	}
	return path, nil
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
