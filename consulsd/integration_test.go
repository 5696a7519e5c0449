package consulsd_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"

	"github.com/consul-sd-adapter/consul-sd-adapter/consulsd"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/faultproxy"
)

// hangGuard bounds waits that only end if the code works; it is no timing
// assertion, just a limit on how long a broken build makes the test hang.
const hangGuard = 30 * time.Second

func newDiscovery(t *testing.T, addr string, edit func(*consulsd.Config)) (*consulsd.Discovery, *prometheus.Registry) {
	t.Helper()
	cfg := consulsd.DefaultConfig
	cfg.Address = addr
	cfg.RefreshInterval = 100 * time.Millisecond
	if edit != nil {
		edit(&cfg)
	}
	reg := prometheus.NewRegistry()
	d, err := consulsd.New(cfg, log.NewNopLogger(), reg)
	if err != nil {
		t.Fatal(err)
	}
	return d, reg
}

func refresh(t *testing.T, d *consulsd.Discovery) map[string]*targetgroup.Group {
	t.Helper()
	groups, err := d.Refresh(context.Background())
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	bySource := map[string]*targetgroup.Group{}
	for _, g := range groups {
		bySource[g.Source] = g
	}
	return bySource
}

// byNode indexes a group's targets by their node label. Each target's
// labels are merged over the group's, as Prometheus merges them.
func byNode(g *targetgroup.Group) map[string]model.LabelSet {
	m := map[string]model.LabelSet{}
	if g == nil {
		return m
	}
	for _, tg := range g.Targets {
		tg = g.Labels.Merge(tg)
		m[string(tg["__meta_consul_node"])] = tg
	}
	return m
}

func TestEachInstanceHasItsOwnLabels(t *testing.T) {
	agent := consultest.Start(t)
	for i := 1; i <= 3; i++ {
		agent.RegisterInstance(t, consultest.Instance{
			Node:        fmt.Sprintf("node-%d", i),
			NodeAddress: fmt.Sprintf("10.0.0.%d", i),
			NodeMeta:    map[string]string{"rack-id": fmt.Sprintf("r%d", i)},
			Service:     "web",
			Port:        8080 + i,
			Tags:        []string{"frontend", fmt.Sprintf("v%d", i)},
			Meta:        map[string]string{"instance": fmt.Sprint(i)},
			Health:      map[int]string{1: "passing", 2: "warning", 3: "critical"}[i],
		})
	}
	d, _ := newDiscovery(t, agent.Addr, nil)

	groups := refresh(t, d)
	if _, ok := groups["consul"]; ok {
		t.Error("Consul's own service discovered, want it left out by default")
	}
	targets := byNode(groups["web"])
	if len(targets) != 3 {
		t.Fatalf("web has %d targets, want 3: %v", len(targets), groups["web"])
	}
	for i := 1; i <= 3; i++ {
		tg := targets[fmt.Sprintf("node-%d", i)]
		want := model.LabelSet{
			"__address__":                             model.LabelValue(fmt.Sprintf("10.0.0.%d:%d", i, 8080+i)),
			"__meta_consul_address":                   model.LabelValue(fmt.Sprintf("10.0.0.%d", i)),
			"__meta_consul_metadata_rack_id":          model.LabelValue(fmt.Sprintf("r%d", i)),
			"__meta_consul_service_metadata_instance": model.LabelValue(fmt.Sprint(i)),
			"__meta_consul_tags":                      model.LabelValue(fmt.Sprintf(",frontend,v%d,", i)),
			"__meta_consul_health":                    model.LabelValue(map[int]string{1: "passing", 2: "warning", 3: "critical"}[i]),
			"__meta_consul_service":                   "web",
			"__meta_consul_dc":                        "dc1",
		}
		for name, v := range want {
			if tg[name] != v {
				t.Errorf("node-%d: %s = %q, want %q", i, name, tg[name], v)
			}
		}
	}

	agent.DeregisterNode(t, "node-2")
	targets = byNode(refresh(t, d)["web"])
	if _, ok := targets["node-2"]; ok || len(targets) != 2 {
		t.Errorf("after deregistering node-2: targets on %v, want node-1 and node-3", keys(targets))
	}

	agent.DeregisterNode(t, "node-1")
	agent.DeregisterNode(t, "node-3")
	groups = refresh(t, d)
	if g, ok := groups["web"]; !ok || len(g.Targets) != 0 {
		t.Errorf("web vanished: got %v, want an empty group so the Manager drops its targets", g)
	}
	if _, ok := refresh(t, d)["web"]; ok {
		t.Error("the empty group for a vanished service is sent again in the next round")
	}
}

