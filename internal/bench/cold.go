package main

import (
	"context"
	"fmt"
	"log"
	"slices"
	"time"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/faultproxy"
)

// coldRTT is the delay the proxy adds to every request in the "remote
// Consul" case.
const coldRTT = 5 * time.Millisecond

// coldCase is one configuration of the cold refresh.
type coldCase struct {
	Mode string // "default" or "sequential"
	RTT  time.Duration
	Args []string
}

// coldStats is the median over the runs of one case.
type coldStats struct {
	coldCase
	Runs     int
	Wall     time.Duration
	CPU      time.Duration
	MaxRSS   int64
	Requests int
	Targets  int
}

// measureCold runs the adapter with --once against a through b, the
// defaults and the sequential configuration, with and without added RTT,
// interleaved so that drift in the machine's state hits every case alike.
func measureCold(ctx context.Context, sc *scope, bin *adapterBin, a *consultest.Agent, runs, wantTargets int) ([]coldStats, error) {
	proxy, err := sc.proxy(a.Addr)
	if err != nil {
		return nil, err
	}
	dir := sc.dir
	cases := []coldCase{
		{Mode: "default", RTT: 0},
		{Mode: "sequential", RTT: 0, Args: bin.sequentialArgs()},
		{Mode: "default", RTT: coldRTT},
		{Mode: "sequential", RTT: coldRTT, Args: bin.sequentialArgs()},
	}
	// One unreported run warms the page cache and the agent.
	if _, err := bin.runOnce(ctx, proxy.Addr, dir, nil); err != nil {
		return nil, err
	}
	results := make([][]onceResult, len(cases))
	requests := make([][]int, len(cases))
	for r := range runs {
		for i, c := range cases {
			proxy.ClearAll()
			if c.RTT > 0 {
				proxy.Set("/v1/*", faultproxy.Delay(c.RTT))
			}
			before := proxy.TotalRequests()
			res, err := bin.runOnce(ctx, proxy.Addr, dir, c.Args)
			if err != nil {
				return nil, err
			}
			if res.Targets != wantTargets {
				return nil, fmt.Errorf("cold %s rtt=%s: file has %d targets, want %d", c.Mode, c.RTT, res.Targets, wantTargets)
			}
			n := proxy.TotalRequests() - before
			results[i] = append(results[i], res)
			requests[i] = append(requests[i], n)
			log.Printf("cold run %d/%d %-10s rtt=%-4s %7.3fs %6d requests cpu=%.2fs rss=%s",
				r+1, runs, c.Mode, c.RTT, res.Wall.Seconds(), n, res.CPU.Seconds(), mb(res.MaxRSS))
		}
	}
	proxy.ClearAll()
	out := make([]coldStats, len(cases))
	for i, c := range cases {
		rs := results[i]
		out[i] = coldStats{
			coldCase: c,
			Runs:     len(rs),
			Wall:     median(rs, func(r onceResult) time.Duration { return r.Wall }),
			CPU:      median(rs, func(r onceResult) time.Duration { return r.CPU }),
			MaxRSS:   median(rs, func(r onceResult) int64 { return r.MaxRSS }),
			Requests: median(requests[i], func(n int) int { return n }),
			Targets:  rs[0].Targets,
		}
	}
	return out, nil
}

// median returns the median of f over xs (the lower one of an even count).
func median[T any, V int | int64 | time.Duration | float64](xs []T, f func(T) V) V {
	vs := make([]V, len(xs))
	for i, x := range xs {
		vs[i] = f(x)
	}
	slices.Sort(vs)
	if len(vs) == 0 {
		return 0
	}
	return vs[(len(vs)-1)/2]
}

// mb formats bytes in MB (10^6 bytes), the unit of the RSS target.
func mb(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/1e6) }
