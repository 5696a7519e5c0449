package e2e

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
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/adapterproc"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/faultproxy"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/repo"
)

// hangGuard bounds every wait. It is no timing assertion, only a limit on
// how long a broken build hangs the test. Prometheus applies a file_sd
// change in steps of up to 5s (file refresh, discovery and scrape manager
// tickers), so waits here take seconds.
const hangGuard = 60 * time.Second

// adapterBin is the adapter binary, built once by TestMain.
var adapterBin string

// TestMain builds the real binary once: the tests run it as a user would.
func TestMain(m *testing.M) { os.Exit(adapterproc.RunTests(m, &adapterBin)) }

// TestPrometheusDiscoversConsul follows every instance from Consul through
// the adapter's file into Prometheus's targets, then a deregistration and a
// health change along the same path.
func TestPrometheusDiscoversConsul(t *testing.T) {
	agent := consultest.Start(t)
	insts := fixture(t, agent)
	s := startStack(t, agent.Addr)

	s.waitTargets(t, "every instance in Prometheus", hasAll(insts))
	s.checkTargets(t, insts)

	web1, web2, web3, db := insts[0], insts[1], insts[2], insts[3]
	agent.DeregisterNode(t, web3.Node)
	agent.SetHealth(t, web1, "critical")
	web1.Health = "critical"
	s.waitTargets(t, web3.Node+" gone and "+web1.ID+" critical", func(got map[string]target) bool {
		_, present := got[address(web3)]
		return !present && got[address(web1)].DiscoveredLabels["__meta_consul_health"] == "critical"
	})
	s.checkTargets(t, []consultest.Instance{web1, web2, db})
}

// TestPrometheusKeepsTargetsWhileConsulFails: while one of Consul's answers
// fails, the adapter leaves its file alone, so Prometheus, re-reading it,
// keeps every target, even those Consul has deregistered meanwhile. Once
// Consul answers again, the deregistrations arrive.
func TestPrometheusKeepsTargetsWhileConsulFails(t *testing.T) {
	agent := consultest.Start(t)
	insts := fixture(t, agent)
	web, db := insts[:3], insts[3]
	proxy := faultproxy.Start(t, agent.Addr)
	s := startStack(t, proxy.Addr)

	s.waitTargets(t, "every instance in Prometheus", hasAll(insts))
	s.checkTargets(t, insts)
	pool := s.activeTargets(t)[0].ScrapePool
	before := readFile(t, s.sdFile)

	const failures = `consul_sd_adapter_refreshes_total{result="failure"}`
	failed := s.adapter.metric(t, failures)
	// Every round starts with the service list.
	proxy.Set("/v1/catalog/services", faultproxy.Status500)
	failedRefreshes := func(n float64) {
		t.Helper()
		waitFor(t, fmt.Sprintf("%v failed refreshes", n), func() (bool, string) {
			got := s.adapter.metric(t, failures)
			return got >= failed+n, fmt.Sprintf("%s went from %v to %v", failures, failed, got)
		})
	}
	// A round that listed before the fault would go on to read the
	// deregistrations, with every answer a success: wait for it to end,
	// which the first failed round (the ticker's, every 200 ms) proves.
	failedRefreshes(1)
	for _, inst := range web {
		agent.DeregisterNode(t, inst.Node)
	}
	failedRefreshes(4)
	if after := readFile(t, s.sdFile); !bytes.Equal(before, after) {
		t.Fatalf("the adapter changed its file while Consul failed:\n%s\n->\n%s", before, after)
	}
	s.waitPrometheusReread(t, pool)
	s.checkTargets(t, insts)

	proxy.ClearAll()
	s.waitTargets(t, "the web instances gone", func(got map[string]target) bool {
		for _, inst := range web {
			if _, present := got[address(inst)]; present {
				return false
			}
		}
		return true
	})
	s.checkTargets(t, []consultest.Instance{db})
}

