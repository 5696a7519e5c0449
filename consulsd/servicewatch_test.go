package consulsd_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"

	"github.com/consul-sd-adapter/consul-sd-adapter/consulsd"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/faultproxy"
)

// follower applies what a running Discovery sends, as the Manager does:
// each group replaces the one with its source.
type follower struct {
	ch     chan []*targetgroup.Group
	groups map[string]*targetgroup.Group
	sends  int
}

func follow(t *testing.T, d *consulsd.Discovery) *follower {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	f := &follower{ch: make(chan []*targetgroup.Group), groups: map[string]*targetgroup.Group{}}
	go func() {
		defer close(done)
		d.Run(ctx, f.ch)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return f
}

// until applies sends until cond holds, failing the test after hangGuard.
func (f *follower) until(t *testing.T, what string, cond func(map[string]*targetgroup.Group) bool) {
	t.Helper()
	guard := time.After(hangGuard)
	for !cond(f.groups) {
		select {
		case groups := <-f.ch:
			f.sends++
			for _, g := range groups {
				f.groups[g.Source] = g
			}
		case <-guard:
			for _, g := range f.groups {
				t.Logf("%s: %v", g.Source, byNode(g))
			}
			t.Fatalf("no snapshot with %s; have %v", what, f.groups)
		}
	}
}

// label returns a label of the target on node in group g.
func label(g *targetgroup.Group, node, name string) string {
	return string(byNode(g)[node][model.LabelName(name)])
}

// TestServiceWatchQueriesOnlyTheChangedService drives every kind of change
// through a Discovery in the per-service watch mode, over HTTP/2, and
// checks that each reaches the snapshot while the services that did not
// change are never queried again.
func TestServiceWatchQueriesOnlyTheChangedService(t *testing.T) {
	agent := consultest.Start(t)
	proxy := faultproxy.StartTLS(t, agent.Addr)
	web := func(n int) consultest.Instance {
		return consultest.Instance{Node: fmt.Sprintf("node-%d", n), Service: "web", Port: 8080, Health: "passing", Tags: []string{"a"}}
	}
	db := consultest.Instance{Node: "node-db", Service: "db", Port: 5432, Health: "passing"}
	agent.RegisterInstance(t, web(1))
	agent.RegisterInstance(t, web(2))
	agent.RegisterInstance(t, db)

	d, _ := newDiscovery(t, proxy.URL, func(c *consulsd.Config) {
		c.WatchMode = consulsd.WatchServices
		c.InsecureSkipVerify = true
		c.RefreshInterval = time.Hour // no round may stand in for the watch
	})
	f := follow(t, d)
	f.until(t, "web and db", func(g map[string]*targetgroup.Group) bool {
		return g["web"] != nil && len(g["web"].Targets) == 2 && g["db"] != nil
	})

	const dbPath, webPath = "/v1/health/service/db", "/v1/health/service/web"
	// Each service's first query answers, the second is parked.
	waitFor(t, "db's blocking query", func() bool { return proxy.Requests(dbPath) == 2 })
	steps := []struct {
		name   string
		change func()
		seen   func(map[string]*targetgroup.Group) bool
	}{
		{"health flip", func() { agent.SetHealth(t, web(1), "critical") },
			func(g map[string]*targetgroup.Group) bool {
				return label(g["web"], "node-1", "__meta_consul_health") == "critical"
			}},
		{"new instance", func() { agent.RegisterInstance(t, web(3)) },
			func(g map[string]*targetgroup.Group) bool { return len(g["web"].Targets) == 3 }},
		{"deregistered instance", func() { agent.DeregisterInstance(t, "node-3", "web") },
			func(g map[string]*targetgroup.Group) bool { return len(g["web"].Targets) == 2 }},
		{"node meta", func() {
			inst := web(2)
			inst.NodeMeta = map[string]string{"rack": "r9"}
			agent.RegisterInstance(t, inst)
		}, func(g map[string]*targetgroup.Group) bool {
			return label(g["web"], "node-2", "__meta_consul_metadata_rack") == "r9"
		}},
		{"service tags and meta", func() {
			inst := web(2)
			inst.NodeMeta = map[string]string{"rack": "r9"}
			inst.Tags, inst.Meta = []string{"b"}, map[string]string{"version": "2"}
			agent.RegisterInstance(t, inst)
		}, func(g map[string]*targetgroup.Group) bool {
			return label(g["web"], "node-2", "__meta_consul_tags") == ",b," &&
				label(g["web"], "node-2", "__meta_consul_service_metadata_version") == "2"
		}},
		// Consul's api (and so Prometheus) reports a maintenance check as
		// "maintenance", worse than critical.
		{"maintenance on", func() { setMaintenance(t, agent, "node-2", "web", true) },
			func(g map[string]*targetgroup.Group) bool {
				return label(g["web"], "node-2", "__meta_consul_health") == "maintenance"
			}},
		{"maintenance off", func() { setMaintenance(t, agent, "node-2", "web", false) },
			func(g map[string]*targetgroup.Group) bool {
				return label(g["web"], "node-2", "__meta_consul_health") == "passing"
			}},
		{"new service", func() { agent.RegisterInstance(t, consultest.Instance{Node: "node-1", Service: "cache", Port: 6379}) },
			func(g map[string]*targetgroup.Group) bool { return g["cache"] != nil && len(g["cache"].Targets) == 1 }},
		{"removed service", func() { agent.DeregisterInstance(t, "node-1", "cache") },
			func(g map[string]*targetgroup.Group) bool { return g["cache"] != nil && len(g["cache"].Targets) == 0 }},
	}
	for _, s := range steps {
		dbBefore, webBefore := proxy.Requests(dbPath), proxy.Requests(webPath)
		s.change()
		f.until(t, s.name, s.seen)
		if n := proxy.Requests(dbPath) - dbBefore; n != 0 {
			t.Errorf("%s: db was queried %d times, want 0: it did not change", s.name, n)
		}
		// The parked query returns with the change and is issued again;
		// "new service" and "removed service" do not touch web at all, a
		// node change on node-1 may.
		if n := proxy.Requests(webPath) - webBefore; n > 2 {
			t.Errorf("%s: web was queried %d times, want at most 2", s.name, n)
		}
	}
	if got := proxy.Requests(dbPath); got != 2 {
		t.Errorf("db was queried %d times in all, want 2: its blocking query never had to return", got)
	}
}

// setMaintenance puts an instance into maintenance as `consul maint` does:
// a critical check with the reserved maintenance ID.
func setMaintenance(t *testing.T, agent *consultest.Agent, node, serviceID string, on bool) {
	t.Helper()
	id := "_service_maintenance:" + serviceID
	var err error
	if on {
		_, err = agent.Client.Catalog().Register(&api.CatalogRegistration{
			Node: node, SkipNodeUpdate: true,
			Check: &api.AgentCheck{Node: node, CheckID: id, Name: "Service Maintenance Mode", Status: api.HealthCritical, ServiceID: serviceID},
		}, nil)
	} else {
		_, err = agent.Client.Catalog().Deregister(&api.CatalogDeregistration{Node: node, CheckID: id}, nil)
	}
	if err != nil {
		t.Fatalf("maintenance %v on %s/%s: %v", on, node, serviceID, err)
	}
}

// TestServiceWatchKeepsTargetsOfAFailingService checks the all-or-nothing
// rule of the per-service watch: nothing goes out before every service has
// answered, and a service whose query fails keeps its targets while other
// services' changes go on.
func TestServiceWatchKeepsTargetsOfAFailingService(t *testing.T) {
	agent := consultest.Start(t)
	proxy := faultproxy.StartTLS(t, agent.Addr)
	agent.RegisterInstance(t, consultest.Instance{Node: "node-1", Service: "web", Port: 80, Health: "passing"})
	agent.RegisterInstance(t, consultest.Instance{Node: "node-2", Service: "db", Port: 5432, Health: "passing"})
	const dbPath = "/v1/health/service/db"
	proxy.Set(dbPath, faultproxy.Status500)

	d, reg := newDiscovery(t, proxy.URL, func(c *consulsd.Config) {
		c.WatchMode = consulsd.WatchServices
		c.InsecureSkipVerify = true
		c.RefreshInterval = time.Hour
	})
	f := follow(t, d)
	// db keeps failing: its watch retries after a backoff.
	waitFor(t, "db's query to be retried", func() bool { return proxy.Requests(dbPath) >= 2 })
	proxy.Clear(dbPath)
	f.until(t, "the first snapshot", func(g map[string]*targetgroup.Group) bool { return len(g) > 0 })
	if f.groups["db"] == nil || f.groups["web"] == nil {
		t.Fatalf("first snapshot %v, want both web and db: it went out before db answered", f.groups)
	}
	if got := failures(t, reg, "http_status"); got < 2 {
		t.Errorf("http_status failures = %v, want at least 2", got)
	}

	// db fails again; web's changes still arrive, db keeps its target.
	proxy.Set(dbPath, faultproxy.Status500)
	agent.RegisterInstance(t, consultest.Instance{Node: "node-2", Service: "db", Port: 5433, Health: "passing"})
	waitFor(t, "db's failing query", func() bool { return proxy.Requests(dbPath) >= 4 })
	agent.SetHealth(t, consultest.Instance{Node: "node-1", Service: "web"}, "critical")
	f.until(t, "web critical", func(g map[string]*targetgroup.Group) bool {
		return label(g["web"], "node-1", "__meta_consul_health") == "critical"
	})
	if got := label(f.groups["db"], "node-2", "__meta_consul_service_port"); got != "5432" {
		t.Errorf("db's port = %q while its query fails, want the last good 5432", got)
	}
	proxy.Clear(dbPath)
	f.until(t, "db's new port once it answers", func(g map[string]*targetgroup.Group) bool {
		return label(g["db"], "node-2", "__meta_consul_service_port") == "5433"
	})
}

// TestServiceWatchNeedsHTTPS: over plain HTTP every parked query would hold
// a connection, so asking for the per-service watch there is an error, and
// auto picks it only over HTTPS.
func TestServiceWatchNeedsHTTPS(t *testing.T) {
	cfg := consulsd.DefaultConfig
	cfg.Address = "127.0.0.1:8500"
	cfg.WatchMode = consulsd.WatchServices
	if _, err := consulsd.New(cfg, log.NewNopLogger(), prometheus.NewRegistry()); err == nil || !strings.Contains(err.Error(), "HTTPS") {
		t.Errorf("services watch over plain HTTP: err = %v, want one that says it needs HTTPS", err)
	}
	cfg.Address = "https://127.0.0.1:8501"
	if _, err := consulsd.New(cfg, log.NewNopLogger(), prometheus.NewRegistry()); err != nil {
		t.Errorf("services watch over HTTPS: %v", err)
	}
}

// waitFor polls cond until it holds, failing the test after hangGuard.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestServiceNamesDifferingInCase: Consul finds "api" and "API" with either
// name; each instance is listed once, under the name it was registered
// with, by a round and by the per-service watch.
func TestServiceNamesDifferingInCase(t *testing.T) {
	agent := consultest.Start(t)
	proxy := faultproxy.StartTLS(t, agent.Addr)
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "api", Port: 80})
	agent.RegisterInstance(t, consultest.Instance{Node: "n2", Service: "API", Port: 81})
	check := func(t *testing.T, groups map[string]*targetgroup.Group) {
		t.Helper()
		for name, node := range map[string]string{"api": "n1", "API": "n2"} {
			g := groups[name]
			if g == nil || len(g.Targets) != 1 || byNode(g)[node] == nil {
				t.Errorf("%s: %v, want its one instance on %s", name, g, node)
			}
		}
	}
	t.Run("round", func(t *testing.T) {
		d, _ := newDiscovery(t, agent.Addr, nil)
		check(t, refresh(t, d))
	})
	t.Run("per-service watch", func(t *testing.T) {
		d, _ := newDiscovery(t, proxy.URL, func(c *consulsd.Config) {
			c.WatchMode = consulsd.WatchServices
			c.InsecureSkipVerify = true
		})
		f := follow(t, d)
		f.until(t, "api and API", func(g map[string]*targetgroup.Group) bool { return g["api"] != nil && g["API"] != nil })
		check(t, f.groups)
	})
}

