package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"math"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/prometheus/discovery/targetgroup"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
)

const (
	// propRefresh is the adapter's refresh interval here: its default.
	propRefresh = 30 * time.Second
	// filePoll is how often the output file is checked for a new version.
	filePoll = 2 * time.Millisecond
	// tunedUpdatert is the Manager throttle of the tuned built-in SD, the
	// same as the adapter's own Manager uses.
	tunedUpdatert = 100 * time.Millisecond
	// builtinSettle is how long the built-in SD needs after start before it
	// watches: each service goroutine issues its first blocking query only
	// at the first tick of its refresh_interval (30 s by default).
	builtinSettle = 32 * time.Second
	// kindTimeout bounds the wait for every observer to see the changes of
	// one kind: the adapter's refresh interval, which sees any change
	// without watching, plus a margin.
	kindTimeout = propRefresh + 15*time.Second
)

// Observer names, in the order of the table.
const (
	obsAdapter  = "adapter → file"
	obsTuned    = "built-in SD, throttle 100 ms"
	obsPromDflt = "built-in SD, throttle 5 s (Prometheus)"
)

// Change kinds.
const (
	kindRegister   = "registration"
	kindDeregister = "deregistration"
	kindHealth     = "health flip"
)

// propResult holds the latencies from a Consul API call returning to the
// change being visible, per observer and kind.
type propResult struct {
	Services  int
	Changes   int // per kind
	Pace      time.Duration
	Observers []string
	Kinds     []string
	Latency   map[string]map[string][]time.Duration // observer, kind
	Missed    map[string]map[string]int
}

// change is one catalog change and when each observer first saw it.
type change struct {
	kind     string
	ref      instanceRef
	present  bool   // whether the instance exists afterwards
	health   string // its health afterwards, if present
	returned time.Time
	seen     []time.Time // per observer; zero until seen
}

func (c *change) holds(state map[string]string) bool {
	h, ok := state[c.ref.key()]
	if !c.present {
		return !ok
	}
	return ok && h == c.health
}

// tracker matches observers' snapshots against the changes under way.
type tracker struct {
	mu        sync.Mutex
	observers []string
	states    []map[string]string // latest snapshot per observer
	active    []*change
	notify    chan struct{}
}

func newTracker(observers []string) *tracker {
	return &tracker{observers: observers, states: make([]map[string]string, len(observers)), notify: make(chan struct{}, 1)}
}

// update records observer i's snapshot taken at at.
func (tr *tracker) update(i int, at time.Time, state map[string]string) {
	tr.mu.Lock()
	tr.states[i] = state
	for _, c := range tr.active {
		if c.seen[i].IsZero() && c.holds(state) {
			c.seen[i] = at
		}
	}
	tr.mu.Unlock()
	select {
	case tr.notify <- struct{}{}:
	default:
	}
}

// count returns the number of synthetic instances observer i sees.
func (tr *tracker) count(i int) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.states[i])
}

// activate starts watching for c, before it is made.
func (tr *tracker) activate(c *change) error {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	c.seen = make([]time.Time, len(tr.observers))
	for i, st := range tr.states {
		if c.holds(st) {
			return fmt.Errorf("%s of %s already visible to %s before it was made", c.kind, c.ref.key(), tr.observers[i])
		}
	}
	tr.active = append(tr.active, c)
	return nil
}

func (tr *tracker) setReturned(c *change, t time.Time) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	c.returned = t
}

// wait returns once every observer has seen every change in cs, or after
// timeout.
func (tr *tracker) wait(ctx context.Context, cs []*change, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		tr.mu.Lock()
		all := true
		for _, c := range cs {
			for _, t := range c.seen {
				all = all && !t.IsZero()
			}
		}
		tr.mu.Unlock()
		if all {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return nil
		case <-tr.notify:
		}
	}
}

