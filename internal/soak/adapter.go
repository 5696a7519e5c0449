package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// moduleRoot finds the directory of go.mod, from the working directory up.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory: run from the repository")
		}
		dir = parent
	}
}

// buildAdapter builds ./cmd/consul-sd-adapter into dir.
func buildAdapter(ctx context.Context, dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "consul-sd-adapter")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/consul-sd-adapter")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
}

// daemon is the adapter running as a service.
type daemon struct {
	out  string
	web  string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
	http *http.Client
}

func startDaemon(bin, consul, dir string, args ...string) (*daemon, error) {
	web, err := freeAddr()
	if err != nil {
		return nil, err
	}
	d := &daemon{
		out:  filepath.Join(dir, "custom_sd.json"),
		web:  web,
		log:  filepath.Join(dir, "adapter.log"),
		done: make(chan struct{}),
		// No keep-alive: an idle connection of ours would be a goroutine
		// in the adapter, counted in go_goroutines.
		http: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
	}
	f, err := os.Create(d.log)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	d.cmd = exec.Command(bin, append([]string{
		"--listen.address=" + consul, "--output.file=" + d.out, "--web.listen-address=" + d.web,
	}, args...)...)
	d.cmd.Stdout, d.cmd.Stderr = f, f
	d.cmd.Env = envWithout("CONSUL_")
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { d.cmd.Wait(); close(d.done) }() //nolint:errcheck // read through ProcessState
	return d, nil
}

// waitReady waits until /-/ready answers 200.
func (d *daemon) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := d.http.Get("http://" + d.web + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-d.done:
			return fmt.Errorf("adapter exited; log tail:\n%s", tail(d.log, 2<<10))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("adapter not ready after %s; log tail:\n%s", timeout, tail(d.log, 2<<10))
		}
	}
}

// metrics reads /metrics into series -> value. Histogram _count series of
// consul_request_duration_seconds are summed into "consul_requests".
func (d *daemon) metrics() (map[string]float64, error) {
	resp, err := d.http.Get("http://" + d.web + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
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
		series := line[:i]
		m[series] = v
		if strings.HasPrefix(series, "consul_sd_adapter_consul_request_duration_seconds_count{") {
			m["consul_requests"] += v
		}
	}
	return m, sc.Err()
}

// stopTimeout is how long stop waits after SIGTERM before SIGKILL.
const stopTimeout = 5 * time.Second

// stop sends SIGTERM and returns the exit status (-1 if it had to be killed).
func (d *daemon) stop() int {
	select {
	case <-d.done:
		return d.cmd.ProcessState.ExitCode()
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return d.cmd.ProcessState.ExitCode()
	case <-time.After(stopTimeout):
		_ = d.cmd.Process.Kill()
		<-d.done
		return -1
	}
}

// view is what a file, or Consul, says about each instance:
// "node/service-id" -> address, health, tags and node meta.
type view map[string]string

func describe(addr, health, tags, rack string) string {
	return fmt.Sprintf("%s health=%s tags=%s rack=%s", addr, health, tags, rack)
}

// fileView decodes the output file with Prometheus's own decoder.
func fileView(path string) (view, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var groups []*targetgroup.Group
	if err := json.Unmarshal(data, &groups); err != nil {
		return nil, fmt.Errorf("file_sd cannot decode %s: %w", path, err)
	}
	v := view{}
	for _, g := range groups {
		l := g.Labels
		for _, t := range g.Targets {
			key := string(l["__meta_consul_node"]) + "/" + string(l["__meta_consul_service_id"])
			if _, dup := v[key]; dup {
				return nil, fmt.Errorf("%s lists %s twice", path, key)
			}
			v[key] = describe(string(t["__address__"]), string(l["__meta_consul_health"]),
				string(l["__meta_consul_tags"]), string(l["__meta_consul_metadata_rack"]))
		}
	}
	return v, nil
}

// consulView asks Consul what the file should say.
func consulView(client *api.Client) (view, error) {
	services, _, err := client.Catalog().Services(nil)
	if err != nil {
		return nil, err
	}
	v := view{}
	for name := range services {
		if name == "consul" {
			continue
		}
		entries, _, err := client.Health().Service(name, "", false, nil)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			host := e.Service.Address
			if host == "" {
				host = e.Node.Address
			}
			v[e.Node.Node+"/"+e.Service.ID] = describe(net.JoinHostPort(host, strconv.Itoa(e.Service.Port)),
				e.Checks.AggregatedStatus(), ","+strings.Join(e.Service.Tags, ",")+",", e.Node.Meta["rack"])
		}
	}
	return v, nil
}

// diff describes how got differs from want, a few lines at most.
func diff(got, want view) string {
	var lines []string
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if g, ok := got[k]; !ok {
			lines = append(lines, "  missing "+k+": "+want[k])
		} else if g != want[k] {
			lines = append(lines, "  wrong   "+k+": "+g+", want "+want[k])
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			lines = append(lines, "  extra   "+k+": "+got[k])
		}
	}
	if len(lines) > 10 {
		lines = append(lines[:10], fmt.Sprintf("  ... and %d more", len(lines)-10))
	}
	return strings.Join(lines, "\n")
}

// freeAddr returns a loopback address with a port that was free just now.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// envWithout is the environment without the variables starting with prefix,
// so that the machine's own Consul settings cannot leak in.
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
	s := string(b[:k])
	if i := strings.IndexByte(s, '\n'); k == int(n) && i >= 0 {
		s = s[i+1:] // from the first whole line
	}
	return s
}
