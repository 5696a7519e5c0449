package main

import (
	"context"
	"fmt"
	"log"
	"sync"
	"time"

	"github.com/prometheus/prometheus/discovery/targetgroup"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
)

// quietRefresh is the adapter's refresh interval on the quiet cluster: 12
// rounds a minute.
const quietRefresh = 5 * time.Second

// builtinQuietWindow covers one full watch cycle of the built-in SD: every
// service's blocking query returns once in it, 120–127.5 s after it was
// issued. A shorter window would see none or some of them, depending on
// phase.
const builtinQuietWindow = builtinWatchTimeout + 10*time.Second

type quietResult struct {
	Services int
	Window   time.Duration
	// Adapter, over Window.
	Requests, CPU, Writes float64
	// Built-in SD (Prometheus's throttle), over BuiltinWindow.
	BuiltinWindow   time.Duration
	BuiltinRequests float64
}

func perMinute(v float64, d time.Duration) float64 { return v / d.Minutes() }

// measureQuiet runs the adapter (defaults, --refresh.interval=5s) and the
// built-in SD side by side against a catalog that does not change, each
// through its own counting proxy, and measures their cost once both are in
// their steady state.
func measureQuiet(ctx context.Context, sc *scope, bin *adapterBin, a *consultest.Agent, cat catalog, window time.Duration) (*quietResult, error) {
	res := &quietResult{Services: cat.services, Window: window, BuiltinWindow: max(window, builtinQuietWindow)}
	dir := sc.dir
	pa, err := sc.proxy(a.Addr)
	if err != nil {
		return nil, err
	}
	pb, err := sc.proxy(a.Addr)
	if err != nil {
		return nil, err
	}
	want := cat.services * cat.instances

	d, err := bin.startDaemon(sc, pa.Addr, dir, "quiet", []string{"--refresh.interval=" + quietRefresh.String()})
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	seen := 0
	synced := make(chan struct{})
	if err := startBuiltin(ctx, sc, pb.Addr, prometheusUpdatert, func(_ time.Time, gs []*targetgroup.Group) {
		mu.Lock()
		defer mu.Unlock()
		if n := len(groupState(gs)); n == want && seen != want {
			close(synced)
			seen = n
		}
	}); err != nil {
		return nil, err
	}
	started := time.Now()
	if err := d.WaitReady(ctx, daemonReadyWait); err != nil {
		return nil, err
	}
	select {
	case <-synced:
	case <-time.After(3 * time.Minute):
		return nil, fmt.Errorf("built-in SD did not find all %d instances", want)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	// Both windows start once the built-in SD has issued its first
	// blocking queries, at the first tick of its refresh interval.
	select {
	case <-time.After(builtinSettle - time.Since(started)):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if n, err := countTargets(d.Out); err != nil || n < want {
		return nil, fmt.Errorf("adapter file has %d targets (%v), want %d", n, err, want)
	}

	log.Printf("quiet %d services: measuring the adapter for %s and the built-in SD for %s", cat.services, res.Window, res.BuiltinWindow)
	start := time.Now()
	ra, rb := pa.TotalRequests(), pb.TotalRequests()
	cpu0, err := d.Metric("process_cpu_seconds_total")
	if err != nil {
		return nil, err
	}
	w0, err := d.Metric("consul_sd_adapter_file_writes_total")
	if err != nil {
		return nil, err
	}
	if err := sleep(ctx, res.Window); err != nil {
		return nil, err
	}
	cpu1, err := d.Metric("process_cpu_seconds_total")
	if err != nil {
		return nil, err
	}
	w1, err := d.Metric("consul_sd_adapter_file_writes_total")
	if err != nil {
		return nil, err
	}
	el := time.Since(start)
	res.Requests = perMinute(float64(pa.TotalRequests()-ra), el)
	res.CPU = perMinute(cpu1-cpu0, el)
	res.Writes = perMinute(w1-w0, el)
	d.Stop() // leave the machine to the built-in SD

	if err := sleep(ctx, res.BuiltinWindow-time.Since(start)); err != nil {
		return nil, err
	}
	res.BuiltinRequests = perMinute(float64(pb.TotalRequests()-rb), time.Since(start))
	return res, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
