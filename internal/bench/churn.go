package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	promconfig "github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
	promconsul "github.com/prometheus/prometheus/discovery/consul"
	"github.com/prometheus/prometheus/discovery/targetgroup"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/adapterproc"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/faultproxy"
)

// Kinds of change the churn cycles through, in this order.
// What one change adds, another removes six changes later: long enough for
// every observer to show both, so that neither is lost in a batch.
var churnKinds = []string{
	"new instance", "maintenance on", "health flip", "new service", "node meta", "service tags",
	"deregistered instance", "maintenance off", "node address", "removed service", "service meta",
}

const (
	// churnPace is the churn's rate: one change a second.
	churnPace = time.Second
	// churnSettle bounds the wait for the last changes of a window to show.
	churnSettle = 45 * time.Second
	// churnRefresh is the adapter's refresh interval under churn: its default.
	churnRefresh = 30 * time.Second
)

// churnObserver is one way of following the catalog that the churn measures.
type churnObserver struct {
	name    string
	https   bool     // through Consul's HTTPS API (HTTP/2), else plain HTTP
	builtin bool     // Prometheus's own Consul SD, else the adapter
	args    []string // the adapter's flags
	// entries, if set, runs the adapter from a configuration file of that
	// many entries that split the catalog between them, else from flags.
	entries int
}

// useScheme sets a consul_sd_configs block to the observer's scheme: over
// HTTPS, without verifying the agent's test certificate.
func (o churnObserver) useScheme(c *promconsul.SDConfig) {
	if o.https {
		c.Scheme = "https"
		c.HTTPClientConfig.TLSConfig = promconfig.TLSConfig{InsecureSkipVerify: true}
	}
}

// startAdapter starts the adapter through proxy, from flags or from a
// configuration file written into sc's directory, and returns the files
// it writes.
func (o churnObserver) startAdapter(sc *scope, bin *adapterBin, proxy *faultproxy.Proxy) (*adapterproc.Adapter, []string, error) {
	if o.entries > 0 {
		config, files, err := writeSplitConfig(sc.dir, o.entries, func() *promconsul.SDConfig {
			b := promconsul.DefaultSDConfig
			b.Server, b.RefreshInterval = proxy.Addr, model.Duration(churnRefresh)
			o.useScheme(&b)
			return &b
		})
		if err != nil {
			return nil, nil, err
		}
		d, err := bin.startConfigDaemon(sc, config, sc.dir, "churn", o.args)
		return d, files, err
	}
	addr := proxy.Addr
	args := append([]string{"--refresh.interval=" + churnRefresh.String()}, o.args...)
	if o.https {
		addr = proxy.URL
		args = append(args, "--consul.insecure-skip-verify")
	}
	d, err := bin.startDaemon(sc, addr, sc.dir, "churn", args)
	if err != nil {
		return nil, nil, err
	}
	return d, []string{d.Out}, nil
}

// startChurnAdapter starts the adapter as o says and has tr follow its
// files; it returns the adapter and the time from its start until every
// file was written (its first round).
func startChurnAdapter(ctx context.Context, sc *scope, bin *adapterBin, proxy *faultproxy.Proxy, o churnObserver, tr *churnTracker) (*adapterproc.Adapter, time.Duration, error) {
	started := time.Now()
	daemon, files, err := o.startAdapter(sc, bin, proxy)
	if err != nil {
		return nil, 0, err
	}
	if err := daemon.WaitReady(ctx, daemonReadyWait); err != nil {
		return nil, 0, err
	}
	ready := time.Since(started)
	sc.cleanup(followFiles(files, func(at time.Time, data [][]byte) {
		tr.update(at, func(c *churnChange) map[string]string { return filesLabels(data, c.node, c.id) })
	}))
	return daemon, ready, nil
}

