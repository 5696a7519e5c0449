package consulsd_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/discovery/targetgroup"

	"github.com/consul-sd-adapter/consul-sd-adapter/consulsd"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/faultproxy"
)

// locatedCatalog registers services svc-00 … svc-11, each one instance
// with a check, three to a node (node-0 … node-3), and returns them.
func locatedCatalog(t *testing.T, agent *consultest.Agent) []consultest.Instance {
	var all []consultest.Instance
	for i := range 12 {
		inst := consultest.Instance{
			Node: fmt.Sprintf("node-%d", i/3), NodeMeta: map[string]string{"rack": "r1"},
			Service: fmt.Sprintf("svc-%02d", i), Port: 8000 + i, Tags: []string{"a"},
		}
		agent.RegisterInstance(t, inst)
		all = append(all, inst)
	}
	return all
}

// serviceQueries counts the per-service queries the proxy has seen.
func serviceQueries(proxy *faultproxy.Proxy, names ...string) int {
	n := 0
	for _, name := range names {
		n += proxy.Requests("/v1/health/service/" + name)
	}
	return n
}

// rounds reads consul_sd_adapter_rounds_total{kind=...}.
func rounds(t *testing.T, reg *prometheus.Registry, kind string) float64 {
	t.Helper()
	return labeledCounter(t, reg, "consul_sd_adapter_rounds_total", "kind", kind)
}

// TestLocatedRoundsQueryOnlyWhatChanged: in the tables watch, a round
// compares Consul's bulk answers (the service list, every check, every
// node) with the previous round's and queries only the services they point
// at; the snapshot still equals Consul after every kind of change. A change
// none of them shows (a port) costs a full round.
func TestLocatedRoundsQueryOnlyWhatChanged(t *testing.T) {
	agent := consultest.Start(t)
	all := locatedCatalog(t, agent)
	names := []string{"new"}
	for _, inst := range all {
		names = append(names, inst.Service)
	}
	proxy := faultproxy.Start(t, agent.Addr)
	d, reg := newDiscovery(t, proxy.Addr, func(c *consulsd.Config) {
		c.AllowStale = false // no settling rounds: every count below is exact
		c.RefreshInterval = time.Hour
	})
	check := func(step string) {
		t.Helper()
		if got, want := seen(refresh(t, d)), truth(t, agent); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("after %s:\n got %v\nwant %v", step, got, want)
		}
	}
	// The agent touches its own node and checks after it starts.
	for range 3 {
		check("start")
	}

	moved := all[4] // svc-04 on node-1
	steps := []struct {
		name    string
		change  func()
		queries int    // per-service queries the round makes
		kind    string // of round
	}{
		{"a new instance on a new node", func() {
			agent.RegisterInstance(t, consultest.Instance{Node: "node-9", Service: "svc-01", ID: "svc-01-b", Port: 9001, Tags: []string{"a"}})
		}, 1, "located"},
		{"its deregistration", func() { agent.DeregisterInstance(t, "node-9", "svc-01-b") }, 1, "located"},
		{"a tag change", func() {
			all[2].Tags = []string{"a", "b"}
			agent.RegisterInstance(t, all[2])
		}, 1, "located"},
		{"a node meta change", func() {
			moved.NodeMeta = map[string]string{"rack": "r2"}
			agent.RegisterInstance(t, moved)
		}, 3, "located"}, // the three services on node-1
		{"a new service", func() {
			agent.RegisterInstance(t, consultest.Instance{Node: "node-0", NodeMeta: map[string]string{"rack": "r1"}, Service: "new", Port: 7000})
		}, 1, "located"},
		{"a removed service", func() { agent.DeregisterInstance(t, "node-0", "new") }, 0, "located"},
		{"a node address change", func() {
			moved.NodeAddress = "10.1.1.1"
			agent.RegisterInstance(t, moved)
		}, 3, "located"},
		{"maintenance on", func() { setMaintenance(t, agent, "node-2", "svc-06", true) }, 0, "health"},
		{"maintenance off", func() { setMaintenance(t, agent, "node-2", "svc-06", false) }, 0, "health"},
		{"a node check failing", func() { agent.SetNodeHealth(t, "node-2", "critical") }, 0, "health"},
		{"a service check failing", func() { agent.SetHealth(t, all[7], "critical") }, 0, "health"},
		// No list shows these two.
		{"a port change", func() {
			all[9].Port = 9999
			agent.RegisterInstance(t, all[9])
		}, 12, "full"},
		{"a service meta change", func() {
			all[10].Meta = map[string]string{"version": "2"}
			agent.RegisterInstance(t, all[10])
		}, 12, "full"},
	}
	for _, step := range steps {
		step.change()
		before, kindBefore := serviceQueries(proxy, names...), rounds(t, reg, step.kind)
		check(step.name)
		if n := serviceQueries(proxy, names...) - before; n != step.queries {
			t.Errorf("after %s: %d per-service queries, want %d", step.name, n, step.queries)
		}
		if rounds(t, reg, step.kind) != kindBefore+1 {
			t.Errorf("after %s: not a %s round", step.name, step.kind)
		}
	}
}

