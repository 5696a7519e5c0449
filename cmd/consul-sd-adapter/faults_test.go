package main

// The fault matrix: the real binary against a real Consul agent, with
// Consul stopping, a proxy injecting faults, an unwritable output directory,
// SIGKILLs at random moments and a SIGTERM in the middle of a slow round.
// After every step the output file is decoded as Prometheus decodes it and
// compared with what the agent itself says (the truth).

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/prometheus/discovery/targetgroup"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/faultproxy"
)

// webPath is the per-service query of the "web" service.
const webPath = "/v1/health/service/web"

// indexPaths are the three blocking queries of the tables watch, one per
// catalog table.
var indexPaths = []string{"/v1/catalog/services", "/v1/catalog/nodes", "/v1/health/state/any"}

// checksIndexPath is where a round reads the checks table's index: the
// checks of a service nobody registers.
const checksIndexPath = "/v1/health/checks/"

// catalogView is what a file, or the agent, says about each instance:
// "node/service-id" -> "address health". It tells every instance, its
// address and its health apart, which is what each fault could get wrong.
type catalogView map[string]string

func (v catalogView) String() string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(v)) {
		fmt.Fprintf(&b, "\n  %s: %s", k, v[k])
	}
	return b.String()
}

// keys is the sorted, comma-joined set of instances, without the details.
func (v catalogView) keys() string {
	return strings.Join(slices.Sorted(maps.Keys(v)), ",")
}

// decodeFile decodes a file_sd file with Prometheus's own decoder
// (targetgroup.Group's UnmarshalJSON, which rejects unknown fields) and
// returns the instances in it.
func decodeFile(path string) (catalogView, []byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var groups []*targetgroup.Group
	if err := json.Unmarshal(data, &groups); err != nil {
		return nil, data, fmt.Errorf("file_sd cannot decode %s: %w\n%s", path, err, data)
	}
	v := catalogView{}
	for _, g := range groups {
		for _, tg := range g.Targets {
			key := string(g.Labels["__meta_consul_node"]) + "/" + string(g.Labels["__meta_consul_service_id"])
			if _, dup := v[key]; dup {
				return nil, data, fmt.Errorf("%s lists instance %s twice:\n%s", path, key, data)
			}
			v[key] = string(tg["__address__"]) + " " + string(g.Labels["__meta_consul_health"])
		}
	}
	return v, data, nil
}

// truth asks the agent directly what the file should say.
func truth(t *testing.T, agent *consultest.Agent) catalogView {
	t.Helper()
	entries, err := consultest.AllEntries(agent.Client)
	if err != nil {
		t.Fatalf("reading the truth from the agent: %v", err)
	}
	return viewOf(entries)
}

// viewOf is what a file should say of these instances.
func viewOf(entries []*api.ServiceEntry) catalogView {
	v := catalogView{}
	for _, e := range entries {
		host := e.Service.Address
		if host == "" {
			host = e.Node.Address
		}
		v[e.Node.Node+"/"+e.Service.ID] = host + ":" + strconv.Itoa(e.Service.Port) + " " + e.Checks.AggregatedStatus()
	}
	return v
}