// TestHealthRoundSeesPassingMaintenance: a maintenance check means
// maintenance whatever its own status, in a health-only round as in a full
// one.
func TestHealthRoundSeesPassingMaintenance(t *testing.T) {
	agent := consultest.Start(t)
	proxy := faultproxy.Start(t, agent.Addr)
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "web", Port: 80})
	d, _ := newDiscovery(t, proxy.Addr, nil)
	refresh(t, d)
	_, err := agent.Client.Catalog().Register(&api.CatalogRegistration{Node: "n1", SkipNodeUpdate: true,
		Check: &api.AgentCheck{Node: "n1", CheckID: api.ServiceMaintPrefix + "web", Name: "maintenance", Status: api.HealthPassing, ServiceID: "web"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	before := proxy.Requests("/v1/health/service/web")
	groups := refresh(t, d)
	if n := proxy.Requests("/v1/health/service/web") - before; n != 0 {
		t.Fatalf("web was queried %d times: not a health-only round, so this test tests nothing", n)
	}
	if got := byNode(groups["web"])["n1"]["__meta_consul_health"]; got != "maintenance" {
		t.Errorf("health = %q after a passing maintenance check, want maintenance", got)
	}
}

// TestBlockingQueriesStayOutOfTheHistogram: the watch's queries wait for
// minutes and are counted apart, so the request duration histogram holds
// only requests that answer at once.
func TestBlockingQueriesStayOutOfTheHistogram(t *testing.T) {
	agent := consultest.Start(t)
	proxy := faultproxy.StartTLS(t, agent.Addr)
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "web", Port: 80, Health: "passing"})
	d, reg := newDiscovery(t, proxy.URL, func(c *consulsd.Config) {
		c.WatchMode = consulsd.WatchServices
		c.InsecureSkipVerify = true
	})
	f := follow(t, d)
	f.until(t, "web", func(g map[string]*targetgroup.Group) bool { return g["web"] != nil })
	for _, status := range []string{"critical", "passing", "critical"} {
		agent.SetHealth(t, consultest.Instance{Node: "n1", Service: "web"}, status)
		f.until(t, "web "+status, func(g map[string]*targetgroup.Group) bool {
			return label(g["web"], "n1", "__meta_consul_health") == status
		})
	}
	// web's first query answered at once; the three that returned with a
	// change were blocking.
	if got := histogramCount(t, reg, "consul_sd_adapter_consul_request_duration_seconds", "/v1/health/service"); got != 1 {
		t.Errorf("request duration histogram holds %d health queries, want 1: the blocking ones leaked in", got)
	}
	if got := counterSum(t, reg, "consul_sd_adapter_consul_blocking_queries_total", "/v1/health/service"); got < 3 {
		t.Errorf("blocking health queries counted: %v, want at least 3", got)
	}
}