func TestSelection(t *testing.T) {
	agent := consultest.Start(t)
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "web", ID: "web-1", Port: 1, Tags: []string{"prod"}, Meta: map[string]string{"env": "prod"}})
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "web", ID: "web-2", Port: 2, Tags: []string{"canary"}, Meta: map[string]string{"env": "staging"}})
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "db", Port: 3, Tags: []string{"prod"}})

	tests := []struct {
		name string
		edit func(*consulsd.Config)
		want map[string]int // targets per service
	}{
		{"everything but consul", nil, map[string]int{"web": 2, "db": 1}},
		{"allow-list", func(c *consulsd.Config) { c.Services = []string{"db", "consul"} }, map[string]int{"db": 1, "consul": 1}},
		{"tag", func(c *consulsd.Config) { c.Tags = []string{"prod"} }, map[string]int{"web": 1, "db": 1}},
		{"filter expression", func(c *consulsd.Config) { c.Filter = `Service.Meta.env == "staging"` }, map[string]int{"web": 1, "db": 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, _ := newDiscovery(t, agent.Addr, tc.edit)
			got := map[string]int{}
			for name, g := range refresh(t, d) {
				got[name] = len(g.Targets)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("targets per service %v, want %v", got, tc.want)
			}
		})
	}
}

// TestOneFailedQueryFailsTheRound: one service answering 500 means no
// snapshot at all, and the failure is counted with its reason.
func TestOneFailedQueryFailsTheRound(t *testing.T) {
	agent := consultest.Start(t)
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "web", Port: 80})
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "db", Port: 5432})
	proxy := faultproxy.Start(t, agent.Addr)
	d, reg := newDiscovery(t, proxy.Addr, nil)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := make(chan []*targetgroup.Group)
	done := make(chan struct{})
	proxy.Set("/v1/health/service/db", faultproxy.Status500)
	go func() { d.Run(ctx, ch); close(done) }()

	// Several failed rounds, and not one snapshot from them.
	deadline := time.After(hangGuard)
	for proxy.Requests("/v1/health/service/db") < 3 {
		select {
		case g := <-ch:
			t.Fatalf("snapshot sent while a query failed: %v", g)
		case <-deadline:
			t.Fatal("no retries of the failed round")
		case <-time.After(10 * time.Millisecond):
		}
	}
	if got := failures(t, reg, "http_status"); got < 1 {
		t.Errorf("http_status failures = %v, want at least 1", got)
	}

	proxy.Clear("/v1/health/service/db")
	select {
	case groups := <-ch:
		if len(groups) != 2 {
			t.Errorf("snapshot after recovery has %d groups, want 2", len(groups))
		}
	case <-deadline:
		t.Fatal("no snapshot after the fault cleared")
	}
	cancel()
	<-done
}

// TestRunStopsMidRound: a request that hangs must not hold up shutdown.
func TestRunStopsMidRound(t *testing.T) {
	agent := consultest.Start(t)
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "web", Port: 80})
	proxy := faultproxy.Start(t, agent.Addr)
	proxy.Set("/v1/health/service/web", faultproxy.Hang)
	d, _ := newDiscovery(t, proxy.Addr, func(c *consulsd.Config) { c.RequestTimeout = time.Hour })

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx, make(chan []*targetgroup.Group)); close(done) }()
	for proxy.Requests("/v1/health/service/web") == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(hangGuard):
		t.Fatal("Run did not return after its context ended during a hanging request")
	}
}