// fixture registers the catalog both tests start from and returns it:
// service web on three nodes in three racks, each instance with its own
// tags, one failing its check and one with a service address of its own;
// and service db with one instance. Every address is a closed loopback
// port, so Prometheus finds the targets down: these tests are about
// discovery, not scraping.
func fixture(t *testing.T, agent *consultest.Agent) []consultest.Instance {
	t.Helper()
	insts := []consultest.Instance{
		{Node: "node-a", NodeAddress: "127.0.0.11", NodeMeta: map[string]string{"rack": "r1"},
			Service: "web", ID: "web-1", Tags: []string{"frontend", "v1"}},
		{Node: "node-b", NodeAddress: "127.0.0.12", NodeMeta: map[string]string{"rack": "r2"},
			Service: "web", ID: "web-2", Address: "127.0.0.22", Tags: []string{"frontend", "v2"}, Health: "critical"},
		{Node: "node-c", NodeAddress: "127.0.0.13", NodeMeta: map[string]string{"rack": "r3"},
			Service: "web", ID: "web-3", Tags: []string{"canary"}},
		{Node: "node-d", NodeAddress: "127.0.0.14", NodeMeta: map[string]string{"rack": "r4"},
			Service: "db", ID: "db-1"},
	}
	for i := range insts {
		insts[i].Port = closedPort(t, host(insts[i]))
		agent.RegisterInstance(t, insts[i])
	}
	return insts
}

// host is where Prometheus scrapes inst: its service address, else its
// node's.
func host(inst consultest.Instance) string {
	if inst.Address != "" {
		return inst.Address
	}
	return inst.NodeAddress
}

func address(inst consultest.Instance) string {
	return net.JoinHostPort(host(inst), strconv.Itoa(inst.Port))
}

