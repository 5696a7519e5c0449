package adapterproc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/repo"
)

// StopTimeout is how long Stop waits after SIGTERM before SIGKILL.
const StopTimeout = 5 * time.Second

// Build builds ./cmd/consul-sd-adapter of the module in root into dir as
// `make build` does, and returns the binary's path.
func Build(ctx context.Context, root, dir string) (string, error) {
	bin := filepath.Join(dir, "consul-sd-adapter")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/consul-sd-adapter")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
}

// RunTests is a TestMain for tests that run the real binary: it builds it
// into a temporary directory, stores its path in bin, runs the tests and
// removes the directory. It returns the exit code for os.Exit.
func RunTests(m *testing.M, bin *string) int {
	root, err := repo.Root()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dir, err := os.MkdirTemp("", "consul-sd-adapter-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if *bin, err = Build(context.Background(), root, dir); err != nil {
		fmt.Fprintln(os.Stderr, "building the adapter:", err)
		return 1
	}
	return m.Run()
}

// Command is bin with args, in an environment without the machine's own
// Consul settings (CONSUL_*), killed if this process dies.
func Command(ctx context.Context, bin string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = consultest.Env()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// Adapter is the adapter running as a service.
type Adapter struct {
	Out string // its output file; empty with a configuration file, whose entries name theirs
	Web string // the address of its web server
	Log string // the file its stdout and stderr go to

	cmd  *exec.Cmd
	done chan struct{}
	http *http.Client
}

// Start starts bin against the Consul agent at consul, writing out, with
// its web server on a free loopback address, then args; its output goes to
// the file logFile. Stop it with Stop.
func Start(bin, consul, out, logFile string, args ...string) (*Adapter, error) {
	return start(bin, out, logFile, append([]string{"--listen.address=" + consul, "--output.file=" + out}, args...))
}

// StartConfig starts bin as Start does, but from the configuration file
// config: --config.file refuses --listen.address and --output.file, as its
// entries say where Consul is and which files to write.
func StartConfig(bin, config, logFile string, args ...string) (*Adapter, error) {
	return start(bin, "", logFile, append([]string{"--config.file=" + config}, args...))
}

func start(bin, out, logFile string, args []string) (*Adapter, error) {
	web, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	a := &Adapter{
		Out:  out,
		Web:  web,
		Log:  logFile,
		done: make(chan struct{}),
		// No keep-alive: an idle connection of ours would be a goroutine
		// in the adapter, counted in go_goroutines.
		http: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
	}
	f, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Not tied to a context: Stop stops it with SIGTERM, so that it can
	// shut down as in production.
	a.cmd = Command(context.Background(), bin, append([]string{"--web.listen-address=" + web}, args...)...)
	a.cmd.Stdout, a.cmd.Stderr = f, f
	if err := a.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { a.cmd.Wait(); close(a.done) }() //nolint:errcheck // read through ProcessState
	return a, nil
}

// WaitReady waits until /-/ready answers 200, for at most timeout.
func (a *Adapter) WaitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		resp, err := a.http.Get("http://" + a.Web + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("adapter not ready after %s; log tail:\n%s", timeout, a.LogTail())
		case <-a.done:
			return fmt.Errorf("adapter exited; log tail:\n%s", a.LogTail())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Metrics reads /metrics into series (`name{labels}`) -> value.
func (a *Adapter) Metrics() (map[string]float64, error) {
	resp, err := a.http.Get("http://" + a.Web + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m, sc.Err()
}

// Metric reads one sample, e.g. `name` or `name{label="value"}`, from
// /metrics.
func (a *Adapter) Metric(series string) (float64, error) {
	m, err := a.Metrics()
	if err != nil {
		return 0, err
	}
	v, ok := m[series]
	if !ok {
		return 0, errors.New(series + " not found in /metrics")
	}
	return v, nil
}

// PeakRSS returns the most memory the adapter has had resident so far, in
// bytes.
func (a *Adapter) PeakRSS() (int64, error) { return PeakRSS(a.cmd.Process.Pid) }

// PeakRSS returns the most memory process pid has had resident since it
// started its program (VmHWM in /proc/<pid>/status), in bytes. Unlike the
// ru_maxrss a parent gets from wait, it does not count the parent: Go
// starts children with vfork, and Linux carries the parent's peak over
// into the child's at exec.
func PeakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmHWM in /proc status")
}

// Stop sends SIGTERM, waits up to StopTimeout, then kills the adapter. It
// returns the exit status: -1 if it had to be killed.
func (a *Adapter) Stop() int {
	select {
	case <-a.done:
		return a.cmd.ProcessState.ExitCode()
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
		return a.cmd.ProcessState.ExitCode()
	case <-time.After(StopTimeout):
		_ = a.cmd.Process.Kill()
		<-a.done
		return -1
	}
}

// LogTail is about the last 2 KiB of the adapter's log, from a line start.
func (a *Adapter) LogTail() string { return tail(a.Log, 2<<10) }

// FreeAddr returns a loopback address with a port that was free just now.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// tail returns up to the last n bytes of a file, from its first whole line
// if it had to cut.
func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		f.Seek(fi.Size()-n, 0) //nolint:errcheck // best effort
	}
	b := make([]byte, n)
	k, _ := f.Read(b)
	s := string(b[:k])
	if i := strings.IndexByte(s, '\n'); k == int(n) && i >= 0 {
		s = s[i+1:]
	}
	return s
}

// BasicAuthWebConfig writes a --web.config.file (exporter-toolkit format)
// that lets user in with password, and returns its path.
func BasicAuthWebConfig(t testing.TB, user, password string) string {
	t.Helper()
	// The lowest cost: the hash guards nothing real, and tests stay fast.
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "web.yml")
	if err := os.WriteFile(path, []byte("basic_auth_users:\n  "+user+": "+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