// churnRow is what one observer cost and how fast it followed.
type churnRow struct {
	Observer string
	// Per minute: requests to Consul and the agent's CPU seconds, on the
	// quiet catalog and under churn.
	QuietRequests, ChurnRequests float64
	QuietAgentCPU, ChurnAgentCPU float64
	// AdapterCPU is the adapter's own CPU under churn, s/min; -1 for the
	// built-in SD, which runs inside the harness.
	AdapterCPU float64
	Changes    int
	PerChange  float64 // requests per change
	// KindRequests holds, per kind, the requests from each change of the
	// kind to the next change.
	KindRequests map[string][]int
	PeakConns    int   // client connections to Consul open at once
	PeakRSS      int64 // the adapter's, bytes; 0 for the built-in SD
	// Ready is the time from the adapter's start to its first file (a cold
	// refresh, in its watch mode); 0 for the built-in SD.
	Ready   time.Duration
	Latency map[string][]time.Duration
	Missed  int
}

type churnResult struct {
	Services, Instances int
	Quiet, Window       time.Duration
	Rows                []churnRow
	Reads               []readCost // what each kind of read costs the agent
	ReadsErr            error
}

// measureChurn runs each observer alone against cat, first on the quiet
// catalog, then under one change a second cycling through every kind, and
// reports what each cost Consul and how fast each change reached it.
// Services below from were laid out by a smaller catalog (see base).
func measureChurn(ctx context.Context, sc *scope, bin *adapterBin, a *consultest.Agent, cat catalog, from int, observers []churnObserver, quiet time.Duration, changes int) (*churnResult, error) {
	res := &churnResult{Services: cat.services, Instances: cat.instances, Quiet: quiet, Window: time.Duration(changes) * churnPace}
	ch := newChurner(cat, from, a.Client)
	log.Printf("churn %d services: what each read costs the agent", cat.services)
	res.Reads, res.ReadsErr = measureReads(ctx, a, serviceName(1))
	logErr("reads", res.ReadsErr)
	for _, o := range observers {
		log.Printf("churn %d services: %s", cat.services, o.name)
		row, err := within(func(sc *scope) (churnRow, error) {
			return churnOne(ctx, sc, bin, a, cat, ch, o, quiet, changes)
		})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", o.name, err)
		}
		res.Rows = append(res.Rows, row)
	}
	return res, nil
}

