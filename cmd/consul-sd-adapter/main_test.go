package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/prometheus/discovery/targetgroup"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/adapterproc"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/faultproxy"
)

// hangGuard bounds waits that only end if the program works; it is no
// timing assertion, just a limit on how long a broken build hangs a test.
const hangGuard = 30 * time.Second

var binary string

// TestMain builds the real binary once: these tests run it as a user would.
func TestMain(m *testing.M) { os.Exit(adapterproc.RunTests(m, &binary)) }

type result struct {
	code   int
	stdout string
	stderr string
}

// runBinary runs the program to completion with a scrubbed Consul environment.
func runBinary(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(consultest.Env(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if exit, ok := err.(*exec.ExitError); ok {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{code, stdout.String(), stderr.String()}
}

// readTargets decodes a file_sd file as Prometheus does and returns its
// targets by address.
func readTargets(t *testing.T, path string) map[string]map[string]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var groups []*targetgroup.Group
	if err := json.Unmarshal(data, &groups); err != nil {
		t.Fatalf("file_sd cannot decode %s: %v\n%s", path, err, data)
	}
	targets := map[string]map[string]string{}
	for _, g := range groups {
		for _, tg := range g.Targets {
			labels := map[string]string{}
			for k, v := range g.Labels {
				labels[string(k)] = string(v)
			}
			targets[string(tg["__address__"])] = labels
		}
	}
	return targets
}

// onceTargets fails the test unless r, a --once run, exited 0, and returns
// the targets it wrote to out.
func onceTargets(t *testing.T, r result, out string) map[string]map[string]string {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("--once exited %d: %s", r.code, r.stderr)
	}
	return readTargets(t, out)
}

func TestOnce(t *testing.T) {
	agent := consultest.Start(t)
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", Port: 80})
	agent.RegisterInstance(t, consultest.Instance{Node: "n2", NodeAddress: "10.0.0.2", Service: "web", Port: 80})
	out := filepath.Join(t.TempDir(), "custom_sd.json")

	r := runBinary(t, nil, "--once", "--listen.address="+agent.Addr, "--output.file="+out)
	targets := onceTargets(t, r, out)
	if len(targets) != 2 || targets["10.0.0.1:80"]["__meta_consul_node"] != "n1" || targets["10.0.0.2:80"]["__meta_consul_node"] != "n2" {
		t.Errorf("targets %v, want web on n1 and n2", targets)
	}

	t.Run("environment gives the address", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "custom_sd.yml")
		r := runBinary(t, []string{"CONSUL_HTTP_ADDR=" + agent.Addr}, "--once", "--output.file="+out)
		data, _ := os.ReadFile(out)
		if r.code != 0 || !strings.Contains(string(data), "10.0.0.1:80") {
			t.Errorf("exit %d, file %q: %s", r.code, data, r.stderr)
		}
	})

	t.Run("failed round leaves the file alone", func(t *testing.T) {
		before, _ := os.ReadFile(out)
		proxy := faultproxy.Start(t, agent.Addr)
		proxy.Set("/v1/health/service/web", faultproxy.Status500)
		r := runBinary(t, nil, "--once", "--listen.address="+proxy.Addr, "--output.file="+out)
		if r.code != 1 {
			t.Errorf("exit %d, want 1", r.code)
		}
		if lines := strings.Count(strings.TrimSpace(r.stderr), "\n") + 1; lines != 1 || !strings.Contains(r.stderr, "500") {
			t.Errorf("stderr has %d lines, want one error line naming the 500:\n%s", lines, r.stderr)
		}
		after, _ := os.ReadFile(out)
		if !bytes.Equal(before, after) {
			t.Errorf("file changed by a failed round:\n%s\n->\n%s", before, after)
		}
	})
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "custom_sd.json")
	if err := os.WriteFile(existing, []byte("[]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub.json"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"--no-such-flag"}, "unknown long flag"},
		{"bad duration", []string{"--refresh.interval=soon"}, `--refresh.interval: "soon" is not a duration`},
		{"zero duration", []string{"--consul.request-timeout=0s"}, "--consul.request-timeout"},
		{"bad web config", []string{"--output.file=" + existing, "--web.config.file=" + filepath.Join(dir, "missing.yml")}, "--web.config.file"},
		{"missing output directory", []string{"--output.file=" + filepath.Join(dir, "nope", "x.json")}, "--output.file: output directory"},
		{"output is a directory", []string{"--output.file=" + filepath.Join(dir, "sub.json")}, "not a regular file"},
		{"not a file_sd extension", []string{"--output.file=" + filepath.Join(dir, "x.txt")}, "must end in .json"},
		{"bad file mode", []string{"--output.file=" + existing, "--output.file-mode=rw"}, "octal"},
		{"setuid file mode", []string{"--output.file=" + existing, "--output.file-mode=4755"}, "--output.file-mode"},
		{"sticky file mode", []string{"--output.file=" + existing, "--output.file-mode=01644"}, "--output.file-mode"},
		{"world-writable mode", []string{"--output.file=" + existing, "--output.file-mode=0666"}, "world-writable"},
		{"zero concurrency", []string{"--output.file=" + existing, "--consul.max-concurrency=0"}, "--consul.max-concurrency must be at least 1"},
		{"unknown log level", []string{"--output.file=" + existing, "--log.level=loud"}, `--log.level: "loud" is not one of`},
		{"unknown log format", []string{"--output.file=" + existing, "--log.format=xml"}, `--log.format: "xml"`},
		{"unknown scheme", []string{"--output.file=" + existing, "--consul.scheme=ftp"}, `--consul.scheme: "ftp"`},
		{"unknown watch mode", []string{"--output.file=" + existing, "--consul.watch-mode=x"}, `--consul.watch-mode: "x"`},
		{"per-service watch over plain HTTP", []string{"--output.file=" + existing, "--consul.watch-mode=services"}, "--consul.watch-mode=services: the per-service watch needs HTTPS"},
		{"malformed Consul address", []string{"--output.file=" + existing, "--listen.address=http://[bad"}, `--listen.address: invalid Consul address "http://[bad"`},
		{"missing token file", []string{"--output.file=" + existing, "--consul.token-file=" + filepath.Join(dir, "no-token")}, "--consul.token-file: ACL token file: stat "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--once"}, tc.args...)
			if !slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--listen.address=") }) {
				args = append(args, "--listen.address=127.0.0.1:1")
			}
			r := runBinary(t, nil, args...)
			if r.code != 2 {
				t.Errorf("exit %d, want 2", r.code)
			}
			stderr := strings.TrimSpace(r.stderr)
			if strings.Contains(stderr, "\n") || !strings.Contains(stderr, tc.want) || strings.Contains(stderr, "goroutine") {
				t.Errorf("stderr %q, want one line containing %q", stderr, tc.want)
			}
			if data, _ := os.ReadFile(existing); string(data) != "[]\n" {
				t.Errorf("existing output overwritten: %q", data)
			}
		})
	}
}

