package consultest

import (
	"bufio"
	"os"
	"strings"
	"testing"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/repo"
)

// TestVersionMatchesToolsModule keeps Version equal to the Consul version
// tools/consul/build.sh builds, so Binary looks where the build puts it.
func TestVersionMatchesToolsModule(t *testing.T) {
	path := repo.Path(t.Fatal, "tools", "consul", "go.mod")
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
