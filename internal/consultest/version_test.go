package consultest

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestVersionMatchesToolsModule keeps Version equal to the Consul version
// tools/consul/build.sh builds, so Binary looks where the build puts it.
func TestVersionMatchesToolsModule(t *testing.T) {
	path := findUp(t, filepath.Join("tools", "consul", "go.mod"))
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// Both `require mod v` and a line inside a require block.
		fields := strings.Fields(strings.TrimPrefix(strings.TrimSpace(sc.Text()), "require "))
		if len(fields) >= 2 && fields[0] == "github.com/hashicorp/consul" {
			got = fields[1]
			break
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if got != Version {
		t.Errorf("%s requires github.com/hashicorp/consul %q, consultest.Version is %q", path, got, Version)
	}
}

// findUp returns the first existing rel below the working directory or one
// of its parents.
func findUp(t *testing.T, rel string) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		p := filepath.Join(dir, rel)
		if _, err := os.Stat(p); err == nil {
			return p
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("%s not found above the working directory", rel)
		}
		dir = parent
	}
}