// histogramCount sums the sample counts of a histogram's series for endpoint.
func histogramCount(t *testing.T, reg *prometheus.Registry, name, endpoint string) uint64 {
	t.Helper()
	return uint64(sumSeries(t, reg, name, endpoint, func(m *dto.Metric) float64 { return float64(m.GetHistogram().GetSampleCount()) }))
}

// counterSum sums a counter's series for endpoint.
func counterSum(t *testing.T, reg *prometheus.Registry, name, endpoint string) float64 {
	t.Helper()
	return sumSeries(t, reg, name, endpoint, func(m *dto.Metric) float64 { return m.GetCounter().GetValue() })
}

// sumSeries sums value over a metric's series for endpoint, or over all of
// them for "".
func sumSeries(t *testing.T, reg *prometheus.Registry, name, endpoint string, value func(*dto.Metric) float64) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if endpoint == "" {
				sum += value(m)
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == "endpoint" && l.GetValue() == endpoint {
					sum += value(m)
				}
			}
		}
	}
	return sum
}

// TestServiceWatchNewServiceFailingHoldsUpNoOther: after the first
// snapshot, a new service whose query keeps failing is left out, and the
// other services' changes still go out.
func TestServiceWatchNewServiceFailingHoldsUpNoOther(t *testing.T) {
	agent := consultest.Start(t)
	proxy := faultproxy.StartTLS(t, agent.Addr)
	web := consultest.Instance{Node: "n1", Service: "web", Port: 80, Health: "passing"}
	agent.RegisterInstance(t, web)
	d, _ := newDiscovery(t, proxy.URL, func(c *consulsd.Config) {
		c.WatchMode = consulsd.WatchServices
		c.InsecureSkipVerify = true
	})
	f := follow(t, d)
	f.until(t, "web", func(g map[string]*targetgroup.Group) bool { return g["web"] != nil })

	proxy.Set("/v1/health/service/db", faultproxy.Status500)
	agent.RegisterInstance(t, consultest.Instance{Node: "n2", Service: "db", Port: 5432})
	waitFor(t, "db's query to fail", func() bool { return proxy.Requests("/v1/health/service/db") >= 1 })
	agent.SetHealth(t, web, "critical")
	f.until(t, "web critical while db fails", func(g map[string]*targetgroup.Group) bool {
		return label(g["web"], "n1", "__meta_consul_health") == "critical"
	})
	if f.groups["db"] != nil {
		t.Errorf("db sent before it ever answered: %v", f.groups["db"])
	}
	proxy.Clear("/v1/health/service/db")
	f.until(t, "db once it answers", func(g map[string]*targetgroup.Group) bool { return g["db"] != nil })
}