func churnOne(ctx context.Context, sc *scope, bin *adapterBin, a *consultest.Agent, cat catalog, ch *churner, o churnObserver, quiet time.Duration, changes int) (churnRow, error) {
	row := churnRow{Observer: o.name, AdapterCPU: -1, Latency: map[string][]time.Duration{}, KindRequests: map[string][]int{}}
	var proxy *faultproxy.Proxy
	var err error
	if o.https {
		proxy, err = faultproxy.NewTLS("https://" + a.HTTPSAddr)
	} else {
		proxy, err = faultproxy.New(a.Addr)
	}
	if err != nil {
		return row, err
	}
	sc.cleanup(proxy.Close)
	tr := &churnTracker{}
	want := ch.size()

	var daemon *adapterproc.Adapter
	if o.builtin {
		synced := make(chan struct{})
		var once sync.Once
		err := startBuiltin(ctx, sc, proxy.Addr, tunedUpdatert, func(at time.Time, gs []*targetgroup.Group) {
			tr.update(at, func(c *churnChange) map[string]string { return groupLabels(gs, c.node, c.id) })
			if countGroups(gs) >= want {
				once.Do(func() { close(synced) })
			}
		}, o.useScheme)
		if err != nil {
			return row, err
		}
		started := time.Now()
		select {
		case <-synced:
		case <-time.After(5 * time.Minute):
			return row, fmt.Errorf("built-in SD did not find all %d instances", want)
		case <-ctx.Done():
			return row, ctx.Err()
		}
		// Its blocking queries start at the first tick of its refresh.
		if err := sleep(ctx, builtinSettle-time.Since(started)); err != nil {
			return row, err
		}
	} else if daemon, row.Ready, err = startChurnAdapter(ctx, sc, bin, proxy, o, tr); err != nil {
		return row, err
	}

	// The quiet window.
	r0, cpu0 := proxy.TotalRequests(), processCPU(a.Pid())
	if err := sleep(ctx, quiet); err != nil {
		return row, err
	}
	row.QuietRequests = perMinute(float64(proxy.TotalRequests()-r0), quiet)
	row.QuietAgentCPU = perMinute((processCPU(a.Pid()) - cpu0).Seconds(), quiet)

	// The churn window.
	start := time.Now()
	r0, cpu0 = proxy.TotalRequests(), processCPU(a.Pid())
	r1 := r0
	var acpu0 float64
	if daemon != nil {
		if acpu0, err = daemon.Metric("process_cpu_seconds_total"); err != nil {
			return row, err
		}
	}
	var made []*churnChange
	for i := range changes {
		next := start.Add(time.Duration(i) * churnPace)
		if err := sleep(ctx, time.Until(next)); err != nil {
			return row, err
		}
		if i > 0 {
			kind := churnKinds[(i-1)%len(churnKinds)]
			row.KindRequests[kind] = append(row.KindRequests[kind], proxy.TotalRequests()-r1)
		}
		r1 = proxy.TotalRequests()
		c, err := ch.make(ctx, churnKinds[i%len(churnKinds)], tr)
		if err != nil {
			return row, err
		}
		made = append(made, c)
	}
	if err := sleep(ctx, time.Until(start.Add(time.Duration(changes)*churnPace))); err != nil {
		return row, err
	}
	last := churnKinds[(changes-1)%len(churnKinds)]
	row.KindRequests[last] = append(row.KindRequests[last], proxy.TotalRequests()-r1)
	el := time.Since(start)
	row.ChurnRequests = perMinute(float64(proxy.TotalRequests()-r0), el)
	row.ChurnAgentCPU = perMinute((processCPU(a.Pid()) - cpu0).Seconds(), el)
	row.Changes = len(made)
	row.PerChange = float64(proxy.TotalRequests()-r0) / float64(len(made))
	if daemon != nil {
		acpu1, err := daemon.Metric("process_cpu_seconds_total")
		if err != nil {
			return row, err
		}
		row.AdapterCPU = perMinute(acpu1-acpu0, el)
		if row.PeakRSS, err = daemon.PeakRSS(); err != nil {
			return row, err
		}
	}
	row.PeakConns = proxy.PeakConns()
	if daemon != nil {
		logRounds(o.name, daemon)
	}

	// Let the last changes arrive, then collect the latencies.
	deadline := time.Now().Add(churnSettle)
	for !tr.allSeen() && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, c := range made {
		if c.seen.IsZero() {
			row.Missed++
			continue
		}
		row.Latency[c.kind] = append(row.Latency[c.kind], c.seen.Sub(c.returned))
	}
	return row, nil
}

// logRounds logs the adapter's rounds by kind and its failed ones, which
// say where its requests went.
func logRounds(name string, daemon *adapterproc.Adapter) {
	m, err := daemon.Metrics()
	if err != nil {
		log.Printf("%s: reading its metrics: %v", name, err)
		return
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if strings.HasPrefix(k, "consul_sd_adapter_rounds_total{") || strings.HasPrefix(k, "consul_sd_adapter_refresh_failures_total{") {
			parts = append(parts, fmt.Sprintf("%s %g", k, m[k]))
		}
	}
	log.Printf("%s: %s", name, strings.Join(parts, ", "))
}

// churnChange is one change and the labels that show it.
type churnChange struct {
	kind     string
	node, id string // the instance that shows the change
	// want reports whether an instance's labels show the change; nil
	// labels mean the instance is absent.
	want func(labels map[string]string) bool
	// after is the change that added what this one removes: an observer
	// that never showed the addition has not shown the removal either.
	after    *churnChange
	returned time.Time
	seen     time.Time
}

// churnTracker matches an observer's views against the changes under way.
type churnTracker struct {
	mu     sync.Mutex
	active []*churnChange
	view   func(*churnChange) map[string]string // the latest view
}