func TestFaultsFailTheRound(t *testing.T) {
	agent := consultest.Start(t)
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "web", Port: 80})
	proxy := faultproxy.Start(t, agent.Addr)
	tests := []struct {
		fault  faultproxy.Fault
		reason string
	}{
		{faultproxy.Status500, "http_status"},
		{faultproxy.Status403, "http_status"},
		{faultproxy.Status429, "http_status"},
		{faultproxy.Status503, "http_status"},
		{faultproxy.Hang, "timeout"},
		{faultproxy.Reset, "connection"},
		{faultproxy.Truncate, "decode"},
		{faultproxy.BadJSON, "decode"},
	}
	for _, tc := range tests {
		t.Run(tc.fault.String(), func(t *testing.T) {
			d, reg := newDiscovery(t, proxy.Addr, func(c *consulsd.Config) { c.RequestTimeout = 500 * time.Millisecond })
			refresh(t, d) // a good round first
			// A change, so that the next round has to query the service again.
			agent.RegisterInstance(t, consultest.Instance{Node: "n2", Service: "web", ID: "web-" + tc.fault.String(), Port: 81})
			proxy.Set("/v1/health/service/web", tc.fault)
			defer proxy.ClearAll()
			if groups, err := d.Refresh(context.Background()); err == nil {
				t.Fatalf("round succeeded under %v: %v", tc.fault, groups)
			}
			if got := failures(t, reg, tc.reason); got != 1 {
				t.Errorf("failures{reason=%q} = %v, want 1", tc.reason, got)
			}
		})
	}
}

// failures reads consul_sd_adapter_refresh_failures_total{reason=...}.
func failures(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	return labeledCounter(t, reg, "consul_sd_adapter_refresh_failures_total", "reason", reason)
}

