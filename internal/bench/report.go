package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// What each measurement is held to: the "target" column of the table.
const (
	targetColdLocal   = 2.0
	targetColdRemote  = 10.0
	targetPropP99     = time.Second
	targetQuietGrowth = 1.2 // requests/min at 10x the services, relative
	targetRender      = 300 * time.Millisecond
	targetRSSAt100k   = 150e6 // bytes
)

// report collects the results; a nil result with an error is a failed
// measurement, a nil result without one was not run.
type report struct {
	machine  [][2]string
	flags    string
	bin      *adapterBin
	cat      catalog
	largeCat catalog

	render    *renderResult
	renderErr error
	cold      []coldStats
	coldErr   error
	prop      *propResult
	propErr   error
	quiet     []*quietResult
	quietErrs []error
	large     *largeResult
	largeErr  error
	churn     []*churnResult
	churnErr  error
	largeRun  bool
	// churnAgent is the churn test's agent: "server" or "dev".
	churnAgent string
}

// machineInfo describes where the numbers come from.
func machineInfo(root, consulBin string) [][2]string {
	info := [][2]string{
		{"CPUs (nproc)", strconv.Itoa(runtime.NumCPU())},
		{"CPU", firstMatch("/proc/cpuinfo", "model name", ":")},
		{"Memory", memTotal()},
		{"Go", runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH},
		{"Consul", consulVersion(consulBin)},
		{"Prometheus module", goModVersion(filepath.Join(root, "go.mod"), "github.com/prometheus/prometheus")},
		{"Adapter revision", gitDescribe(root)},
		{"Date", time.Now().UTC().Format("2006-01-02 15:04 UTC")},
		{"Load average (1, 5, 15 min) at start", loadAverage()},
	}
	return info
}

// loadAverage shows whether other work shared the machine with the run.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], ", ")
}

func firstMatch(path, prefix, sep string) string {
	f, err := os.Open(path)
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), prefix) {
			if _, v, ok := strings.Cut(sc.Text(), sep); ok {
				return strings.TrimSpace(v)
			}
		}
	}
	return "unknown"
}

func memTotal() string {
	v := strings.TrimSuffix(firstMatch("/proc/meminfo", "MemTotal", ":"), " kB")
	kb, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil {
		return "unknown"
	}
	return fmt.Sprintf("%.1f GiB", kb/(1<<20))
}

func consulVersion(bin string) string {
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

// goModVersion finds module's version in a go.mod's require lines.
func goModVersion(gomod, module string) string {
	b, err := os.ReadFile(gomod)
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "require "))
		if len(f) >= 2 && f[0] == module {
			return module + " " + f[1]
		}
	}
	return "unknown"
}