// TestServiceWatchRestartBeforeFirstAnswer: Consul's index goes backwards
// (a restart with less state, a restored snapshot) while a service has
// never answered; every watch starts over, and the first snapshot still
// goes out once that service answers.
func TestServiceWatchRestartBeforeFirstAnswer(t *testing.T) {
	agent := consultest.Start(t)
	proxy := faultproxy.StartTLS(t, agent.Addr)
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "web", Port: 80})
	agent.RegisterInstance(t, consultest.Instance{Node: "n2", Service: "db", Port: 5432})
	const dbPath, listPath = "/v1/health/service/db", "/v1/catalog/services"
	proxy.Set(dbPath, faultproxy.Status500)
	d, _ := newDiscovery(t, proxy.URL, func(c *consulsd.Config) {
		c.WatchMode = consulsd.WatchServices
		c.InsecureSkipVerify = true
	})
	f := follow(t, d)
	waitFor(t, "db's first query", func() bool { return proxy.Requests(dbPath) >= 1 })
	waitFor(t, "the list watch to park", func() bool { return proxy.Requests(listPath) >= 2 })

	// The parked list query was forwarded before the fault: a change wakes
	// it, and the one issued next reads index 1 once another change wakes
	// it: below what the watch has seen.
	lists := proxy.Requests(listPath)
	proxy.Set(listPath, faultproxy.IndexBackwards)
	agent.RegisterInstance(t, consultest.Instance{Node: "n3", Service: "cache", Port: 6379})
	waitFor(t, "the list query with the fault", func() bool { return proxy.Requests(listPath) >= lists+1 })
	agent.RegisterInstance(t, consultest.Instance{Node: "n4", Service: "queue", Port: 5672})
	waitFor(t, "the list watch to see the index go back", func() bool { return proxy.Requests(listPath) >= lists+2 })
	proxy.Clear(listPath)
	proxy.Clear(dbPath)
	f.until(t, "the first snapshot", func(g map[string]*targetgroup.Group) bool { return len(g) > 0 })
	for _, name := range []string{"web", "db", "cache", "queue"} {
		if f.groups[name] == nil {
			t.Errorf("first snapshot lacks %s: %v", name, f.groups)
		}
	}
}

