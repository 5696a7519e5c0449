package devstack

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The demo's fixed addresses (scripts/demo.sh, consul.json).
var demoAddrs = []string{"127.0.0.1:8500", "127.0.0.1:9090", "127.0.0.1:9841"}

// demoHangGuard bounds a demo run that never gets where it should: the
// first build of Consul alone can take minutes. It is no timing assertion.
const demoHangGuard = 5 * time.Minute

// takenDemoAddr returns a demo address something already listens on, or "".
func takenDemoAddr() string {
	for _, addr := range demoAddrs {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return addr
		}
	}
	return ""
}

// demoRun is scripts/demo.sh running in its own process group, as a
// terminal runs a foreground command, with its output collected.
type demoRun struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	line chan string // every line of output, in order
	done chan struct{}
	err  error // the exit status, once done is closed
}

func startDemo(t *testing.T, env ...string) *demoRun {
	t.Helper()
	d := &demoRun{line: make(chan string, 1024), done: make(chan struct{})}
	d.cmd = exec.Command("bash", filepath.Join(repoRoot(t), "scripts", "demo.sh"))
	d.cmd.Env = append(os.Environ(), env...)
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	r, w := io.Pipe()
	d.cmd.Stdout, d.cmd.Stderr = w, w
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			d.mu.Lock()
			d.out.WriteString(sc.Text() + "\n")
			d.mu.Unlock()
			select {
			case d.line <- sc.Text():
			default: // nobody waits for lines this late
			}
		}
		close(d.line)
	}()
	go func() {
		d.err = d.cmd.Wait()
		w.Close()
		close(d.done)
	}()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
			<-d.done
		}
	})
	return d
}

func (d *demoRun) output() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.out.String()
}

// waitLine waits for a line of output containing s.
func (d *demoRun) waitLine(t *testing.T, s string) {
	t.Helper()
	timeout := time.After(demoHangGuard)
	for {
		select {
		case l, ok := <-d.line:
			if !ok {
				<-d.done
				t.Fatalf("the demo ended (%v) before printing %q:\n%s", d.err, s, d.output())
			}
			if strings.Contains(l, s) {
				return
			}
		case <-timeout:
			t.Fatalf("no %q from the demo after %s:\n%s", s, demoHangGuard, d.output())
		}
	}
}

// wait waits for the demo to exit and returns its exit code.
func (d *demoRun) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-d.done:
	case <-time.After(demoHangGuard):
		t.Fatalf("the demo did not exit after %s:\n%s", demoHangGuard, d.output())
	}
	if exit, ok := d.err.(*exec.ExitError); ok {
		return exit.ExitCode()
	} else if d.err != nil {
		t.Fatal(d.err)
	}
	return 0
}

// TestDemo runs make demo's script as a user would: every URL it prints
// answers, and Ctrl-C (SIGINT to its process group) stops it cleanly.
func TestDemo(t *testing.T) {
	if addr := takenDemoAddr(); addr != "" {
		t.Skipf("%s is in use, the demo cannot run here (TestDemoPortTaken checks what it says then)", addr)
	}
	d := startDemo(t)
	d.waitLine(t, "demo: running; Ctrl-C stops")

	urls := regexp.MustCompile(`http://127\.0\.0\.1:\d+/\S*`).FindAllString(d.output(), -1)
	if len(urls) < 3 {
		t.Errorf("the demo printed %d URLs, want Prometheus's, the adapter's and Consul's:\n%s", len(urls), d.output())
	}
	for _, u := range urls {
		resp, err := http.Get(u)
		if err != nil {
			t.Errorf("the demo printed %s: %v", u, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("the demo printed %s, which answers %s", u, resp.Status)
		}
	}

	if err := syscall.Kill(-d.cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if code := d.wait(t); code != 0 {
		t.Errorf("after Ctrl-C the demo exited %d, want 0:\n%s", code, d.output())
	}
	if out := d.output(); strings.Contains(out, "exited; last lines") {
		t.Errorf("after Ctrl-C the demo reports a failure:\n%s", out)
	}
	// The demo waits for what it started before it exits.
	if addr := takenDemoAddr(); addr != "" {
		t.Errorf("%s is still served after the demo exited", addr)
	}
}

// A port the demo needs that something else holds: the demo refuses at
// once and names what holds it, rather than guessing "an earlier demo".
func TestDemoPortTaken(t *testing.T) {
	if addr := takenDemoAddr(); addr != "" {
		t.Skipf("%s is in use already", addr)
	}
	l, err := net.Listen("tcp", demoAddrs[1])
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	d := startDemo(t)
	if code := d.wait(t); code == 0 {
		t.Fatalf("the demo ran with %s taken:\n%s", demoAddrs[1], d.output())
	}
	out := d.output()
	self := fmt.Sprintf("pid %d", os.Getpid())
	if !strings.Contains(out, demoAddrs[1]) || !strings.Contains(out, self) {
		t.Errorf("the demo's message does not name %s and what holds it (%s, this test):\n%s", demoAddrs[1], self, out)
	}
	if strings.Contains(out, "earlier demo") {
		t.Errorf("the demo blames an earlier demo for this test's listener:\n%s", out)
	}
}