// add starts watching c, once the API call that made it returned. The
// latest view may already show it: then it counts as seen at once.
func (tr *churnTracker) add(c *churnChange) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.active = append(tr.active, c)
}

func (tr *churnTracker) update(at time.Time, view func(*churnChange) map[string]string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.view = view
	kept := tr.active[:0]
	for _, c := range tr.active {
		if !c.returned.IsZero() && (c.after == nil || !c.after.seen.IsZero()) && c.want(view(c)) {
			c.seen = at
			continue
		}
		kept = append(kept, c)
	}
	tr.active = kept
}

func (tr *churnTracker) allSeen() bool {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.active) == 0
}

// churner makes changes of every kind to the synthetic catalog, keeping
// its size: what it adds it later removes.
type churner struct {
	cat     catalog
	from    int // the first service laid out by cat
	client  *api.Client
	rng     *rand.Rand
	seq     int
	added   []*churnChange // new instances of existing services, to deregister
	svcs    []*churnChange // new services, to remove
	maint   *instanceRef   // the instance in maintenance
	maintOn *churnChange   // the change that put it there
	flipped map[string]bool
}

func newChurner(cat catalog, from int, client *api.Client) *churner {
	return &churner{cat: cat, from: from, client: client, rng: rand.New(rand.NewPCG(1, 2)), flipped: map[string]bool{}}
}

// size is the number of synthetic instances in the catalog now.
func (c *churner) size() int { return c.cat.services*c.cat.instances + len(c.added) + len(c.svcs) }

// base picks an instance of the synthetic catalog from a service whose
// number has the given parity, so that health flips and maintenance never
// meet on one instance. It picks from the services registered at the
// catalog's current size: a grown catalog places the older ones on nodes
// by the smaller size's layout.
func (c *churner) base(parity int) (instanceRef, *api.CatalogRegistration) {
	s := c.from + c.rng.IntN((c.cat.services-c.from)/2)*2
	s += (s + parity) % 2
	return c.cat.instance(s, c.rng.IntN(c.cat.instances))
}