// TestLocatedRoundOwesAFullOne: a change no bulk answer shows, in the same
// round as one they do, is missed by the located round; a full round
// follows within the refresh interval, and the snapshot reaches Consul.
func TestLocatedRoundOwesAFullOne(t *testing.T) {
	agent := consultest.Start(t)
	all := locatedCatalog(t, agent)
	d, reg := newDiscovery(t, agent.Addr, func(c *consulsd.Config) { c.AllowStale = false })
	for range 3 {
		refresh(t, d)
	}
	all[0].Tags = []string{"a", "b"} // shown by the service list
	agent.RegisterInstance(t, all[0])
	all[5].Port = 9999 // shown by nothing
	agent.RegisterInstance(t, all[5])

	fullBefore := rounds(t, reg, "full")
	got := seen(refresh(t, d))
	if rounds(t, reg, "full") != fullBefore {
		t.Fatal("the round after both changes was a full one: this test tests nothing")
	}
	if !strings.Contains(fmt.Sprint(got), "port=8005") {
		t.Fatalf("the located round saw the port change: this test tests nothing: %v", got)
	}
	deadline := time.Now().Add(hangGuard)
	for fmt.Sprint(got) != fmt.Sprint(truth(t, agent)) {
		if time.Now().After(deadline) {
			t.Fatalf("no round caught the port change: %v", got)
		}
		time.Sleep(20 * time.Millisecond)
		got = seen(refresh(t, d))
	}
	if rounds(t, reg, "full") != fullBefore+1 {
		t.Errorf("full rounds went from %v to %v, want one more", fullBefore, rounds(t, reg, "full"))
	}
}

// TestLocatedRoundSeesWhatAFilterLetsIn: with a filter on nodes, an
// instance left out is in no group; when its node changes so that the
// filter lets it in, the round still finds its service, by asking the node.
func TestLocatedRoundSeesWhatAFilterLetsIn(t *testing.T) {
	agent := consultest.Start(t)
	all := locatedCatalog(t, agent)
	d, reg := newDiscovery(t, agent.Addr, func(c *consulsd.Config) {
		c.AllowStale = false
		c.RefreshInterval = time.Hour
		c.Filter = `Node.Meta.rack == "r1"`
	})
	for range 3 {
		refresh(t, d)
	}
	moved := all[4] // svc-04 on node-1, with svc-03 and svc-05
	moved.NodeMeta = map[string]string{"rack": "r2"}
	agent.RegisterInstance(t, moved)
	if groups := refresh(t, d); len(groups["svc-04"].Targets) != 0 {
		t.Fatalf("the filter let in svc-04 on a node of rack r2: %v", groups["svc-04"])
	}
	located := rounds(t, reg, "located")
	moved.NodeMeta = map[string]string{"rack": "r1"}
	agent.RegisterInstance(t, moved)
	groups := refresh(t, d)
	if rounds(t, reg, "located") != located+1 {
		t.Fatal("the node's change took no located round: this test tests nothing")
	}
	for _, name := range []string{"svc-03", "svc-04", "svc-05"} {
		if len(groups[name].Targets) != 1 {
			t.Errorf("%s has %d targets after node-1 came back to rack r1, want 1", name, len(groups[name].Targets))
		}
	}
}

// TestLocatedRoundSettles: a located round read a changed service from a
// server behind the change, with stale reads. The settling round reads that
// service, and only that one, again from the leader.
func TestLocatedRoundSettles(t *testing.T) {
	agent := consultest.Start(t)
	all := locatedCatalog(t, agent)
	proxy := faultproxy.Start(t, agent.Addr)
	d, reg := newDiscovery(t, proxy.Addr, func(c *consulsd.Config) { c.RefreshInterval = time.Hour })
	for range 3 {
		refresh(t, d)
	}
	web := all[1] // svc-01
	const path = "/v1/health/service/svc-01"
	proxy.Set(path, faultproxy.Lagging)
	proxy.Keep(path) // the lagging server's svc-01: before the change
	web.Tags = []string{"a", "b"}
	agent.RegisterInstance(t, web)

	tags := func(groups map[string]*targetgroup.Group) string {
		return label(groups["svc-01"], "node-0", "__meta_consul_tags")
	}
	located := rounds(t, reg, "located")
	if got := tags(refresh(t, d)); got != ",a," {
		t.Fatalf("the located round read tags %q: the lagging answer was not used, so this test tests nothing", got)
	}
	if rounds(t, reg, "located") != located+1 {
		t.Fatal("the change took no located round: this test tests nothing")
	}
	before := serviceQueries(proxy, "svc-00", "svc-01", "svc-02", "svc-03")
	if got := tags(refresh(t, d)); got != ",a,b," {
		t.Errorf("the settling round left tags %q, want the leader's ,a,b,", got)
	}
	if n := serviceQueries(proxy, "svc-00", "svc-01", "svc-02", "svc-03") - before; n != 1 {
		t.Errorf("the settling round made %d queries of svc-00…03, want 1 (svc-01's)", n)
	}
}