// waitForTruth waits until the file decodes and equals what the agent says.
func waitForTruth(t *testing.T, agent *consultest.Agent, path string) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for {
		want := truth(t, agent)
		got, data, err := decodeFile(path)
		if err == nil && maps.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the file never reflected Consul:\nfile (err %v): %v\nagent: %v\nraw:\n%s", err, got, want, data)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mustRead returns the file's bytes; the file must decode.
func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	_, data, err := decodeFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// assertUnchanged fails if the file is no longer byte-identical to before.
func assertUnchanged(t *testing.T, path string, before []byte, while string) {
	t.Helper()
	if after := mustRead(t, path); !bytes.Equal(before, after) {
		t.Errorf("file changed while %s:\n%s\n->\n%s", while, before, after)
	}
}

// webOn is an instance of "web" on node n with an address of its own, so
// that every instance is a distinct target.
func webOn(n int) consultest.Instance {
	return consultest.Instance{Node: fmt.Sprintf("node-%d", n), NodeAddress: fmt.Sprintf("10.0.%d.%d", n/250, n%250+1), Service: "web", Port: 80}
}

// startBehindProxy starts an agent holding first, and the daemon reaching
// it through a fault proxy with args, writing a fresh file; it returns once
// the file holds what the agent says.
func startBehindProxy(t *testing.T, first consultest.Instance, args ...string) (*consultest.Agent, *faultproxy.Proxy, string, *daemon) {
	t.Helper()
	agent := consultest.Start(t)
	agent.RegisterInstance(t, first)
	proxy := faultproxy.Start(t, agent.Addr)
	out := filepath.Join(t.TempDir(), "custom_sd.json")
	d := startDaemon(t, nil, append([]string{"--listen.address=" + proxy.Addr, "--output.file=" + out}, args...)...)
	waitForTruth(t, agent, out)
	return agent, proxy, out, d
}

// failureReasons are the values of consul_sd_adapter_refresh_failures_total's
// reason label.
var failureReasons = []string{"timeout", "http_status", "decode", "connection", "acl", "filter", "no_leader"}

func (d *daemon) failures(reason string) float64 {
	return d.metric(`consul_sd_adapter_refresh_failures_total{reason="` + reason + `"}`)
}

func (d *daemon) failedRounds() float64 {
	return d.metric(`consul_sd_adapter_refreshes_total{result="failure"}`)
}

// waitExit waits for the daemon to exit, within the hang guard.
func (d *daemon) waitExit(t *testing.T, after string) {
	t.Helper()
	select {
	case <-d.done:
	case <-time.After(hangGuard):
		t.Fatalf("no exit after %s", after)
	}
}

// TestConsulStopsMidRun: Consul vanishes (SIGKILL) under a running daemon.
// Rounds fail and are counted while the file stays as it was; once Consul is
// back (empty, as dev agents are) and filled anew, the file follows.
func TestConsulStopsMidRun(t *testing.T) {
	agent := consultest.Start(t)
	agent.RegisterInstance(t, webOn(1))
	agent.RegisterInstance(t, webOn(2))
	out := filepath.Join(t.TempDir(), "custom_sd.json")
	d := startDaemon(t, nil, "--listen.address="+agent.Addr, "--output.file="+out, "--refresh.interval=100ms")
	waitForTruth(t, agent, out)
	before := mustRead(t, out)

	failed := d.failedRounds()
	agent.Kill()
	eventually(t, "three failed rounds with Consul gone", func() bool { return d.failedRounds() >= failed+3 })
	assertUnchanged(t, out, before, "Consul was down")
	if d.failures("connection") < 1 {
		t.Errorf("refused connections not counted as reason=connection")
	}

	agent.Restart(t)
	// A different set from before: node-2 is gone, node-3 is new and critical.
	agent.RegisterInstance(t, webOn(1))
	inst := webOn(3)
	inst.Health = api.HealthCritical
	agent.RegisterInstance(t, inst)
	waitForTruth(t, agent, out)
}

// TestFaultMatrix puts every fault the proxy knows on the per-service query
// of one daemon, one after the other. For each: a Consul change makes the
// per-service query run; while the fault is on the file stays byte-identical
// and the failure is counted under the expected reason (and no other); once
// the fault clears the change reaches the file.
func TestFaultMatrix(t *testing.T) {
	agent, proxy, out, d := startBehindProxy(t, webOn(0), "--refresh.interval=100ms", "--consul.request-timeout=500ms")

	tests := []struct {
		fault  faultproxy.Fault
		reason string
	}{
		{faultproxy.Status500, "http_status"},
		{faultproxy.Status403, "http_status"},
		{faultproxy.ACLNotFound, "http_status"},
		{faultproxy.Status429, "http_status"},
		{faultproxy.Status503, "http_status"},
		{faultproxy.Hang, "timeout"}, // past --consul.request-timeout
		{faultproxy.Reset, "connection"},
		{faultproxy.Truncate, "decode"},
		{faultproxy.BadJSON, "decode"},
	}
	for i, tc := range tests {
		t.Run(tc.fault.String(), func(t *testing.T) {
			counts := map[string]float64{}
			for _, r := range failureReasons {
				counts[r] = d.failures(r)
			}

			proxy.Set(webPath, tc.fault)
			agent.RegisterInstance(t, webOn(i+1)) // moves the indexes: the round must query web
			// A round every 100 ms: one may have sent its query before the
			// fault was set, and the agent answered it after the change,
			// rightly. Its write lands within the Manager's 100 ms; the
			// file is taken once failed rounds show that round is over.
			eventually(t, "three failed rounds with reason "+tc.reason, func() bool {
				return d.failures(tc.reason) >= counts[tc.reason]+3
			})
			before := mustRead(t, out)
			eventually(t, "three more failed rounds", func() bool {
				return d.failures(tc.reason) >= counts[tc.reason]+6
			})
			assertUnchanged(t, out, before, tc.fault.String()+" was on")
			for _, r := range failureReasons {
				if got := d.failures(r); r != tc.reason && got != counts[r] {
					t.Errorf("reason=%s rose from %v to %v, want only reason=%s", r, counts[r], got, tc.reason)
				}
			}

			proxy.Clear(webPath)
			waitForTruth(t, agent, out)
		})
	}
}

// TestIndexBackwards: every index query answers X-Consul-Index 1, as
// after a snapshot restore, while the catalog changes; then the fault
// clears and the catalog changes again. The refresh interval is long, so
// only the watch can bring the last change to the file: a watcher stuck on
// a stale index would miss it. The proxy's request count over the whole
// window proves the watchers do not spin.
func TestIndexBackwards(t *testing.T) {
	agent, proxy, out, _ := startBehindProxy(t, webOn(1), "--refresh.interval=10m")

	counts := func() map[string]int {
		m := map[string]int{}
		for _, p := range indexPaths {
			m[p] = proxy.Requests(p)
		}
		return m
	}
	// waitAll waits until every watcher has issued a query since before.
	waitAll := func(what string, before map[string]int) {
		t.Helper()
		eventually(t, what, func() bool {
			for p, n := range before {
				if proxy.Requests(p) <= n {
					return false
				}
			}
			return true
		})
	}
	start, began := proxy.TotalRequests(), time.Now()
	faulted := append(indexPaths, checksIndexPath)
	for _, p := range faulted {
		proxy.Set(p, faultproxy.IndexBackwards)
	}
	// The fault applies to requests that arrive from now on: the blocking
	// queries already waiting answer the first change with the real index,
	// and the watchers ask again, this time through the fault.
	before := counts()
	agent.RegisterInstance(t, webOn(2)) // moves all three indexes
	waitAll("every watcher to ask again through the fault", before)
	// The second change reaches them as an index gone back to 1; they ask
	// again with index 1, which Consul answers at once, and keep getting
	// index 1: the path where a watcher must pace itself, not spin.
	before = counts()
	agent.RegisterInstance(t, webOn(3))
	waitAll("every watcher to see the index go back", before)
	agent.SetHealth(t, webOn(1), api.HealthWarning)
	// A window to count what the watchers do on that path; spinning, they
	// made over 1,000 requests a second.
	time.Sleep(time.Second)
	for _, p := range faulted {
		proxy.Clear(p)
	}
	agent.DeregisterNode(t, webOn(2).Node)
	waitForTruth(t, agent, out)

	// Generous: watchers that block (or pace themselves) make some 50
	// requests in all here; spinning on an index that no longer blocks,
	// they made over 1,000 a second.
	n := proxy.TotalRequests() - start
	t.Logf("%d requests to Consul in the %.1f s window", n, time.Since(began).Seconds())
	if n >= 500 {
		t.Errorf("%d requests to Consul with the index going backwards, want < 500: the watch spins (in all: %d to /v1/catalog/services, %d to /v1/catalog/nodes, %d to /v1/health/state/any)",
			n, proxy.Requests(indexPaths[0]), proxy.Requests(indexPaths[1]), proxy.Requests(indexPaths[2]))
	}
}

// TestUnwritableOutputDir runs the daemon as user nobody (root ignores
// permission bits) and takes away its right to write the output directory:
// the write fails, is logged and counted, the old file stays; once the
// directory is writable again the change is written.
func TestUnwritableOutputDir(t *testing.T) {
	agent := consultest.Start(t)
	agent.RegisterInstance(t, webOn(1))
	outDir := nobodyDir(t)
	out := filepath.Join(outDir, "custom_sd.json")
	d := startAsNobody(t, "--listen.address="+agent.Addr, "--output.file="+out, "--refresh.interval=100ms")
	waitForTruth(t, agent, out)
	before := mustRead(t, out)

	if err := os.Chmod(outDir, 0o555); err != nil {
		t.Fatal(err)
	}
	writeFailures := d.metric("consul_sd_adapter_file_write_failures_total")
	agent.RegisterInstance(t, webOn(2))
	eventually(t, "a failed write", func() bool {
		return d.metric("consul_sd_adapter_file_write_failures_total") > writeFailures
	})
	assertUnchanged(t, out, before, "the directory was read-only")
	if !strings.Contains(d.log(), "Writing the output file failed") {
		t.Error("the failed write is not logged")
	}
	if leftovers, _ := filepath.Glob(filepath.Join(outDir, ".*.tmp")); len(leftovers) > 0 {
		t.Errorf("temp files left behind: %v", leftovers)
	}

	if err := os.Chmod(outDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Written by the next round: every successful round hands the adapter
	// its snapshot, changed or not, and a pending failed write is retried
	// then (else within the adapter's 5 s retry).
	waitForTruth(t, agent, out)
}

// openDir returns a fresh directory that every user may enter (t.TempDir
// and its parents are 0700).
func openDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "consul-sd-adapter-nobody")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// nobodyDir returns a fresh directory owned by nobody.
func nobodyDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(openDir(t), "out")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	return dir
}