// make makes one change of kind and returns it, registered with tr before
// the API call so that no view can slip by between the two.
func (c *churner) make(ctx context.Context, kind string, tr *churnTracker) (*churnChange, error) {
	c.seq++
	mark := fmt.Sprintf("c%d", c.seq)
	w := (&api.WriteOptions{}).WithContext(ctx)
	ch := &churnChange{kind: kind}
	var call func() error
	health := func(want string) func(map[string]string) bool {
		return func(l map[string]string) bool { return l != nil && l["__meta_consul_health"] == want }
	}
	switch kind {
	case "new instance", "new service":
		s := c.from + c.rng.IntN(c.cat.services-c.from)
		n := c.rng.IntN(c.cat.nodes())
		ref := instanceRef{Node: nodeName(n), Service: serviceName(s), ID: "churn-" + mark}
		if kind == "new service" {
			ref.Service = "churn-svc-" + mark
			c.svcs = append(c.svcs, ch)
		} else {
			c.added = append(c.added, ch)
		}
		reg := c.cat.registration(ref, n, s, 30000+c.seq%30000)
		// The node exists, and a node change may have moved its meta or
		// address since: registering its first fields again would be
		// a node change too, touching every service on it.
		reg.SkipNodeUpdate = true
		status := api.HealthPassing
		if c.seq%2 == 0 {
			status = api.HealthCritical
		}
		reg.Check.Status = status
		ch.node, ch.id, ch.want = ref.Node, ref.ID, health(status)
		call = func() error { _, err := c.client.Catalog().Register(reg, w); return err }
	case "deregistered instance", "removed service":
		list := &c.added
		if kind == "removed service" {
			list = &c.svcs
		}
		if len(*list) == 0 {
			return nil, fmt.Errorf("%s: nothing to remove", kind)
		}
		add := (*list)[0]
		*list = (*list)[1:]
		ch.node, ch.id, ch.after = add.node, add.id, add
		ch.want = func(l map[string]string) bool { return l == nil }
		call = func() error {
			_, err := c.client.Catalog().Deregister(&api.CatalogDeregistration{Node: add.node, ServiceID: add.id}, w)
			return err
		}
	case "health flip":
		ref, reg := c.base(1)
		c.flipped[ref.key()] = !c.flipped[ref.key()]
		status := api.HealthPassing
		if c.flipped[ref.key()] {
			status = api.HealthCritical
		}
		reg.Check.Status = status
		ch.node, ch.id, ch.want = ref.Node, ref.ID, health(status)
		call = func() error {
			_, err := c.client.Catalog().Register(&api.CatalogRegistration{Node: ref.Node, SkipNodeUpdate: true, Check: reg.Check}, w)
			return err
		}
	case "node meta", "node address":
		ref, reg := c.base(c.rng.IntN(2))
		node := &api.CatalogRegistration{Node: reg.Node, Address: reg.Address, NodeMeta: reg.NodeMeta, TaggedAddresses: reg.TaggedAddresses}
		if kind == "node meta" {
			node.NodeMeta["rack"] = mark
			ch.want = func(l map[string]string) bool { return l != nil && l["__meta_consul_metadata_rack"] == mark }
		} else {
			node.Address = fmt.Sprintf("10.250.%d.%d", c.seq/256%256, c.seq%256)
			ch.want = func(l map[string]string) bool { return l != nil && l["__meta_consul_address"] == node.Address }
		}
		ch.node, ch.id = ref.Node, ref.ID
		call = func() error { _, err := c.client.Catalog().Register(node, w); return err }
	case "service tags", "service meta":
		ref, reg := c.base(c.rng.IntN(2))
		svc := reg.Service
		if kind == "service tags" {
			svc.Tags = append(svc.Tags, mark)
			ch.want = func(l map[string]string) bool {
				return l != nil && strings.Contains(l["__meta_consul_tags"], ","+mark+",")
			}
		} else {
			svc.Meta["version"] = mark
			ch.want = func(l map[string]string) bool { return l != nil && l["__meta_consul_service_metadata_version"] == mark }
		}
		ch.node, ch.id = ref.Node, ref.ID
		call = func() error {
			_, err := c.client.Catalog().Register(&api.CatalogRegistration{Node: ref.Node, SkipNodeUpdate: true, Service: svc}, w)
			return err
		}
	case "maintenance on", "maintenance off":
		if kind == "maintenance on" {
			ref, _ := c.base(0)
			c.maint = &ref
		}
		if c.maint == nil {
			return nil, fmt.Errorf("maintenance off without on")
		}
		ref := *c.maint
		id := "_service_maintenance:" + ref.ID
		ch.node, ch.id = ref.Node, ref.ID
		if kind == "maintenance on" {
			c.maintOn = ch
			ch.want = health("maintenance")
			call = func() error {
				_, err := c.client.Catalog().Register(&api.CatalogRegistration{Node: ref.Node, SkipNodeUpdate: true,
					Check: &api.AgentCheck{Node: ref.Node, CheckID: id, Name: "Service Maintenance Mode", Status: api.HealthCritical, ServiceID: ref.ID}}, w)
				return err
			}
		} else {
			ch.after, c.maint, c.maintOn = c.maintOn, nil, nil
			ch.want = health(api.HealthPassing)
			call = func() error {
				_, err := c.client.Catalog().Deregister(&api.CatalogDeregistration{Node: ref.Node, CheckID: id}, w)
				return err
			}
		}
	default:
		return nil, fmt.Errorf("unknown kind %q", kind)
	}
	tr.add(ch)
	if err := call(); err != nil {
		return nil, fmt.Errorf("%s: %w", kind, err)
	}
	// Stamped under the tracker's lock: a view taken from now on counts.
	tr.mu.Lock()
	ch.returned = time.Now()
	if tr.view != nil && (ch.after == nil || !ch.after.seen.IsZero()) && ch.want(tr.view(ch)) {
		// Already in the latest view (an observer faster than this
		// goroutine): seen the moment the call returned.
		ch.seen = ch.returned
		tr.active = slices.DeleteFunc(tr.active, func(x *churnChange) bool { return x == ch })
	}
	tr.mu.Unlock()
	return ch, nil
}