// labeledCounter reads the series of a counter whose label is value.
func labeledCounter(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no series %s{%s=%q}", name, label, value)
	return 0
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// truth reads, straight from the agent, what the targets should be: a key
// per instance of every service but consul's own, with the labels that a
// change could touch.
func truth(t *testing.T, agent *consultest.Agent) map[string]string {
	t.Helper()
	services, _, err := agent.Client.Catalog().Services(nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for name := range services {
		if name == "consul" {
			continue
		}
		entries, _, err := agent.Client.Health().Service(name, "", false, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			want[e.Node.Node+"/"+e.Service.ID] = fmt.Sprintf("health=%s rack=%s tags=%v port=%d",
				e.Checks.AggregatedStatus(), e.Node.Meta["rack"], e.Service.Tags, e.Service.Port)
		}
	}
	return want
}

// seen is what a snapshot says, in the same shape as truth.
func seen(groups map[string]*targetgroup.Group) map[string]string {
	got := map[string]string{}
	for _, g := range groups {
		for _, tg := range g.Targets {
			tg = g.Labels.Merge(tg)
			tags := strings.Split(strings.Trim(string(tg["__meta_consul_tags"]), ","), ",")
			if tags[0] == "" {
				tags = []string{}
			}
			got[string(tg["__meta_consul_node"])+"/"+string(tg["__meta_consul_service_id"])] = fmt.Sprintf("health=%s rack=%s tags=%v port=%s",
				tg["__meta_consul_health"], tg["__meta_consul_metadata_rack"], tags, tg["__meta_consul_service_port"])
		}
	}
	return got
}

// TestQuietRoundsMissNoChange: rounds without a change in Consul skip the
// per-service queries, and every kind of change is still picked up by the
// very next round.
func TestQuietRoundsMissNoChange(t *testing.T) {
	agent := consultest.Start(t)
	web1 := consultest.Instance{Node: "n1", NodeMeta: map[string]string{"rack": "r1"}, Service: "web", ID: "web-1", Port: 80, Tags: []string{"a"}}
	web2 := consultest.Instance{Node: "n2", NodeMeta: map[string]string{"rack": "r2"}, Service: "web", ID: "web-2", Port: 80}
	agent.RegisterInstance(t, web1)
	agent.RegisterInstance(t, web2)
	proxy := faultproxy.Start(t, agent.Addr)
	// An hour: with the default of these tests (100 ms), the full round a
	// located round owes could fall on a round this test expects quiet.
	d, _ := newDiscovery(t, proxy.Addr, func(c *consulsd.Config) { c.RefreshInterval = time.Hour })

	check := func(step string) {
		t.Helper()
		if got, want := seen(refresh(t, d)), truth(t, agent); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("after %s:\n got %v\nwant %v", step, got, want)
		}
	}
	check("start")

	// The first quiet round reads the service once more, from the leader
	// (the start was read with stale reads). The agent itself touches the
	// catalog now and then (anti-entropy right after start, its own
	// checks), which rightly costs a full round and its settling; without
	// the shortcut, every one of the ten rounds would query the service.
	before := proxy.Requests("/v1/health/service/web")
	scansBefore := proxy.Requests("/v1/health/state/any")
	for range 10 {
		check("a quiet round")
	}
	if n := proxy.Requests("/v1/health/service/web") - before; n > 3 {
		t.Errorf("%d per-service queries in 10 quiet rounds, want at most 3", n)
	}
	// A quiet round reads the checks table's index where Consul iterates
	// no checks; a state query filters every check of the catalog.
	if n := proxy.Requests("/v1/health/state/any") - scansBefore; n > 0 {
		t.Errorf("%d health state queries in 10 quiet rounds, want none", n)
	}
	if n := proxy.GzipRequests(); n > 0 {
		t.Errorf("%d requests asked Consul to gzip its answer, want none", n)
	}

	steps := []struct {
		name   string
		change func()
		// Only checks change: the round reads the checks that are not
		// passing instead of querying each service.
		healthOnly bool
		// The settling round reads again, from the leader, the services
		// the change's health round changed: web, or not. A located round
		// checks its answers against Consul's node dump instead, and owes
		// no settling.
		settlesWeb bool
	}{
		{"a health flip", func() { agent.SetHealth(t, web1, "critical") }, true, true},
		{"a health flip to warning", func() { agent.SetHealth(t, web1, "warning") }, true, true},
		{"a health flip back", func() { agent.SetHealth(t, web1, "passing") }, true, true},
		{"a failing node check", func() { agent.SetNodeHealth(t, "n2", "critical") }, true, true},
		// web-2 was critical already: its group does not change.
		{"a service check failing on a failing node", func() { agent.SetHealth(t, web2, "critical") }, true, false},
		{"a node check back to passing", func() { agent.SetNodeHealth(t, "n2", "passing") }, true, false},
		{"a service check back to passing", func() { agent.SetHealth(t, web2, "passing") }, true, true},
		{name: "a node meta change", change: func() {
			web2.NodeMeta = map[string]string{"rack": "r9"}
			agent.RegisterInstance(t, web2)
		}},
		{name: "a tag change", change: func() {
			web1.Tags = []string{"a", "b"}
			agent.RegisterInstance(t, web1)
		}},
		{name: "a port change", change: func() {
			web1.Port = 81
			agent.RegisterInstance(t, web1)
		}},
		{name: "a registration", change: func() {
			agent.RegisterInstance(t, consultest.Instance{Node: "n3", Service: "web", ID: "web-3", Port: 80})
		}},
		{name: "a new service", change: func() { agent.RegisterInstance(t, consultest.Instance{Node: "n3", Service: "db", Port: 5432}) }},
		{name: "a deregistration", change: func() { agent.DeregisterInstance(t, "n3", "web-3") }},
		{name: "a node deregistration", change: func() { agent.DeregisterNode(t, "n3") }},
	}
	queries := func() int { return proxy.Requests("/v1/health/service/web") }
	for _, step := range steps {
		step.change()
		before := queries()
		check(step.name)
		if n := queries() - before; step.healthOnly && n > 0 {
			t.Errorf("after %s: %d per-service queries, want none", step.name, n)
		}
		// The change was read with stale reads: the next quiet round
		// settles it, reading what it read once from the leader; the one
		// after that is quiet again.
		want := 0
		if step.settlesWeb {
			want = 1
		}
		before = queries()
		check(step.name + ", then a quiet round")
		if n := queries() - before; n != want {
			t.Errorf("after %s, the settling round queried web %d times, want %d", step.name, n, want)
		}
		before = queries()
		check(step.name + ", then another quiet round")
		if n := queries() - before; n != 0 {
			t.Errorf("after %s and its settling, a quiet round made %d per-service queries, want none", step.name, n)
		}
	}
}

// TestWatchWakesTheRound: with a refresh interval far beyond the test's
// patience, a change still reaches the channel, through the blocking query.
// It runs with one request in flight at most, so the blocking queries must
// not take the connection the round needs.
func TestWatchWakesTheRound(t *testing.T) {
	agent := consultest.Start(t)
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "web", Port: 80})
	d, _ := newDiscovery(t, agent.Addr, func(c *consulsd.Config) {
		c.RefreshInterval = time.Hour
		c.MaxConcurrency = 1
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := make(chan []*targetgroup.Group)
	go d.Run(ctx, ch)

	next := func() map[string]string {
		select {
		case groups := <-ch:
			bySource := map[string]*targetgroup.Group{}
			for _, g := range groups {
				bySource[g.Source] = g
			}
			return seen(bySource)
		case <-time.After(hangGuard):
			t.Fatal("no snapshot: the watch did not wake the round")
			return nil
		}
	}
	next() // the first round runs at once
	agent.RegisterInstance(t, consultest.Instance{Node: "n2", Service: "web", Port: 80})
	for got := next(); len(got) != 2; got = next() {
	}
	agent.SetHealth(t, consultest.Instance{Node: "n2", Service: "web", Port: 80}, "critical")
	for got := next(); got["n2/web"] != "health=critical rack= tags=[] port=80"; got = next() {
	}
}

// TestWakesTheRoundSawAreSkipped: a registration moves the services and
// the checks tables at once, and their blocking queries return one after
// the other. The round the first one woke read both indexes; the second
// wake starts no round of its own.
func TestWakesTheRoundSawAreSkipped(t *testing.T) {
	agent := consultest.Start(t)
	web := consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", Port: 80}
	agent.RegisterInstance(t, web)
	d, reg := newDiscovery(t, agent.Addr, func(c *consulsd.Config) { c.RefreshInterval = time.Hour })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := make(chan []*targetgroup.Group, 100)
	go d.Run(ctx, ch)
	waitFor := func(instances int) {
		t.Helper()
		for deadline := time.After(hangGuard); ; {
			select {
			case groups := <-ch:
				for _, g := range groups {
					if g.Source == "web" && len(g.Targets) == instances {
						return
					}
				}
			case <-deadline:
				t.Fatalf("web never had %d instances", instances)
			}
		}
	}
	waitFor(1)
	time.Sleep(time.Second) // the agent touches its own node after it starts

	quiet := labeledCounter(t, reg, "consul_sd_adapter_rounds_total", "kind", "quiet")
	for i := range 5 {
		web.ID, web.Port = fmt.Sprintf("web-%d", i), 81+i
		agent.RegisterInstance(t, web)
		waitFor(2 + i)
		time.Sleep(300 * time.Millisecond) // the second wake, if any, has come
	}
	if n := labeledCounter(t, reg, "consul_sd_adapter_rounds_total", "kind", "quiet") - quiet; n != 0 {
		t.Errorf("%v quiet rounds after 5 registrations, want none: a wake the round before had read started one", n)
	}
}

// TestWatchSurvivesAgentRestart: a restarted dev agent starts over with a
// lower index. The watch must not keep blocking on the old one, or nothing
// would wake the round until the refresh interval.
func TestWatchSurvivesAgentRestart(t *testing.T) {
	agent := consultest.Start(t)
	for i := range 5 { // push the index up, so the restarted agent's is lower
		agent.RegisterInstance(t, consultest.Instance{Node: fmt.Sprintf("n%d", i), Service: "web", Port: 80})
	}
	d, reg := newDiscovery(t, agent.Addr, func(c *consulsd.Config) { c.RefreshInterval = time.Hour })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := make(chan []*targetgroup.Group)
	go d.Run(ctx, ch)
	select {
	case <-ch:
	case <-time.After(hangGuard):
		t.Fatal("no first snapshot")
	}

	// Restart only once the watch has seen the agent gone; with an hour's
	// refresh interval, only the watch can bring the new state in.
	agent.Kill()
	for deadline := time.Now().Add(hangGuard); unanswered(t, reg) == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the watch never noticed the agent was gone")
		}
	}
	agent.Restart(t)
	agent.RegisterInstance(t, consultest.Instance{Node: "after-restart", Service: "db", Port: 5432})
	deadline := time.After(hangGuard)
	for {
		select {
		case groups := <-ch:
			for _, g := range groups {
				if g.Source == "db" && len(g.Targets) == 1 {
					return
				}
			}
		case <-deadline:
			t.Fatal("the restarted agent's catalog never reached the channel: the watch is stuck on the old index")
		}
	}
}