// TestNewLeaderTakesNothingBack: a server just elected leader serves reads
// from what it has applied, which after every server restarted can be far
// behind its log, and refuses consistent reads until it has caught up. An
// answer below what the targets hold is confirmed with a consistent read
// before it counts as Consul having lost state; until then nothing is
// taken back, in either watch mode.
func TestNewLeaderTakesNothingBack(t *testing.T) {
	for _, mode := range []string{consulsd.WatchTables, consulsd.WatchServices} {
		t.Run(mode, func(t *testing.T) {
			agent := consultest.Start(t)
			proxy := faultproxy.StartTLS(t, agent.Addr)
			web := consultest.Instance{Node: "n1", Service: "web", Port: 80, Health: "passing"}
			agent.RegisterInstance(t, web)
			const list = "/v1/catalog/services"
			proxy.Keep(list) // what the new leader will have applied: web alone
			agent.RegisterInstance(t, consultest.Instance{Node: "n2", Service: "cache", Port: 6379, Health: "passing"})

			d, reg := newDiscovery(t, proxy.URL, func(c *consulsd.Config) {
				c.WatchMode = mode
				c.InsecureSkipVerify = true
				c.RefreshInterval = time.Hour // the watch drives every round
			})
			f := follow(t, d)
			seenCache, lost := false, false
			watchCache := func(g map[string]*targetgroup.Group) {
				has := g["cache"] != nil && len(g["cache"].Targets) == 1
				seenCache = seenCache || has
				lost = lost || (seenCache && !has)
			}
			f.until(t, "web and cache", func(g map[string]*targetgroup.Group) bool {
				watchCache(g)
				return seenCache && g["web"] != nil
			})

			proxy.Set(list, faultproxy.NewLeader)
			// A change wakes the list's blocking query; every read of the
			// list after it gets the new leader's old answer.
			before := proxy.Requests(list)
			agent.RegisterInstance(t, consultest.Instance{Node: "n3", Service: "web", Port: 80, Health: "passing"})
			waitFor(t, "reads of the list from the new leader", func() bool { return proxy.Requests(list) >= before+4 })
			proxy.ClearAll()
			agent.SetHealth(t, web, "critical")
			f.until(t, "web's health flip once the leader caught up", func(g map[string]*targetgroup.Group) bool {
				watchCache(g)
				return label(g["web"], "n1", "__meta_consul_health") == "critical"
			})
			if lost {
				t.Error("the new leader's old answer took cache out of the targets")
			}
			if n := counterSum(t, reg, "consul_sd_adapter_consul_behind_answers_total", ""); n < 1 {
				t.Errorf("consul_behind_answers_total = %v, want at least 1", n)
			}
		})
	}
}
