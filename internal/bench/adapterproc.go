package main

import (
	"bufio"
	"context"
	"encoding/json"
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
	"time"
)

const (
	onceTimeout       = 5 * time.Minute
	daemonStopTimeout = 5 * time.Second
	daemonReadyWait   = 2 * time.Minute
)

// adapterBin is the adapter binary built from this checkout.
type adapterBin struct {
	path string
	// hasWatch says whether it has --[no-]consul.watch.
	hasWatch bool
}

// buildAdapter builds ./cmd/consul-sd-adapter into dir as `make build` does,
// and reads its --help for the flags that decide what can be measured.
func buildAdapter(ctx context.Context, root, dir string) (*adapterBin, error) {
	bin := filepath.Join(dir, "consul-sd-adapter")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/consul-sd-adapter")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build: %v\n%s", err, out)
	}
	help, err := exec.CommandContext(ctx, bin, "--help").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s --help: %v\n%s", bin, err, help)
	}
	return &adapterBin{path: bin, hasWatch: strings.Contains(string(help), "consul.watch")}, nil
}

// sequentialArgs are the flags that make the adapter behave like the
// upstream example: one request at a time, no early refresh.
func (b *adapterBin) sequentialArgs() []string {
	args := []string{"--consul.max-concurrency=1"}
	if b.hasWatch {
		args = append(args, "--no-consul.watch")
	}
	return args
}

func (b *adapterBin) command(ctx context.Context, consul, out string, args []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, b.path, append([]string{"--listen.address=" + consul, "--output.file=" + out}, args...)...)
	cmd.Env = envWithout("CONSUL_")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// onceResult is one `--once` run.
type onceResult struct {
	Wall    time.Duration
	CPU     time.Duration // user + system
	MaxRSS  int64         // bytes
	Targets int
}

// runOnce runs the adapter with --once against consul and waits for it. The
// wall time runs from exec to exit, after the file is written.
func (b *adapterBin) runOnce(ctx context.Context, consul, dir string, args []string) (onceResult, error) {
	out := filepath.Join(dir, "once.json")
	os.Remove(out)
	ctx, cancel := context.WithTimeout(ctx, onceTimeout)
	defer cancel()
	cmd := b.command(ctx, consul, out, append([]string{"--once", "--log.level=warn"}, args...))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return onceResult{}, err
	}
	err := cmd.Wait()
	wall := time.Since(start)
	if err != nil {
		return onceResult{}, fmt.Errorf("adapter --once %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	st := cmd.ProcessState
	res := onceResult{Wall: wall, CPU: st.UserTime() + st.SystemTime()}
	if ru, ok := st.SysUsage().(*syscall.Rusage); ok {
		res.MaxRSS = ru.Maxrss * 1024
	}
	n, err := countTargets(out)
	if err != nil {
		return res, err
	}
	res.Targets = n
	return res, nil
}

// fileEntry is one entry of a file_sd file.
type fileEntry struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

func readEntries(path string) ([]fileEntry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var entries []fileEntry
	if err := json.Unmarshal(b, &entries); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return entries, nil
}

func countTargets(path string) (int, error) {
	entries, err := readEntries(path)
	n := 0
	for _, e := range entries {
		n += len(e.Targets)
	}
	return n, err
}

// daemon is the adapter running as a service.
type daemon struct {
	Out string
	web string
	cmd *exec.Cmd
	log string

	done chan struct{}
}

// startDaemon starts the adapter against consul; sc stops it.
func (b *adapterBin) startDaemon(sc *scope, consul, dir, name string, args []string) (*daemon, error) {
	web, err := freeAddr()
	if err != nil {
		return nil, err
	}
	d := &daemon{
		Out:  filepath.Join(dir, name+".json"),
		web:  web,
		log:  filepath.Join(dir, name+".log"),
		done: make(chan struct{}),
	}
	os.Remove(d.Out)
	f, err := os.Create(d.log)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Not tied to a context: the scope stops it with SIGTERM, so that it
	// can shut down as in production.
	d.cmd = b.command(context.Background(), consul, d.Out, append([]string{"--web.listen-address=" + d.web}, args...))
	d.cmd.Stdout, d.cmd.Stderr = f, f
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { d.cmd.Wait(); close(d.done) }() //nolint:errcheck // stop reports nothing
	sc.cleanup(d.stop)
	return d, nil
}

// waitReady waits until the adapter has written its first file.
func (d *daemon) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, daemonReadyWait)
	defer cancel()
	for {
		resp, err := http.Get("http://" + d.web + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("adapter not ready after %s; log tail:\n%s", daemonReadyWait, tail(d.log, 2<<10))
		case <-d.done:
			return fmt.Errorf("adapter exited; log tail:\n%s", tail(d.log, 2<<10))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// metric reads one unlabelled sample from the adapter's /metrics.
func (d *daemon) metric(name string) (float64, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + d.web + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New(name + " not found in /metrics")
}

func (d *daemon) stop() {
	select {
	case <-d.done:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(daemonStopTimeout):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
}

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// envWithout is the environment without variables starting with prefix.
func envWithout(prefix string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, prefix) {
			env = append(env, kv)
		}
	}
	return env
}

// tail returns up to the last n bytes of a file.
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
	return string(b[:k])
}