// startAsNobody starts the daemon as user nobody, from a copy of the binary
// that nobody may execute.
func startAsNobody(t *testing.T, args ...string) *daemon {
	t.Helper()
	bin := filepath.Join(openDir(t), programName)
	if err := copyFile(binary, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	return launchDaemon(t, bin, nil, &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}, args...)
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// churn registers and deregisters instances of one service until stopped,
// one catalog write at a time, and records every set of instances the
// service passed through. One service, because a round reads each service
// in its own query: only a single service's instances are read in one
// consistent snapshot.
type churn struct {
	agent  *consultest.Agent
	mu     sync.Mutex
	states map[string]bool // catalogView.keys() of every state
	ops    int
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
}

const (
	churnPool   = 8    // instances that come and go
	churnMaxOps = 3000 // a bound, whatever happens to the stop signal
)

func startChurn(t *testing.T, agent *consultest.Agent) *churn {
	c := &churn{agent: agent, states: map[string]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	present := catalogView{}
	// One instance stays, so the service never vanishes from the list.
	base := consultest.Instance{Node: "churn-base", NodeAddress: "10.9.0.1", Service: "churn", Port: 80}
	agent.RegisterInstance(t, base)
	present["churn-base/churn"] = ""
	c.states[present.keys()] = true

	go func() {
		defer close(c.done)
		for c.ops < churnMaxOps {
			select {
			case <-c.stop:
				return
			case <-time.After(time.Duration(5+rand.IntN(20)) * time.Millisecond):
			}
			n := rand.IntN(churnPool)
			node := fmt.Sprintf("churn-%d", n)
			key := node + "/churn"
			var err error
			if _, ok := present[key]; ok {
				_, err = agent.Client.Catalog().Deregister(&api.CatalogDeregistration{Node: node}, nil)
				delete(present, key)
			} else {
				_, err = agent.Client.Catalog().Register(&api.CatalogRegistration{
					Node: node, Address: fmt.Sprintf("10.9.1.%d", n+1),
					Service: &api.AgentService{ID: "churn", Service: "churn", Port: 80},
				}, nil)
				present[key] = ""
			}
			if err != nil {
				t.Errorf("churn: %v", err) // not Fatal: this is not the test's goroutine
				return
			}
			c.mu.Lock()
			c.states[present.keys()] = true
			c.ops++
			c.mu.Unlock()
		}
	}()
	return c
}

// end stops the churn and waits for its last write; calling it again is fine.
func (c *churn) end() {
	c.once.Do(func() { close(c.stop) })
	<-c.done
}

// TestCrashSafety SIGKILLs the daemon at random moments while Consul
// churns, 30 times. Between kills, and while each daemon runs, the file
// either does not exist yet or decodes, and it always holds a state the
// catalog really was in, never a mix or a part. Temp files a kill leaves
// behind never match the file_sd glob. Then, with the churn stopped, one
// more run brings the file to the final truth.
func TestCrashSafety(t *testing.T) {
	const kills = 30
	agent := consultest.Start(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "custom_sd.json")
	c := startChurn(t, agent)
	defer c.end()

	// A reader polling the file the whole time, as Prometheus's file_sd does
	// (more often): it records each distinct content, and any it cannot decode.
	seen := map[string]catalogView{}
	var readErrs []error
	stopReader, readerDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			select {
			case <-stopReader:
				return
			case <-time.After(2 * time.Millisecond):
			}
			v, data, err := decodeFile(out)
			switch {
			case os.IsNotExist(err):
			case err != nil:
				readErrs = append(readErrs, err)
			default:
				seen[string(data)] = v
			}
		}
	}()

	for i := range kills {
		d := startDaemon(t, nil, "--listen.address="+agent.Addr, "--output.file="+out,
			"--refresh.interval=1s", "--consul.min-round-interval=20ms")
		time.Sleep(time.Duration(rand.IntN(600)) * time.Millisecond)
		d.cmd.Process.Kill()
		<-d.done

		if _, _, err := decodeFile(out); err != nil && !os.IsNotExist(err) {
			t.Fatalf("after kill %d: %v", i+1, err)
		}
		if matches, _ := filepath.Glob(filepath.Join(dir, "*.json")); len(matches) > 1 {
			t.Fatalf("after kill %d, the file_sd glob *.json matches more than the output: %v", i+1, matches)
		}
		for _, glob := range []string{"*.yml", "*.yaml"} {
			if matches, _ := filepath.Glob(filepath.Join(dir, glob)); len(matches) > 0 {
				t.Fatalf("after kill %d, %s matches %v", i+1, glob, matches)
			}
		}
	}
	close(stopReader)
	<-readerDone
	c.end()

	for _, err := range readErrs {
		t.Error("the poller read a broken file:", err)
	}
	// A killed write leaves its temp file; it must not match the glob, and
	// the next run removes it at start, so at most the last kill's remains.
	leftovers, _ := filepath.Glob(filepath.Join(dir, ".custom_sd.json.*.tmp"))
	t.Logf("%d kills, %d catalog writes, %d distinct file contents seen, %d temp files left behind",
		kills, c.ops, len(seen), len(leftovers))
	if len(leftovers) > 1 {
		t.Errorf("%d temp files left behind by %d kills: they pile up", len(leftovers), kills)
	}
	if len(seen) < 2 {
		t.Errorf("only %d distinct file contents seen: the churn did not reach the file", len(seen))
	}
	c.mu.Lock()
	for data, v := range seen {
		if !c.states[v.keys()] {
			t.Errorf("the file held a set of instances the catalog never had: %v\n%s", v, data)
		}
	}
	c.mu.Unlock()

	startDaemon(t, nil, "--listen.address="+agent.Addr, "--output.file="+out, "--refresh.interval=1s")
	waitForTruth(t, agent, out)
}

// TestSigtermDuringSlowRound sends SIGTERM while a round waits on a slow
// per-service query: the process exits 0 and the file is untouched.
func TestSigtermDuringSlowRound(t *testing.T) {
	agent, proxy, out, d := startBehindProxy(t, webOn(1), "--refresh.interval=100ms")
	before := mustRead(t, out)

	proxy.Set(webPath, faultproxy.Delay(10*time.Second))
	// Every request counted from here on is held for 10 s.
	held := proxy.Requests(webPath)
	agent.RegisterInstance(t, webOn(2))
	eventually(t, "a held query of web", func() bool { return proxy.Requests(webPath) > held })

	sent := time.Now()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	d.waitExit(t, "SIGTERM")
	t.Logf("exited %s after SIGTERM, with a query held for 10 s", time.Since(sent).Round(time.Millisecond))
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit status %d after SIGTERM, want 0", code)
	}
	assertUnchanged(t, out, before, "the daemon was stopped mid-round")
}