// unanswered counts requests to Consul that got no answer at all.
func unanswered(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "consul_sd_adapter_consul_request_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "code" && l.GetValue() == "0" {
					n += float64(m.GetHistogram().GetSampleCount())
				}
			}
		}
	}
	return n
}

// TestUnchangedServicesKeepTheirGroups: after a change to one service, the
// next snapshot holds the very same group values for the others, so the
// Manager and the adapter never hold two copies of an unchanged service.
func TestUnchangedServicesKeepTheirGroups(t *testing.T) {
	agent := consultest.Start(t)
	web := consultest.Instance{Node: "n1", Service: "web", Port: 80}
	agent.RegisterInstance(t, web)
	agent.RegisterInstance(t, consultest.Instance{Node: "n2", Service: "db", Port: 5432})
	d, _ := newDiscovery(t, agent.Addr, nil)

	first := refresh(t, d)
	agent.SetHealth(t, web, "critical")
	second := refresh(t, d)
	if second["db"] != first["db"] {
		t.Error("db did not change but got a new group")
	}
	if second["web"] == first["web"] {
		t.Fatal("web changed but kept its old group")
	}
	if got := byNode(second["web"])["n1"]["__meta_consul_health"]; got != "critical" {
		t.Errorf("web's health = %q, want critical", got)
	}
	if got := byNode(first["web"])["n1"]["__meta_consul_health"]; got != "passing" {
		t.Errorf("the group sent before was changed afterwards: health %q, want passing", got)
	}

	// The health flip took the health-only round; a tag change takes a
	// full one, which must keep db's group too.
	web.Tags = []string{"v2"}
	agent.RegisterInstance(t, web)
	third := refresh(t, d)
	if third["db"] != first["db"] {
		t.Error("db did not change but got a new group in a full round")
	}
	if got := byNode(third["web"])["n1"]["__meta_consul_tags"]; got != ",v2," {
		t.Errorf("web's tags = %q after the full round, want ,v2,", got)
	}
}