func TestHelpAndVersion(t *testing.T) {
	for _, arg := range []string{"--help", "--version"} {
		r := runBinary(t, []string{"CONSUL_HTTP_TOKEN=s3cr3t-token-in-env"}, arg)
		if r.code != 0 || !strings.Contains(r.stdout+r.stderr, programName) {
			t.Errorf("%s: exit %d, output %q", arg, r.code, r.stdout+r.stderr)
		}
		if strings.Contains(r.stdout+r.stderr, "s3cr3t") {
			t.Errorf("%s shows the token", arg)
		}
	}
}

// The tests' binary is built without -ldflags, as go build and go install
// build it: it must still say which version it is.
func TestVersionWithoutLdflags(t *testing.T) {
	r := runBinary(t, nil, "--version")
	first, _, _ := strings.Cut(r.stdout+r.stderr, "\n")
	v, ok := strings.CutPrefix(first, programName+", version ")
	if r.code != 0 || !ok || strings.HasPrefix(v, " ") || v == "" {
		t.Errorf("--version: exit %d, first line %q, want %q followed by a version", r.code, first, programName+", version ")
	}
}

func TestVersionFromBuildInfo(t *testing.T) {
	vcs := func(rev string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: "true"}}
	}
	tests := []struct {
		name          string
		bi            debug.BuildInfo
		ver, revision string
	}{
		{"checkout", debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20250102150405-abcdef123456+dirty"}, Settings: vcs("abcdef1234567890")},
			"v0.0.0-20250102150405-abcdef123456+dirty", "abcdef1234567890"},
		{"go install of a release", debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}}, "v1.2.3", ""},
		{"no VCS data", debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "dev", ""},
		{"nothing", debug.BuildInfo{}, "dev", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ver, rev := versionFromBuildInfo(&tc.bi)
			if ver != tc.ver || rev != tc.revision {
				t.Errorf("got version %q, revision %q; want %q, %q", ver, rev, tc.ver, tc.revision)
			}
		})
	}
}

