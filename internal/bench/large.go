package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"time"

	"golang.org/x/sync/errgroup"

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
	// DaemonRounds more rounds, each started by a registration.
	DaemonRounds  int
	DaemonPeakRSS int64
	// Then while its status page and /targets are polled: its peak RSS,
	// and the size and time of one status page.
	PolledPeakRSS  int64
	PolledGets     int
	StatusBytes    int
	StatusDuration time.Duration
}

// Polling of the daemon at 100,000 targets: pollTabs GETs of the status
// page at once (a few open browser tabs) and one of /targets, pollRounds
// times.
const (
	pollTabs   = 4
	pollRounds = 10
)

// daemonRounds is how many rounds the daemon runs at 100,000 targets
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
	res := &largeResult{
		DaemonRounds: daemonRounds,
		Services:     cat.services, Instances: cat.instances, Runs: runs, Targets: want,
		Wall:     median(rs, func(r onceResult) time.Duration { return r.Wall }),
		CPU:      median(rs, func(r onceResult) time.Duration { return r.CPU }),
		MaxRSS:   median(rs, func(r onceResult) int64 { return r.MaxRSS }),
		Requests: median(reqs, func(n int) int { return n }),
	}
	if err := measureLargeDaemon(ctx, sc, bin, a, cat, proxy.Addr, res); err != nil {
		return nil, err
	}
	return res, nil
}

// measureLargeDaemon runs the adapter as a service with its defaults at the
// large catalog's size and records its peak RSS after the first round and
// daemonRounds more, then while its endpoints are polled. In a daemon the Manager keeps the last snapshot while
// the next round builds its own, which --once never shows.
func measureLargeDaemon(ctx context.Context, sc *scope, bin *adapterBin, a *consultest.Agent, cat catalog, consul string, res *largeResult) error {
	d, err := bin.startDaemon(sc, consul, sc.dir, "large-daemon", nil)
	if err != nil {
		return err
	}
	defer d.Stop()
	if err := d.WaitReady(ctx, daemonReadyWait); err != nil {
		return err
	}
	const writes = "consul_sd_adapter_file_writes_total"
	for r := range daemonRounds {
		before, err := d.Metric(writes)
		if err != nil {
			return err
		}
		// A new tag on one instance moves the services index: over HTTP
		// the next round reads Consul's node dump (every instance, as a
		// stream) and queries that service.
		_, reg := cat.instance(r, 0)
		reg.Service.Tags = append(reg.Service.Tags, fmt.Sprintf("bench-round-%d", r))
		if _, err := a.Client.Catalog().Register(reg, nil); err != nil {
			return err
		}
		deadline := time.Now().Add(daemonReadyWait)
		for {
			n, err := d.Metric(writes)
			if err != nil {
				return err
			}
			if n > before {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("large daemon: round %d not written after %s; log tail:\n%s", r+1, daemonReadyWait, d.LogTail())
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
		log.Printf("large daemon: round %d/%d written", r+1, daemonRounds)
	}
	if res.DaemonPeakRSS, err = d.PeakRSS(); err != nil {
		return err
	}
	return pollStatus(ctx, d.Web, d.PeakRSS, res)
}

// pollStatus GETs the status page pollTabs at a time, and /targets, and
// records the daemon's peak RSS after.
func pollStatus(ctx context.Context, web string, peakRSS func() (int64, error), res *largeResult) error {
	get := func(path string) (int, time.Duration, error) {
		start := time.Now()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+web+path, nil)
		if err != nil {
			return 0, 0, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, 0, err
		}
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		return int(n), time.Since(start), err
	}
	for range pollRounds {
		var g errgroup.Group
		for range pollTabs {
			g.Go(func() error { _, _, err := get("/"); return err })
		}
		g.Go(func() error { _, _, err := get("/targets"); return err })
		if err := g.Wait(); err != nil {
			return err
		}
		res.PolledGets += pollTabs + 1
	}
	var err error
	if res.StatusBytes, res.StatusDuration, err = get("/"); err != nil {
		return err
	}
	log.Printf("large daemon: %d GETs of / and /targets; one status page %d bytes in %s", res.PolledGets, res.StatusBytes, res.StatusDuration)
	res.PolledPeakRSS, err = peakRSS()
	return err
}