// TestFailedRoundForcesFullRound: after a failed round the next one queries
// every service even though no index moved. A Consul that restarted may
// come back with indexes that happen to equal the old ones; only the
// services' own answers can tell.
func TestFailedRoundForcesFullRound(t *testing.T) {
	agent := consultest.Start(t)
	// Not at the agent's address, where the node dump would add to the
	// node's meta and web's answer would be read twice (see answerDigest).
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", Port: 80})
	proxy := faultproxy.Start(t, agent.Addr)
	// An hour: no full round owed by a located one may fall on the quiet round.
	d, _ := newDiscovery(t, proxy.Addr, func(c *consulsd.Config) { c.RefreshInterval = time.Hour })
	refresh(t, d)
	refresh(t, d) // the agent's own anti-entropy may still move an index

	before := proxy.Requests("/v1/health/service/web")
	refresh(t, d)
	if n := proxy.Requests("/v1/health/service/web") - before; n != 0 {
		t.Fatalf("a quiet round queried web %d times, want 0", n)
	}
	proxy.Set("/v1/catalog/services", faultproxy.Status500)
	if _, err := d.Refresh(context.Background()); err == nil {
		t.Fatal("round succeeded through a 500")
	}
	proxy.ClearAll()
	before = proxy.Requests("/v1/health/service/web")
	refresh(t, d)
	if n := proxy.Requests("/v1/health/service/web") - before; n != 1 {
		t.Errorf("the round after a failure queried web %d times, want 1", n)
	}
}