// closedPort returns a port nothing listens on at host.
func closedPort(t *testing.T, host string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// wantDiscovered holds the labels Prometheus must have discovered for inst:
// those the adapter derives from the instance itself, and the file they
// came from.
func wantDiscovered(inst consultest.Instance, sdFile string) map[string]string {
	health := inst.Health
	if health == "" {
		health = "passing"
	}
	return map[string]string{
		"__address__":                 address(inst),
		"__meta_consul_node":          inst.Node,
		"__meta_consul_metadata_rack": inst.NodeMeta["rack"],
		"__meta_consul_service":       inst.Service,
		"__meta_consul_service_id":    inst.ID,
		"__meta_consul_tags":          "," + strings.Join(inst.Tags, ",") + ",",
		"__meta_consul_health":        health,
		"__meta_filepath":             sdFile,
	}
}

// stack is the adapter and Prometheus side by side, as in the demo: the
// repository's prometheus.yml sits next to the sd/ directory the adapter
// writes into, and finds the file through its relative file_sd path.
type stack struct {
	*promTargets
	sdFile  string // the adapter's output
	adapter *process
}

func startStack(t *testing.T, consulAddr string) *stack {
	t.Helper()
	dir := t.TempDir()
	cfg, err := os.ReadFile(filepath.Join(repoRoot(t), "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sd"), 0o755); err != nil {
		t.Fatal(err)
	}
	s := &stack{sdFile: filepath.Join(dir, "sd", "custom_sd.json")}
	s.adapter = startAdapter(t, consulAddr, s.sdFile)
	s.promTargets = &promTargets{prom: startPrometheus(t, dir), sourceLabel: "__meta_filepath", source: s.sdFile}
	return s
}

// startAdapter starts the adapter writing outputFile and waits until it is
// ready.
func startAdapter(t *testing.T, consulAddr, outputFile string) *process {
	t.Helper()
	p, _ := runAdapterTo(t, consulAddr, outputFile, freeAddr(t))
	p.waitReady(t)
	return p
}

// runAdapterTo starts the adapter writing outputFile, with its web server on
// webAddr, without waiting for it to be ready. The returned command lets a
// test kill it early.
func runAdapterTo(t *testing.T, consulAddr, outputFile, webAddr string, extra ...string) (*process, *exec.Cmd) {
	t.Helper()
	args := append([]string{
		"--output.file=" + outputFile,
		"--listen.address=" + consulAddr,
		"--refresh.interval=200ms",
		"--web.listen-address=" + webAddr,
	}, extra...)
	cmd := exec.Command(adapterBin, args...)
	// A developer's own Consul settings must not leak in.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONSUL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	return start(t, "adapter", webAddr, cmd), cmd
}

// startPrometheus runs Debian's Prometheus on the prometheus.yml in dir.
func startPrometheus(t *testing.T, dir string) *process {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus not found: run `make test`: it installs Debian's prometheus package")
	}
	addr := freeAddr(t)
	cmd := exec.Command(bin,
		"--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr)
	// Elsewhere than dir: the file_sd path must resolve against the
	// config file's directory, not the working directory.
	cmd.Dir = t.TempDir()
	p := start(t, "prometheus", addr, cmd)
	p.waitReady(t)
	return p
}

// target is one of Prometheus's active targets.
type target struct {
	ScrapePool       string            `json:"scrapePool"`
	DiscoveredLabels map[string]string `json:"discoveredLabels"`
	Labels           map[string]string `json:"labels"`
}

// promTargets is a Prometheus's active targets from one source: the
// adapter's file (file_sd) or its /targets (http_sd).
type promTargets struct {
	prom        *process
	sourceLabel string // the discovered label naming the source: __meta_filepath or __meta_url
	source      string // the file or URL
}

// activeTargets returns every active target of Prometheus p, of all its
// scrape pools.
func (p *process) activeTargets(t *testing.T) []target {
	t.Helper()
	var resp struct {
		Status string `json:"status"`
		Data   struct {
			ActiveTargets []target `json:"activeTargets"`
		} `json:"data"`
	}
	body := p.get(t, "/api/v1/targets?state=active")
	if err := json.Unmarshal(body, &resp); err != nil || resp.Status != "success" {
		t.Fatalf("%s /api/v1/targets: %v\n%s", p.name, err, body)
	}
	return resp.Data.ActiveTargets
}

// activeTargets returns Prometheus's active targets that came from the
// source.
func (s *promTargets) activeTargets(t *testing.T) []target {
	t.Helper()
	var targets []target
	for _, tg := range s.prom.activeTargets(t) {
		if tg.DiscoveredLabels[s.sourceLabel] == s.source {
			targets = append(targets, tg)
		}
	}
	return targets
}

// waitTargets waits until cond holds for Prometheus's targets by address.
func (s *promTargets) waitTargets(t *testing.T, what string, cond func(map[string]target) bool) {
	t.Helper()
	waitFor(t, what, func() (bool, string) {
		targets := s.activeTargets(t)
		byAddress := map[string]target{}
		for _, tg := range targets {
			byAddress[tg.DiscoveredLabels["__address__"]] = tg
		}
		return cond(byAddress), describe(targets)
	})
}

func hasAll(insts []consultest.Instance) func(map[string]target) bool {
	return func(got map[string]target) bool {
		for _, inst := range insts {
			if _, ok := got[address(inst)]; !ok {
				return false
			}
		}
		return true
	}
}

// checkTargets asserts that Prometheus lists exactly want, each once, with
// the labels discovered for it (and the label naming the source: the file
// or the http_sd URL) and the job the repository's relabeling derives from
// the service.
func (s *promTargets) checkTargets(t *testing.T, want []consultest.Instance) {
	t.Helper()
	got := s.activeTargets(t)
	if len(got) != len(want) {
		t.Errorf("Prometheus has %d targets from %s, want %d:\n%s", len(got), s.source, len(want), describe(got))
	}
	for _, inst := range want {
		i := slices.IndexFunc(got, func(tg target) bool { return tg.DiscoveredLabels["__address__"] == address(inst) })
		if i < 0 {
			t.Errorf("%s (%s) missing from Prometheus's targets:\n%s", inst.ID, address(inst), describe(got))
			continue
		}
		tg := got[i]
		wantLabels := wantDiscovered(inst, "")
		delete(wantLabels, "__meta_filepath")
		wantLabels[s.sourceLabel] = s.source
		for name, value := range wantLabels {
			if tg.DiscoveredLabels[name] != value {
				t.Errorf("%s: discovered label %s=%q, want %q", inst.ID, name, tg.DiscoveredLabels[name], value)
			}
		}
		if tg.Labels["job"] != inst.Service {
			t.Errorf("%s: job=%q, want the service name %q", inst.ID, tg.Labels["job"], inst.Service)
		}
	}
}

// waitPrometheusReread waits until Prometheus has read its file_sd files
// twice more, and after that synced the scrape pool twice more: the targets
// it lists then reflect a reading of the file that began after this call.
func (s *promTargets) waitPrometheusReread(t *testing.T, pool string) {
	t.Helper()
	for _, series := range []string{
		"prometheus_sd_file_scan_duration_seconds_count",
		fmt.Sprintf("prometheus_target_sync_length_seconds_count{scrape_job=%q}", pool),
	} {
		start := s.prom.metric(t, series)
		waitFor(t, "Prometheus: two more "+series, func() (bool, string) {
			n := s.prom.metric(t, series)
			return n >= start+2, fmt.Sprintf("went from %v to %v", start, n)
		})
	}
}

// describe lists targets one a line, for failure messages.
func describe(targets []target) string {
	var lines []string
	for _, tg := range targets {
		d := tg.DiscoveredLabels
		lines = append(lines, fmt.Sprintf("  %s node=%s health=%s job=%s",
			d["__address__"], d["__meta_consul_node"], d["__meta_consul_health"], tg.Labels["job"]))
	}
	slices.Sort(lines)
	return fmt.Sprintf("%d targets\n%s", len(targets), strings.Join(lines, "\n"))
}

// waitFor polls cond until it holds. state describes what cond saw, for the
// message when the wait gives up.
func waitFor(t *testing.T, what string, cond func() (ok bool, state string)) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %s waiting for %s; last seen: %s", hangGuard, what, state)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// process is a daemon the test started, killed when the test ends.
type process struct {
	name string
	addr string // of its web server
	log  *logBuffer
	done chan struct{}
}

func start(t *testing.T, name, addr string, cmd *exec.Cmd) *process {
	t.Helper()
	p := &process{name: name, addr: addr, log: &logBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s log, last lines:\n%s", name, p.log.tail(40))
		}
	})
	return p
}

func (p *process) waitReady(t *testing.T) {
	t.Helper()
	waitFor(t, p.name+" to be ready", func() (bool, string) {
		select {
		case <-p.done:
			t.Fatalf("%s exited before it was ready", p.name)
		default:
		}
		resp, err := httpClient.Get("http://" + p.addr + "/-/ready")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

// get returns the body of a successful GET of path.
func (p *process) get(t *testing.T, path string) []byte {
	t.Helper()
	resp, err := httpClient.Get("http://" + p.addr + path)
	if err != nil {
		t.Fatalf("%s: %v", p.name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: GET %s: %s %v\n%s", p.name, path, resp.Status, err, body)
	}
	return body
}

// metric returns the value of one series, e.g. `name{label="value"}`, of
// the process's /metrics; 0 when it has no such series yet.
func (p *process) metric(t *testing.T, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(string(p.get(t, "/metrics")), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s /metrics: %q: %v", p.name, line, err)
			}
			return f
		}
	}
	return 0
}

// logBuffer holds a log the child process is still writing.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	lines := strings.Split(strings.TrimRight(b.buf.String(), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
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

// repoRoot is the repository's top directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	return repo.Path(t.Fatal)
}