func gitDescribe(root string) string {
	out, err := exec.Command("git", "-C", root, "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// row is one line of the table.
type row struct {
	what, adapter, baseline, ratio, target, reached string
}

func (r *report) rows() []row {
	var rows []row
	add := func(x row) { rows = append(rows, x) }

	watch := "n/a: this build has no `--consul.watch` flag; the defaults poll every refresh interval"
	if r.bin != nil && r.bin.hasWatch {
		watch = "on (default) in every \"adapter\" column; off in the sequential baseline"
	}
	add(row{what: "Watch mode (`--[no-]consul.watch`)", adapter: watch})

	// 1. Cold refresh.
	coldTitle := fmt.Sprintf("Cold refresh %s × %d (%s targets)", thousands(r.cat.services), r.cat.instances,
		thousands(r.cat.services*r.cat.instances))
	switch {
	case r.coldErr != nil:
		add(row{what: coldTitle, adapter: "failed: " + oneLine(r.coldErr)})
	case r.cold == nil:
		add(row{what: coldTitle, adapter: "not run"})
	default:
		for _, rtt := range []time.Duration{0, coldRTT} {
			var def, seq coldStats
			for _, c := range r.cold {
				if c.RTT == rtt && c.Mode == "default" {
					def = c
				} else if c.RTT == rtt {
					seq = c
				}
			}
			where, target := "loopback", targetColdLocal
			if rtt > 0 {
				where, target = fmt.Sprintf("%d ms RTT", rtt.Milliseconds()), targetColdRemote
			}
			ratio := seq.Wall.Seconds() / def.Wall.Seconds()
			add(row{
				what:     fmt.Sprintf("%s, %s: wall time (median of %d)", coldTitle, where, def.Runs),
				adapter:  secs(def.Wall),
				baseline: secs(seq.Wall),
				ratio:    fmt.Sprintf("%.1f×", ratio),
				target:   fmt.Sprintf("≥ %g× faster than sequential", target),
				reached:  yesNo(ratio >= target),
			})
			add(row{what: "… Consul requests", adapter: thousands(def.Requests), baseline: thousands(seq.Requests),
				ratio: ratioOf(float64(seq.Requests), float64(def.Requests))})
			add(row{what: "… CPU (user+sys)", adapter: secs(def.CPU), baseline: secs(seq.CPU),
				ratio: ratioOf(seq.CPU.Seconds(), def.CPU.Seconds())})
			add(row{what: "… peak RSS", adapter: mb(def.MaxRSS), baseline: mb(seq.MaxRSS),
				ratio: ratioOf(float64(seq.MaxRSS), float64(def.MaxRSS))})
		}
	}

	// 2. Propagation.
	p := r.prop
	switch {
	case r.propErr != nil:
		add(row{what: "Propagation", adapter: "failed: " + oneLine(r.propErr)})
	case p == nil:
		add(row{what: "Propagation", adapter: "not run"})
	default:
		var slower, slowerDflt []string
		for _, kind := range p.Kinds {
			a50, a99, aok := latencies(p, obsAdapter, kind)
			t50, t99, _ := latencies(p, obsTuned, kind)
			d50, d99, _ := latencies(p, obsPromDflt, kind)
			add(row{
				what:     fmt.Sprintf("Propagation to the file, %d services: %s p50 / p99 (n=%d)", p.Services, kind, p.Changes),
				adapter:  a50 + " / " + a99,
				baseline: "throttle 100 ms: " + t50 + " / " + t99 + "; Prometheus (5 s): " + d50 + " / " + d99,
				target:   "p99 < 1 s",
				reached:  yesNo(aok),
			})
			if slowerThan(p, obsTuned, kind) {
				slower = append(slower, kind)
			}
			if slowerThan(p, obsPromDflt, kind) {
				slowerDflt = append(slowerDflt, kind)
			}
		}
		verdict := func(slower []string) string {
			if len(slower) == 0 {
				return "yes"
			}
			return "**no** (" + strings.Join(slower, ", ") + ")"
		}
		add(row{what: "Propagation: adapter vs built-in SD, p99 of each kind", adapter: "as above",
			baseline: "as above", target: "no slower than built-in SD",
			reached: "vs throttle 100 ms: " + verdict(slower) + "; vs Prometheus (5 s): " + verdict(slowerDflt)})
	}

	// 3. Quiet cluster.
	for i, q := range r.quiet {
		if q == nil {
			add(row{what: "Quiet cluster", adapter: "failed: " + oneLine(r.quietErrs[i])})
			continue
		}
		rr := row{
			what:     fmt.Sprintf("Quiet, %s services, refresh 5 s (12 rounds/min): Consul requests/min", thousands(q.Services)),
			adapter:  fmt.Sprintf("%.0f", q.Requests),
			baseline: fmt.Sprintf("%.0f (built-in SD)", q.BuiltinRequests),
		}
		if i > 0 && r.quiet[0] != nil {
			growth := q.Requests / r.quiet[0].Requests
			rr.ratio = fmt.Sprintf("%.1f× at %.0f× the services", growth, float64(q.Services)/float64(r.quiet[0].Services))
			rr.target = "not growing with service count"
			rr.reached = yesNo(growth <= targetQuietGrowth)
		}
		add(rr)
		add(row{what: "… adapter CPU s/min, file writes/min", adapter: fmt.Sprintf("%.2f s, %.0f writes", q.CPU, q.Writes)})
	}

	// 4. Render and RSS at 100k targets.
	rt := "Render + write 100,000 targets after one change (`BenchmarkRenderWrite100k`, median of " + strconv.Itoa(renderCount) + ")"
	switch {
	case r.renderErr != nil:
		add(row{what: rt, adapter: "failed: " + oneLine(r.renderErr)})
	case r.render == nil:
		add(row{what: rt, adapter: "not run"})
	default:
		for _, f := range []struct {
			what       string
			write, cpu []benchLine
		}{
			{rt, r.render.Write, r.render.CPU},
			{"… the same as YAML (`BenchmarkRenderWrite100kYAML`)", r.render.WriteYAML, r.render.CPUYAML},
		} {
			med, lo, hi := nsPerOp(f.write)
			cpu, _, _ := nsPerOp(f.cpu)
			m := f.write[0].Metrics
			add(row{
				what: f.what,
				adapter: fmt.Sprintf("%s/op (range %s–%s; converting and encoding every target, as the first write does: %s; %s file), %s/op, %s allocs/op",
					millis(med), millis(lo), millis(hi), millis(cpu), mb(int64(m["file-bytes"])), mb(int64(m["B/op"])), thousands(int(m["allocs/op"]))),
				target:  "< 300 ms",
				reached: yesNo(med < targetRender),
			})
		}
	}
	lt := "Peak RSS at 100,000 targets (`--once`)"
	switch {
	case r.largeErr != nil:
		add(row{what: lt, adapter: "failed: " + oneLine(r.largeErr)})
	case r.large == nil && !r.largeRun:
		add(row{what: lt, adapter: "not run (needs `-large`)", target: "< 150 MB"})
	case r.large != nil:
		l := r.large
		add(row{
			what: fmt.Sprintf("Peak RSS at %s targets (%s × %d, `--once`, median of %d)", thousands(l.Targets), thousands(l.Services), l.Instances, l.Runs),
			adapter: fmt.Sprintf("%s (wall %s, CPU %s, %s requests)", mb(l.MaxRSS), secs(l.Wall), secs(l.CPU),
				thousands(l.Requests)),
			target:  "< 150 MB",
			reached: yesNo(float64(l.MaxRSS) < targetRSSAt100k),
		})
		add(row{
			what:    fmt.Sprintf("Peak RSS at %s targets, as a daemon (defaults; first round and %d rounds after registrations)", thousands(l.Targets), l.DaemonRounds),
			adapter: mb(l.DaemonPeakRSS),
			target:  "< 150 MB",
			reached: yesNo(float64(l.DaemonPeakRSS) < targetRSSAt100k),
		})
		add(row{
			what: fmt.Sprintf("… then while polled: %d GETs of the status page, %d at once, and of `/targets`", l.PolledGets, pollTabs),
			adapter: fmt.Sprintf("%s peak RSS; one status page %s in %s", mb(l.PolledPeakRSS),
				fmt.Sprintf("%.0f kB", float64(l.StatusBytes)/1e3), millis(l.StatusDuration)),
			target:  "< 150 MB",
			reached: yesNo(float64(l.PolledPeakRSS) < targetRSSAt100k),
		})
	}
	return rows
}

func latencies(p *propResult, obs, kind string) (p50, p99 string, under1s bool) {
	v50, err := percentileOf(p, obs, kind, 50)
	if err != nil {
		return "none seen", "none seen", false
	}
	v99, _ := percentileOf(p, obs, kind, 99)
	p50, p99 = millis(v50), millis(v99)
	if m := p.Missed[obs][kind]; m > 0 {
		p99 = fmt.Sprintf("> %s (%d not seen)", secs(kindTimeout), m)
		return p50, p99, false
	}
	return p50, p99, v99 < targetPropP99
}

// slowerThan reports whether the adapter's p99 for kind is above obs's, or
// the adapter missed changes that obs saw.
func slowerThan(p *propResult, obs, kind string) bool {
	if p.Missed[obsAdapter][kind] > p.Missed[obs][kind] {
		return true
	}
	a, err := percentileOf(p, obsAdapter, kind, 99)
	if err != nil {
		return true
	}
	b, err := percentileOf(p, obs, kind, 99)
	return err == nil && p.Missed[obs][kind] == 0 && a > b
}

func percentileOf(p *propResult, obs, kind string, pct float64) (time.Duration, error) {
	return percentile(p.Latency[obs][kind], pct)
}

func (r *report) table() string {
	var b strings.Builder
	seq := "`--consul.max-concurrency=1`"
	if r.bin != nil {
		seq = "`" + strings.Join(r.bin.sequentialArgs(), " ") + "`"
	}
	fmt.Fprintf(&b, "Baseline: cold refresh: the adapter with %s (the upstream example's sequential loop); "+
		"propagation and quiet cluster: Prometheus's built-in Consul SD.\n\n", seq)
	b.WriteString("| Measurement | Adapter (defaults) | Baseline | Ratio | Target | Reached |\n")
	b.WriteString("|---|---|---|---|---|---|\n")
	for _, x := range r.rows() {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", x.what, x.adapter, x.baseline, x.ratio, x.target, x.reached)
	}
	return b.String()
}

func (r *report) markdown() string {
	var b strings.Builder
	b.WriteString("# Benchmarks\n\n")
	b.WriteString("Generated by `make bench` (`go run ./internal/bench`); do not edit by hand.\n")
	b.WriteString("Every number below was measured in the run described here, against a real\n")
	b.WriteString("Consul agent on loopback (log level info): `consul agent -dev`, and for the\n")
	b.WriteString("churn section the agent it names.\n\n")
	b.WriteString("## Machine\n\n| | |\n|---|---|\n")
	for _, kv := range r.machine {
		fmt.Fprintf(&b, "| %s | %s |\n", kv[0], kv[1])
	}
	flags := "(none)"
	if r.flags != "" {
		flags = "`" + r.flags + "`"
	}
	fmt.Fprintf(&b, "| Harness flags | %s |\n\n", flags)
	b.WriteString("## Results\n\n")
	b.WriteString(r.table())
	b.WriteString(r.churnTables())
	b.WriteString("\n## How it is measured\n\n")
	b.WriteString(r.method())
	return b.String()
}

func (r *report) method() string {
	seq := "`--consul.max-concurrency=1`"
	if r.bin != nil {
		seq = "`" + strings.Join(r.bin.sequentialArgs(), " ") + "`"
	}
	lines := []string{
		fmt.Sprintf("- **Catalog.** Synthetic services `svc-NNNNN`, each with %d instances on distinct catalog nodes (%d instances a node), registered through the catalog API: node meta (3 keys), tagged addresses (lan, wan), 3 tags, 2 service meta keys and one passing service check per instance.", r.cat.instances, instancesPerNode),
		"- **Cold refresh.** The adapter binary built from this checkout (`CGO_ENABLED=0 go build`), run with `--once` until it exits after writing the file; wall time from exec to exit. \"Adapter\" is the adapter with its defaults, the baseline is " + seq + ", the upstream example's sequential loop. Every run goes through `internal/faultproxy`, which counts requests; with RTT it delays every `/v1/*` request by 5 ms (`Delay(5ms)`). CPU is user+sys of the child from its `ProcessState`; peak RSS is its `VmHWM` from `/proc/<pid>/status`, read every 2 ms while it runs (`ru_maxrss` from wait would include the harness's own peak: Go starts children with vfork, and Linux carries the parent's high-water mark into the child at exec). The cases run interleaved, after one unreported warm-up run; the table shows medians.",
		fmt.Sprintf("- **Propagation.** The adapter as a daemon with its defaults (`--refresh.interval=30s`), next to Prometheus's own Consul SD (`discovery/consul`, all defaults, as `consul_sd_configs: [{server: ...}]`) run in-process under a `discovery.Manager` twice: with a 100 ms throttle (`discovery.Updatert`, the same as the adapter's own Manager) and with Prometheus's 5 s, all on the same agent. After all three have the full catalog and the built-in SD has settled into its blocking queries (%s), the harness makes %d registrations (a new instance of an existing service), then %d health flips (passing → critical), then %d deregistrations, each on its own service. Latency runs from the Consul API call returning to the change being visible: in the output file (stat every %s, timestamped before parsing) or on the Manager's `SyncCh`. The next change is made once every observer has seen the previous one, or after %s at most; changes touch distinct services, so one cannot hide another. Percentiles are nearest-rank: with %d samples p99 is the largest one. Prometheus's Manager sends at most every 5 s, but after a quiet spell it starts again from 100 ms (exponential backoff with ±50 %% jitter), so its figures depend on how often changes come: here about one every %s.", builtinSettle, r.changes(), r.changes(), r.changes(), filePoll, r.pace(), r.changes(), r.pace()),
		fmt.Sprintf("- **Quiet cluster.** The adapter with its defaults and `--refresh.interval=5s` (12 rounds a minute) and the built-in SD (Prometheus's settings) side by side, each through its own counting proxy, after both have the whole catalog and %s have passed. Adapter: requests and `process_cpu_seconds_total` (from its `/metrics`) over the quiet window. Built-in SD: requests over %s, one full cycle of its 2-minute blocking queries (each returns after 120–127.5 s when nothing changes), so its figure is one request per service per cycle spread over the window.", builtinSettle, builtinQuietWindow),
		"- **Render + write.** `go test -run='^$' -bench='^BenchmarkRender(Write)?100k(YAML)?$' -benchmem -count=5 ./adapter`: `Adapter.Update` with 100,000 targets in 20,000 groups, every label on the target (17 each, the most work for the converter); successive snapshots differ in one target's health and share every other group, as the Discoverer's do, so every operation converts and encodes the changed group, copies the other 19,999 groups' bytes from the file it wrote last, streams the whole file into a temporary file, fsyncs it and renames it into place. `BenchmarkRender100k` converts and encodes every target, to `io.Discard`, as the first write after a start does; the `YAML` variants write a `.yml` file.",
		"- **Peak RSS at 100,000 targets** (`-large`): the catalog grown to 20,000 services × 5 instances, the adapter with its defaults and `--once` (peak RSS measured as for the cold refresh); then the adapter as a daemon with its defaults, through its first round and three more rounds (each after a new tag on one instance moved the services index, a located round that reads Consul's node dump of every instance), its peak read from `VmHWM` in `/proc/<pid>/status`; then, with the same daemon, its status page is fetched " + fmt.Sprint(pollTabs) + " times at once together with `/targets`, " + fmt.Sprint(pollRounds) + " times over, and its peak read again.",
		fmt.Sprintf("- **Churn.** %s serving HTTP and HTTPS (HTTP/2) holds the synthetic catalog. Each observer runs alone against it, through its own counting proxy (`internal/faultproxy`, which serves HTTP/2 to HTTP/2 clients and forwards over HTTP/2 to the HTTPS port): the adapter over HTTP (the tables watch, its default there) and over HTTPS (the per-service watch, its default there), both with their defaults; the same two from a configuration file (`--config.file`) of %d entries, each an output file and one `consul_sd_configs` block with Prometheus's defaults and `refresh_interval: 30s`, whose `filter` (applied by Consul to `/v1/catalog/services`) takes the services by the last character of their name (%s), so that every service, the churn's new ones too, is in exactly one entry's file; and Prometheus's own Consul SD over HTTP and over HTTPS in-process (throttle %s). Each is measured first on the quiet catalog for %s once it has the whole catalog (the built-in SD after it settled into its blocking queries), then under one change a second, cycling through every kind: a new instance of an existing service (passing or critical), maintenance on, a health flip, a new service, a node meta change, a service tag change, a deregistration and maintenance off and a service's removal (each undoing the change six seconds earlier), a node address change, a service meta change. Requests per change are all the observer's requests in the churn window over the changes; requests by kind are those from one change to the next. Consul CPU is utime+stime of the agent from `/proc/<pid>/stat`; the adapter's CPU from its `process_cpu_seconds_total`. Propagation runs from the API call returning to the change being visible, found by the instance's labels in the file (read when it changes, stat every %s) or on the built-in SD's `SyncCh`; changes an observer never showed within %s count as missed; for the configuration file the instance is looked up in every entry's file. A node change touches every service with an instance on that node (%d instances a node), and every observer re-reads all of them.", churnAgentText(r.churnAgent), churnEntries, "`"+strings.Join(splitFilters(churnEntries), "`, `")+"`", tunedUpdatert, r.churnQuiet(), filePoll, churnSettle, instancesPerNode),
		fmt.Sprintf("- The Consul agent's `limits.http_max_conns_per_client` is raised to %d: the built-in SD holds one connection per service, more than the default 200 at 2,000 services.", maxConnsPerClient),
		"- MB are 10^6 bytes.",
	}
	return strings.Join(lines, "\n") + "\n"
}

func (r *report) churnQuiet() time.Duration {
	if len(r.churn) > 0 {
		return r.churn[0].Quiet
	}
	return 0
}

func (r *report) changes() int {
	if r.prop != nil {
		return r.prop.Changes
	}
	return 0
}

func (r *report) pace() time.Duration {
	if r.prop != nil {
		return r.prop.Pace
	}
	return 0
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

func ratioOf(a, b float64) string {
	if b == 0 {
		return ""
	}
	return fmt.Sprintf("%.1f×", a/b)
}

func secs(d time.Duration) string {
	if d < time.Second {
		return millis(d)
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func millis(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ms >= 1000:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case ms >= 10:
		return fmt.Sprintf("%.0f ms", ms)
	default:
		return fmt.Sprintf("%.1f ms", ms)
	}
}

func thousands(n int) string {
	s := strconv.Itoa(n)
	if n < 0 {
		return "-" + thousands(-n)
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func oneLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return strings.ReplaceAll(s, "|", "\\|")
}

// churnAgentText says which agent the churn test ran against.
func churnAgentText(agent string) string {
	if agent == "dev" {
		return "A dev agent (`consul agent -dev`, which indents every JSON answer)"
	}
	return "A single server agent as deployed (`-server -bootstrap-expect=1`, raft on disk; not `-dev`, which indents every JSON answer and so costs more CPU and time for the large ones)"
}