// TestStaleAnswersSettle: with stale reads a lagging server can answer the
// services of a round while another gave its indexes. The round then holds
// old answers under new indexes, and no index moves again to show it. Where
// answers cannot be checked against Consul's node dump (a filter on each
// service's instances, here tags; else see TestLaggingAnswerIsReadAgain),
// the first quiet round after a change reads what the rounds read once
// from the leader, so the file reaches the truth one refresh interval after
// the catalog went quiet, whichever server answered.
func TestStaleAnswersSettle(t *testing.T) {
	lw := startLaggingWeb(t, func(c *consulsd.Config) { c.Tags = []string{"a"} })
	d, proxy, path := lw.d, lw.proxy, lw.path

	if got := webPort(refresh(t, d)); got != "80" {
		t.Fatalf("round after the change saw port %s: the lagging answer was not used, so this test tests nothing", got)
	}
	if got := webPort(refresh(t, d)); got != "81" {
		t.Errorf("the quiet round after the change left port %s, want the leader's 81", got)
	}
	before := proxy.Requests(path)
	refresh(t, d)
	if n := proxy.Requests(path) - before; n != 0 {
		t.Errorf("a quiet round after settling queried web %d times, want none", n)
	}
}

// TestLaggingServerTakesNothingBack: a server behind what a round before
// applied (restarted and replaying its log, cut off and catching up)
// answers a later round with stale reads. Its answer would take the change
// back; the round is read again from the leader instead, and counted.
func TestLaggingServerTakesNothingBack(t *testing.T) {
	lw := startLaggingWeb(t, nil)
	agent, proxy, d, reg, path := lw.agent, lw.proxy, lw.d, lw.reg, lw.path
	refresh(t, d)
	if got := webPort(refresh(t, d)); got != "81" {
		t.Fatalf("the settling round left port %s, want the leader's 81", got)
	}

	// A new instance of web moves the catalog's indexes and web's checks:
	// the next round queries web again, from the lagging server.
	agent.RegisterInstance(t, consultest.Instance{Node: "n2", Service: "web", Port: 82})
	leaderReads := proxy.Requests(path)
	groups := refresh(t, d)
	if got := webPort(groups); got != "81" {
		t.Errorf("a round with web's answer from a lagging server wrote port %s, want 81", got)
	}
	if _, ok := byNode(groups["web"])["n2"]; !ok {
		t.Errorf("the round read again from the leader lacks web's new instance on n2: %v", groups["web"])
	}
	if n := proxy.Requests(path) - leaderReads; n != 2 {
		t.Errorf("web was queried %d times in the round, want 2: once stale, once from the leader", n)
	}
	if n := counterSum(t, reg, "consul_sd_adapter_consul_behind_answers_total", ""); n != 1 {
		t.Errorf("consul_behind_answers_total = %v, want 1", n)
	}
}

// laggingWeb is an agent behind a fault proxy, with a service web on n1
// whose port went from 80 to 81 after a follower stopped applying writes:
// stale reads of web (path) get port 80, reads without ?stale (the
// leader's) 81. d is a Discovery through the proxy that read web before,
// settled (its first round, with stale reads, and the quiet one after).
type laggingWeb struct {
	agent *consultest.Agent
	proxy *faultproxy.Proxy
	d     *consulsd.Discovery
	reg   *prometheus.Registry
	path  string
}

func startLaggingWeb(t *testing.T, configure func(*consulsd.Config)) laggingWeb {
	t.Helper()
	agent := consultest.Start(t)
	proxy := faultproxy.Start(t, agent.Addr)
	web := consultest.Instance{Node: "n1", Service: "web", Port: 80, Tags: []string{"a"}}
	agent.RegisterInstance(t, web)
	d, reg := newDiscovery(t, proxy.Addr, configure)
	refresh(t, d)
	refresh(t, d)

	const path = "/v1/health/service/web"
	proxy.Set(path, faultproxy.Lagging)
	// The proxy keeps the answer to the first stale read from now on.
	resp, err := http.Get(proxy.URL + path + "?stale")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	web.Port = 81
	agent.RegisterInstance(t, web)
	return laggingWeb{agent: agent, proxy: proxy, d: d, reg: reg, path: path}
}

// webPort is the port of web's instance on n1.
func webPort(groups map[string]*targetgroup.Group) string {
	return string(byNode(groups["web"])["n1"]["__meta_consul_service_port"])
}
