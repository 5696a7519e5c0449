package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/adapterproc"
)

const (
	onceTimeout     = 5 * time.Minute
	daemonReadyWait = 2 * time.Minute
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
	bin, err := adapterproc.Build(ctx, root, dir)
	if err != nil {
		return nil, err
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
	cmd := adapterproc.Command(ctx, b.path, append([]string{
		"--listen.address=" + consul, "--output.file=" + out, "--once", "--log.level=warn",
	}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return onceResult{}, err
	}
	peak := watchPeakRSS(cmd.Process.Pid)
	err := cmd.Wait()
	wall := time.Since(start)
	maxRSS := peak()
	if err != nil {
		return onceResult{}, fmt.Errorf("adapter --once %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	st := cmd.ProcessState
	res := onceResult{Wall: wall, CPU: st.UserTime() + st.SystemTime(), MaxRSS: maxRSS}
	n, err := countTargets(out)
	if err != nil {
		return res, err
	}
	res.Targets = n
	return res, nil
}

// peakPoll is how often watchPeakRSS reads a child's peak RSS.
const peakPoll = 2 * time.Millisecond

// watchPeakRSS follows the peak RSS of process pid until the returned
// function is called after the process ended; it returns the last peak
// read. The kernel keeps the high-water mark, so only growth in the last
// poll interval before exit can be missed. (wait's ru_maxrss would count
// the harness itself, see adapterproc.PeakRSS.)
func watchPeakRSS(pid int) (stop func() int64) {
	var peak atomic.Int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			if v, err := adapterproc.PeakRSS(pid); err == nil {
				peak.Store(max(peak.Load(), v))
			}
			select {
			case <-done:
				return
			case <-time.After(peakPoll):
			}
		}
	})
	return func() int64 {
		close(done)
		wg.Wait()
		return peak.Load()
	}
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

// startDaemon starts the adapter against consul, writing dir/name.json and
// logging to dir/name.log; sc stops it.
func (b *adapterBin) startDaemon(sc *scope, consul, dir, name string, args []string) (*adapterproc.Adapter, error) {
	out := filepath.Join(dir, name+".json")
	os.Remove(out)
	return sc.daemon(adapterproc.Start(b.path, consul, out, filepath.Join(dir, name+".log"), args...))
}

// startConfigDaemon starts the adapter from the configuration file config,
// logging to dir/name.log; sc stops it.
func (b *adapterBin) startConfigDaemon(sc *scope, config, dir, name string, args []string) (*adapterproc.Adapter, error) {
	return sc.daemon(adapterproc.StartConfig(b.path, config, filepath.Join(dir, name+".log"), args...))
}