// waitCount waits until every observer sees want synthetic instances.
func (tr *tracker) waitCount(ctx context.Context, want int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ok := true
		for i := range tr.observers {
			ok = ok && tr.count(i) == want
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			var counts []string
			for i, o := range tr.observers {
				counts = append(counts, fmt.Sprintf("%s: %d", o, tr.count(i)))
			}
			return fmt.Errorf("observers did not all reach %d instances: %v", want, counts)
		case <-tr.notify:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// watchFile feeds the tracker with each new version of the output file. A
// version is detected by stat (the adapter renames a new file over the old
// one), and timestamped before it is parsed.
func watchFile(ctx context.Context, path string, tr *tracker, i int) {
	var last os.FileInfo
	tick := time.NewTicker(filePoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		fi, err := os.Stat(path)
		if err != nil || sameVersion(fi, last) {
			continue
		}
		at := time.Now()
		entries, err := readEntries(path)
		if err != nil {
			continue // read again on the next tick
		}
		last = fi
		tr.update(i, at, fileState(entries))
	}
}

// sameVersion reports whether fi describes the file last did: written by
// rename, a new version is a new file, and one rewritten in place has
// another time or size.
func sameVersion(fi, last os.FileInfo) bool {
	return last != nil && os.SameFile(fi, last) && fi.ModTime().Equal(last.ModTime()) && fi.Size() == last.Size()
}

// measurePropagation runs the adapter (defaults) and the built-in SD, tuned
// and as in Prometheus, against a, makes the changes one at a time, and
// records when each observer sees each.
func measurePropagation(ctx context.Context, sc *scope, bin *adapterBin, a *consultest.Agent, cat catalog, n int, pace time.Duration) (*propResult, error) {
	if 3*n > cat.services {
		return nil, fmt.Errorf("propagation needs %d services for %d changes of each kind, the catalog has %d", 3*n, n, cat.services)
	}
	dir := sc.dir
	res := &propResult{
		Services: cat.services, Changes: n, Pace: pace,
		Observers: []string{obsAdapter, obsTuned, obsPromDflt},
		Kinds:     []string{kindRegister, kindHealth, kindDeregister},
		Latency:   map[string]map[string][]time.Duration{},
		Missed:    map[string]map[string]int{},
	}
	tr := newTracker(res.Observers)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	d, err := bin.startDaemon(sc, a.Addr, dir, "adapter", []string{"--refresh.interval=" + propRefresh.String()})
	if err != nil {
		return nil, err
	}
	go watchFile(ctx, d.Out, tr, 0)
	for i, ut := range []time.Duration{tunedUpdatert, prometheusUpdatert} {
		err := startBuiltin(ctx, sc, a.Addr, ut, func(at time.Time, gs []*targetgroup.Group) {
			tr.update(i+1, at, groupState(gs))
		})
		if err != nil {
			return nil, err
		}
	}
	started := time.Now()
	if err := d.WaitReady(ctx, daemonReadyWait); err != nil {
		return nil, err
	}
	if err := tr.waitCount(ctx, cat.services*cat.instances, 2*time.Minute); err != nil {
		return nil, err
	}
	log.Printf("propagation: all observers synced; letting the built-in SD settle into its watches (%s)", builtinSettle)
	select {
	case <-time.After(builtinSettle - time.Since(started)):
	case <-ctx.Done():
		return nil, ctx.Err()
	}

	var all []*change
	for _, kind := range res.Kinds {
		var phase []*change
		for k := range n {
			c, apply := makeChange(a.Client, cat, kind, n, k)
			if err := tr.activate(c); err != nil {
				return nil, err
			}
			if err := apply(ctx); err != nil {
				return nil, fmt.Errorf("%s of %s: %w", kind, c.ref.key(), err)
			}
			tr.setReturned(c, time.Now())
			phase = append(phase, c)
			if err := tr.wait(ctx, []*change{c}, pace); err != nil {
				return nil, err
			}
		}
		if err := tr.wait(ctx, phase, kindTimeout); err != nil {
			return nil, err
		}
		all = append(all, phase...)
		log.Printf("propagation: %d %ss done", n, kind)
	}

	for i, o := range res.Observers {
		res.Latency[o] = map[string][]time.Duration{}
		res.Missed[o] = map[string]int{}
		for _, c := range all {
			if c.seen[i].IsZero() {
				res.Missed[o][c.kind]++
				continue
			}
			res.Latency[o][c.kind] = append(res.Latency[o][c.kind], max(0, c.seen[i].Sub(c.returned)))
		}
	}
	return res, nil
}

// makeChange returns change k of a kind and the call that makes it. Every
// change touches its own service, so that no change can hide another and the
// built-in SD, which re-arms a service's watch at most once per refresh
// interval, is measured at its best.
func makeChange(client *api.Client, cat catalog, kind string, n, k int) (*change, func(context.Context) error) {
	switch kind {
	case kindRegister:
		s := k
		node := (s*cat.instances + cat.instances) % cat.nodes()
		ref := instanceRef{Node: nodeName(node), Service: serviceName(s), ID: serviceName(s) + "-new"}
		reg := cat.registration(ref, node, s, 30000+s)
		return &change{kind: kind, ref: ref, present: true, health: api.HealthPassing}, func(ctx context.Context) error {
			_, err := client.Catalog().Register(reg, (&api.WriteOptions{}).WithContext(ctx))
			return err
		}
	case kindHealth:
		ref, _ := cat.instance(n+k, 0)
		reg := &api.CatalogRegistration{
			Node:           ref.Node,
			SkipNodeUpdate: true,
			Check: &api.AgentCheck{
				Node: ref.Node, CheckID: "service:" + ref.ID, Name: "Service '" + ref.Service + "' check",
				Status: api.HealthCritical, ServiceID: ref.ID, ServiceName: ref.Service,
			},
		}
		return &change{kind: kind, ref: ref, present: true, health: api.HealthCritical}, func(ctx context.Context) error {
			_, err := client.Catalog().Register(reg, (&api.WriteOptions{}).WithContext(ctx))
			return err
		}
	case kindDeregister:
		ref, _ := cat.instance(2*n+k, 0)
		return &change{kind: kind, ref: ref}, func(ctx context.Context) error {
			_, err := client.Catalog().Deregister(&api.CatalogDeregistration{Node: ref.Node, ServiceID: ref.ID}, (&api.WriteOptions{}).WithContext(ctx))
			return err
		}
	}
	panic("unknown change kind " + kind)
}

var errNoSamples = errors.New("no samples")

// percentile returns the nearest-rank p-th percentile of ds.
func percentile(ds []time.Duration, p float64) (time.Duration, error) {
	if len(ds) == 0 {
		return 0, errNoSamples
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[min(max(rank, 0), len(s)-1)], nil
}
