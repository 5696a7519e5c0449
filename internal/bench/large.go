package main

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
)

// largeResult is the adapter's cost of one --once round at 100,000 targets.
type largeResult struct {
	Services, Instances int
	Runs                int
	Targets             int
	Wall, CPU           time.Duration
	MaxRSS              int64
	Requests            int

	// The adapter as a daemon: its peak RSS after its first round and
	// DaemonRounds more full rounds, each started by a registration.
	DaemonRounds  int
	DaemonPeakRSS int64
}

// daemonRounds is how many full rounds the daemon runs at 100,000 targets
// after its first.
const daemonRounds = 3

// measureLarge runs the adapter with its defaults and --once against a
// (loopback, through a counting proxy) and keeps the medians.
func measureLarge(ctx context.Context, sc *scope, bin *adapterBin, a *consultest.Agent, cat catalog, runs int) (*largeResult, error) {
	proxy, err := sc.proxy(a.Addr)
	if err != nil {
		return nil, err
	}
	dir := sc.dir
	want := cat.services * cat.instances
	var rs []onceResult
	var reqs []int
	for r := range runs {
		before := proxy.TotalRequests()
		res, err := bin.runOnce(ctx, proxy.Addr, dir, nil)
		if err != nil {
			return nil, err
		}
		if res.Targets != want {
			return nil, fmt.Errorf("large: file has %d targets, want %d", res.Targets, want)
		}
		rs = append(rs, res)
		reqs = append(reqs, proxy.TotalRequests()-before)
		log.Printf("large run %d/%d: %.2fs %d requests cpu=%.2fs rss=%s", r+1, runs, res.Wall.Seconds(), reqs[r], res.CPU.Seconds(), mb(res.MaxRSS))
	}
	peak, err := measureLargeDaemon(ctx, sc, bin, a, cat, proxy.Addr)
	if err != nil {
		return nil, err
	}
	return &largeResult{
		DaemonRounds: daemonRounds, DaemonPeakRSS: peak,
		Services: cat.services, Instances: cat.instances, Runs: runs, Targets: want,
		Wall:     median(rs, func(r onceResult) time.Duration { return r.Wall }),
		CPU:      median(rs, func(r onceResult) time.Duration { return r.CPU }),
		MaxRSS:   median(rs, func(r onceResult) int64 { return r.MaxRSS }),
		Requests: median(reqs, func(n int) int { return n }),
	}, nil
}

// measureLargeDaemon runs the adapter as a service with its defaults at the
// large catalog's size and returns its peak RSS after the first round and
// daemonRounds more. In a daemon the Manager keeps the last snapshot while
// the next round builds its own, which --once never shows.
func measureLargeDaemon(ctx context.Context, sc *scope, bin *adapterBin, a *consultest.Agent, cat catalog, consul string) (int64, error) {
	d, err := bin.startDaemon(sc, consul, sc.dir, "large-daemon", nil)
	if err != nil {
		return 0, err
	}
	defer d.Stop()
	if err := d.WaitReady(ctx, daemonReadyWait); err != nil {
		return 0, err
	}
	const writes = "consul_sd_adapter_file_writes_total"
	for r := range daemonRounds {
		before, err := d.Metric(writes)
		if err != nil {
			return 0, err
		}
		// A new tag on one instance moves the services index: the next
		// round queries every service.
		_, reg := cat.instance(r, 0)
		reg.Service.Tags = append(reg.Service.Tags, fmt.Sprintf("bench-round-%d", r))
		if _, err := a.Client.Catalog().Register(reg, nil); err != nil {
			return 0, err
		}
		deadline := time.Now().Add(daemonReadyWait)
		for {
			n, err := d.Metric(writes)
			if err != nil {
				return 0, err
			}
			if n > before {
				break
			}
			if time.Now().After(deadline) {
				return 0, fmt.Errorf("large daemon: round %d not written after %s; log tail:\n%s", r+1, daemonReadyWait, d.LogTail())
			}
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
		log.Printf("large daemon: full round %d/%d written", r+1, daemonRounds)
	}
	return d.PeakRSS()
}
