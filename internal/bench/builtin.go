package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery"
	promconsul "github.com/prometheus/prometheus/discovery/consul"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// prometheusUpdatert is the discovery Manager's throttle in Prometheus
// itself: targets reach the scrape manager at most every 5 s.
const prometheusUpdatert = 5 * time.Second

// builtinWatchTimeout is the wait time of the built-in SD's blocking queries
// (watchTimeout in discovery/consul): on a quiet cluster every service's
// query returns once per 120–127.5 s (Consul adds up to 1/16 jitter).
const builtinWatchTimeout = 2 * time.Minute

// startBuiltin runs Prometheus's own Consul SD, configured as a
// `consul_sd_configs: [{server: server}]` entry with all defaults, under a
// discovery Manager with the given throttle, in this process. onSync gets
// every update the Manager sends, with the time it arrived. edits change
// the configuration (the scheme, TLS). It stops with sc.
func startBuiltin(ctx context.Context, sc *scope, server string, updatert time.Duration, onSync func(time.Time, []*targetgroup.Group), edits ...func(*promconsul.SDConfig)) error {
	ctx, cancel := context.WithCancel(ctx)
	sc.cleanup(cancel)
	reg := prometheus.NewRegistry()
	sdMetrics, err := discovery.CreateAndRegisterSDMetrics(reg)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	mgr := discovery.NewManager(ctx, logger, reg, sdMetrics, discovery.Name("builtin"), discovery.Updatert(updatert))
	if mgr == nil {
		return errors.New("creating the discovery manager failed")
	}
	cfg := promconsul.DefaultSDConfig
	cfg.Server = server
	for _, edit := range edits {
		edit(&cfg)
	}
	if err := mgr.ApplyConfig(map[string]discovery.Configs{"consul": {&cfg}}); err != nil {
		return err
	}
	go mgr.Run() //nolint:errcheck // returns ctx.Err()

	// The Manager drops an update, and retries it a throttle period later,
	// if nobody is receiving at that moment: the receiver only queues.
	type update struct {
		at     time.Time
		groups []*targetgroup.Group
	}
	var (
		mu    sync.Mutex
		queue []update
		wake  = make(chan struct{}, 1)
	)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case sets := <-mgr.SyncCh():
				mu.Lock()
				queue = append(queue, update{time.Now(), sets["consul"]})
				mu.Unlock()
				select {
				case wake <- struct{}{}:
				default:
				}
			}
		}
	}()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-wake:
			}
			mu.Lock()
			q := queue
			queue = nil
			mu.Unlock()
			for _, u := range q {
				onSync(u.at, u.groups)
			}
		}
	}()
	return nil
}

// groupState indexes target groups as the measurements see them: health by
// node/service-ID, for the synthetic services only.
func groupState(groups []*targetgroup.Group) map[string]string {
	state := map[string]string{}
	for _, g := range groups {
		if g == nil {
			continue
		}
		for _, t := range g.Targets {
			get := func(name string) string {
				if v, ok := t[model.LabelName(name)]; ok {
					return string(v)
				}
				return string(g.Labels[model.LabelName(name)])
			}
			addState(state, get)
		}
	}
	return state
}

// fileState is groupState for a file_sd file.
func fileState(entries []fileEntry) map[string]string {
	state := map[string]string{}
	for _, e := range entries {
		get := func(name string) string { return e.Labels[name] }
		for range e.Targets {
			addState(state, get)
		}
	}
	return state
}

func addState(state map[string]string, get func(string) string) {
	svc := get("__meta_consul_service")
	if len(svc) < 4 || svc[:4] != "svc-" {
		return
	}
	state[get("__meta_consul_node")+"/"+get("__meta_consul_service_id")] = get("__meta_consul_health")
}