// daemon is the program running in the background.
type daemon struct {
	cmd    *exec.Cmd
	web    string
	stderr *bytes.Buffer
	done   chan struct{}
}

func startDaemon(t *testing.T, env []string, args ...string) *daemon {
	t.Helper()
	return launchDaemon(t, binary, env, nil, args...)
}

// launchDaemon starts bin as the daemon, with env added to a scrubbed
// Consul environment and attr (nil for none) as its SysProcAttr. The test's
// cleanup kills it.
func launchDaemon(t *testing.T, bin string, env []string, attr *syscall.SysProcAttr, args ...string) *daemon {
	t.Helper()
	web := freeAddr(t)
	cmd := exec.Command(bin, append(args, "--web.listen-address="+web, "--log.level=debug")...)
	cmd.Env = append(consultest.Env(), env...)
	cmd.SysProcAttr = attr
	d := &daemon{cmd: cmd, web: web, stderr: &bytes.Buffer{}, done: make(chan struct{})}
	cmd.Stderr = &syncWriter{w: d.stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-d.done
		if t.Failed() {
			t.Logf("adapter log:\n%s", d.log())
		}
	})
	return d
}

// log returns what the daemon logged so far.
func (d *daemon) log() string {
	w := d.cmd.Stderr.(*syncWriter)
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.String()
}

