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
}

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
	return &largeResult{
		Services: cat.services, Instances: cat.instances, Runs: runs, Targets: want,
		Wall:     median(rs, func(r onceResult) time.Duration { return r.Wall }),
		CPU:      median(rs, func(r onceResult) time.Duration { return r.CPU }),
		MaxRSS:   median(rs, func(r onceResult) int64 { return r.MaxRSS }),
		Requests: median(reqs, func(n int) int { return n }),
	}, nil
}
