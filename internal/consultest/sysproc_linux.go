package consultest

import (
	"os/exec"
	"syscall"
)

// setSysProcAttr makes the kernel kill the agent if the test binary dies
// without running cleanups (a go test -timeout panic, a SIGKILL), so no
// orphaned agent keeps ports and CPU busy.
func setSysProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