func (d *daemon) get(path string) (int, string) {
	resp, err := http.Get("http://" + d.web + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// metric returns the value of one sample line of /metrics, or -1.
func (d *daemon) metric(series string) float64 {
	_, body := d.get("/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return -1
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDaemon(t *testing.T) {
	agent := consultest.Start(t)
	web1 := consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", Port: 80}
	agent.RegisterInstance(t, web1)
	proxy := faultproxy.Start(t, agent.Addr)
	out := filepath.Join(t.TempDir(), "custom_sd.json")
	d := startDaemon(t, []string{"CONSUL_HTTP_TOKEN=s3cr3t-token-in-env"},
		"--listen.address="+proxy.Addr, "--output.file="+out, "--refresh.interval=100ms")

	eventually(t, "/-/ready", func() bool { code, _ := d.get("/-/ready"); return code == 200 })
	if code, _ := d.get("/-/healthy"); code != 200 {
		t.Errorf("/-/healthy answered %d", code)
	}
	checkMetrics(t, d)
	if _, ok := readTargets(t, out)["10.0.0.1:80"]; !ok {
		t.Fatalf("web on n1 missing from %v", readTargets(t, out))
	}

	// A new instance reaches the file.
	agent.RegisterInstance(t, consultest.Instance{Node: "n2", NodeAddress: "10.0.0.2", Service: "web", Port: 80})
	eventually(t, "the new instance in the file", func() bool { _, ok := readTargets(t, out)["10.0.0.2:80"]; return ok })

	// While one query fails, the file stays byte-identical, even though the
	// catalog changed underneath.
	before, _ := os.ReadFile(out)
	failed := d.metric(`consul_sd_adapter_refreshes_total{result="failure"}`)
	proxy.Set("/v1/health/service/web", faultproxy.Status500)
	agent.DeregisterNode(t, "n1")
	eventually(t, "three failed rounds", func() bool {
		return d.metric(`consul_sd_adapter_refreshes_total{result="failure"}`) >= failed+3
	})
	if after, _ := os.ReadFile(out); !bytes.Equal(before, after) {
		t.Fatalf("file changed while a query failed:\n%s\n->\n%s", before, after)
	}
	if d.metric(`consul_sd_adapter_refresh_failures_total{reason="http_status"}`) < 1 {
		t.Error("failures not counted by reason")
	}
	proxy.ClearAll()
	eventually(t, "recovery", func() bool { _, ok := readTargets(t, out)["10.0.0.1:80"]; return !ok })

	// SIGTERM: clean exit, status 0, file whole.
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(hangGuard):
		t.Fatal("no exit after SIGTERM")
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit status %d after SIGTERM, want 0", code)
	}
	readTargets(t, out)
	if strings.Contains(d.stderr.String(), "s3cr3t") {
		t.Error("the token appears in the debug log")
	}
}

// TestConsulDownAtStart: the daemon starts, is not ready and writes nothing
// until Consul answers.
// Lines from Prometheus's libraries (the web server, the discovery Manager)
// come through slog; they must read like the adapter's own: ts, in UTC,
// after the level, then the caller.
func TestLogLinesAgree(t *testing.T) {
	for _, format := range []string{"logfmt", "json"} {
		t.Run(format, func(t *testing.T) {
			d := startDaemon(t, nil, "--listen.address=127.0.0.1:1", "--output.file="+filepath.Join(t.TempDir(), "custom_sd.json"), "--log.format="+format)
			eventually(t, "the web server's log line", func() bool { return strings.Contains(d.log(), "Listening on") })
			d.cmd.Process.Signal(syscall.SIGTERM)
			<-d.done
			own, fromSlog := 0, 0
			for _, line := range strings.Split(strings.TrimSpace(d.log()), "\n") {
				keys := logKeys(t, format, line)
				first, want := keys[:min(3, len(keys))], []string{"level", "ts", "caller"}
				if format == "json" { // an object, written with its keys sorted
					first = slices.DeleteFunc(slices.Clone(keys), func(k string) bool { return !slices.Contains(want, k) })
					want = []string{"caller", "level", "ts"}
				}
				if !slices.Equal(first, want) || slices.Contains(keys, "time") {
					t.Errorf("keys %q, want %q first and no time: %s", keys, want, line)
				}
				if strings.Contains(line, "Listening on") {
					fromSlog++
				} else {
					own++
				}
			}
			if own == 0 || fromSlog == 0 {
				t.Errorf("%d lines of the adapter's own and %d of the web server's; want both:\n%s", own, fromSlog, d.log())
			}
		})
	}
}

// logKeys returns the keys of a log line in order.
func logKeys(t *testing.T, format, line string) []string {
	t.Helper()
	var keys []string
	if format == "json" {
		dec := json.NewDecoder(strings.NewReader(line))
		if _, err := dec.Token(); err != nil {
			t.Fatalf("%v: %s", err, line)
		}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				t.Fatalf("%v: %s", err, line)
			}
			keys = append(keys, k.(string))
			var v json.RawMessage
			if err := dec.Decode(&v); err != nil {
				t.Fatalf("%v: %s", err, line)
			}
		}
		return keys
	}
	for _, m := range regexp.MustCompile(`(?:^| )([a-z_]+)=`).FindAllStringSubmatch(line, -1) {
		keys = append(keys, m[1])
	}
	return keys
}

func TestConsulDownAtStart(t *testing.T) {
	agent := consultest.Start(t)
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", Port: 80})
	agent.Stop()
	out := filepath.Join(t.TempDir(), "custom_sd.json")
	d := startDaemon(t, nil, "--listen.address="+agent.Addr, "--output.file="+out, "--refresh.interval=100ms")

	eventually(t, "a failed round", func() bool {
		return d.metric(`consul_sd_adapter_refreshes_total{result="failure"}`) >= 1
	})
	if code, _ := d.get("/-/ready"); code != http.StatusServiceUnavailable {
		t.Errorf("/-/ready answered %d with Consul down, want 503", code)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("file written with Consul down")
	}
	agent.Restart(t)
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", Port: 80})
	eventually(t, "the file once Consul is back", func() bool {
		_, err := os.Stat(out)
		return err == nil && len(readTargets(t, out)) == 1
	})
	eventually(t, "/-/ready", func() bool { code, _ := d.get("/-/ready"); return code == 200 })
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// syncWriter lets the test read a log the child process is still writing.
type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// checkMetrics runs promtool's linter over /metrics and checks that the
// metrics an operator alerts on, and the discovery manager's, are there.
func checkMetrics(t *testing.T, d *daemon) {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: run make test (it installs prometheus)")
	}
	_, body := d.get("/metrics")
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	for _, name := range []string{
		"consul_sd_adapter_refresh_duration_seconds_bucket",
		"consul_sd_adapter_refreshes_total",
		"consul_sd_adapter_refresh_failures_total",
		"consul_sd_adapter_last_successful_refresh_timestamp_seconds",
		"consul_sd_adapter_services",
		"consul_sd_adapter_targets",
		"consul_sd_adapter_consul_request_duration_seconds_bucket",
		"consul_sd_adapter_file_writes_total",
		"consul_sd_adapter_file_write_failures_total",
		"consul_sd_adapter_file_dir_sync_failures_total",
		"consul_sd_adapter_last_file_write_timestamp_seconds",
		"consul_sd_adapter_build_info",
		"prometheus_sd_discovered_targets",
		"go_goroutines",
		"process_resident_memory_bytes",
	} {
		if !strings.Contains(body, "\n"+name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}
