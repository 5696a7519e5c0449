//go:build !linux

package consultest

import "os/exec"

// setSysProcAttr does nothing here: only Linux can tie the agent's life to
// the test binary's.
func setSysProcAttr(*exec.Cmd) {}