// followFiles calls onChange with the content of every file in paths (nil
// for one not written yet), stamped before any is read, whenever a new
// version of any of them appears. It stops when stop is called.
func followFiles(paths []string, onChange func(time.Time, [][]byte)) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		last := make([]os.FileInfo, len(paths))
		data := make([][]byte, len(paths))
		for {
			select {
			case <-done:
				return
			case <-time.After(filePoll):
			}
			at := time.Now()
			changed := false
			for i, path := range paths {
				if b, fi, ok := newVersion(path, last[i]); ok {
					data[i], last[i], changed = b, fi, true
				}
			}
			if changed {
				// A copy: the view made from it outlives this poll.
				onChange(at, slices.Clone(data))
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// newVersion reads path if it is not the version last describes.
func newVersion(path string, last os.FileInfo) ([]byte, os.FileInfo, bool) {
	fi, err := os.Stat(path)
	if err != nil || sameVersion(fi, last) {
		return nil, nil, false
	}
	data, err := os.ReadFile(path)
	return data, fi, err == nil
}

// filesLabels is fileLabels over the files of every entry of a
// configuration file: each service is in one of them.
func filesLabels(files [][]byte, node, id string) map[string]string {
	for _, data := range files {
		if l := fileLabels(data, node, id); l != nil {
			return l
		}
	}
	return nil
}

// fileLabels returns the labels of the instance id on node in a file_sd
// JSON file the adapter wrote (one entry a line), or nil if it is absent.
func fileLabels(data []byte, node, id string) map[string]string {
	marker := []byte(`"__meta_consul_service_id":"` + id + `"`)
	for rest := data; ; {
		i := bytes.Index(rest, marker)
		if i < 0 {
			return nil
		}
		start := bytes.LastIndexByte(rest[:i], '\n') + 1
		end := bytes.IndexByte(rest[i:], '\n')
		if end < 0 {
			end = len(rest) - i
		}
		line := bytes.TrimSuffix(bytes.TrimSpace(rest[start:i+end]), []byte(","))
		rest = rest[i+end:]
		var e fileEntry
		if json.Unmarshal(line, &e) == nil && e.Labels["__meta_consul_node"] == node {
			return e.Labels
		}
	}
}

// groupLabels returns the merged labels of the instance id on node in
// groups, or nil if it is absent.
func groupLabels(groups []*targetgroup.Group, node, id string) map[string]string {
	for _, g := range groups {
		if g == nil {
			continue
		}
		for _, t := range g.Targets {
			get := func(n model.LabelName) model.LabelValue {
				if v, ok := t[n]; ok {
					return v
				}
				return g.Labels[n]
			}
			if string(get("__meta_consul_service_id")) != id || string(get("__meta_consul_node")) != node {
				continue
			}
			labels := map[string]string{}
			for n, v := range g.Labels.Merge(t) {
				labels[string(n)] = string(v)
			}
			return labels
		}
	}
	return nil
}

// countGroups counts the targets of the synthetic services (and the
// churn's) in groups.
func countGroups(groups []*targetgroup.Group) int {
	n := 0
	for _, g := range groups {
		if g != nil && g.Source != "consul" {
			n += len(g.Targets)
		}
	}
	return n
}

// processCPU returns the user+system CPU time of process pid so far.
func processCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	_, rest, _ := bytes.Cut(b, []byte(") "))
	f := strings.Fields(string(rest))
	if len(f) < 13 {
		return 0
	}
	var utime, stime int64
	fmt.Sscan(f[11], &utime)
	fmt.Sscan(f[12], &stime)
	// The kernel counts in USER_HZ, 100 on Linux.
	return time.Duration(utime+stime) * 10 * time.Millisecond
}
