// Package repo locates the repository for tests and harnesses that read its
// files or build its binary.
package repo

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// Root returns the directory of the main module's go.mod. It asks the go
// command once per process, so it works from any package directory.
var Root = sync.OnceValues(func() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the module: run from the repository")
	}
	return filepath.Dir(gomod), nil
})

// Path returns rel below the repository root, failing the caller's test
// (through fatal, usually t.Fatal) when the root cannot be found.
func Path(fatal func(...any), rel ...string) string {
	root, err := Root()
	if err != nil {
		fatal(err)
	}
	return filepath.Join(append([]string{root}, rel...)...)
}
