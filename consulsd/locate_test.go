package consulsd_test

import (
	"fmt"
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

// dumpPath is Consul's node dump, which located rounds read.
const dumpPath = "/v1/internal/ui/nodes"

// locatedSetup is an agent holding locatedCatalog behind a proxy, and a
// Discovery through the proxy that has run its first rounds.
type locatedSetup struct {
	agent *consultest.Agent
	all   []consultest.Instance
	proxy *faultproxy.Proxy
	d     *consulsd.Discovery
	reg   *prometheus.Registry
}

// startLocated starts a locatedSetup, the Discovery with an hour's refresh
// interval (no round a test does not make) and configure applied, after
// three rounds: the agent touches its own node and checks after it starts.
func startLocated(t *testing.T, configure func(*consulsd.Config)) locatedSetup {
	agent := consultest.Start(t)
	all := locatedCatalog(t, agent)
	proxy := faultproxy.Start(t, agent.Addr)
	d, reg := newDiscovery(t, proxy.Addr, func(c *consulsd.Config) {
		c.RefreshInterval = time.Hour
		if configure != nil {
			configure(c)
		}
	})
	for range 3 {
		refresh(t, d)
	}
	return locatedSetup{agent, all, proxy, d, reg}
}

// lagSvc01 makes l's proxy answer svc-01's stale reads as a server that
// has not applied what comes next, then adds a tag to svc-01; it returns
// svc-01's path.
func (l locatedSetup) lagSvc01(t *testing.T) string {
	const path = "/v1/health/service/svc-01"
	l.proxy.Set(path, faultproxy.Lagging)
	l.proxy.Keep(path) // the lagging server's svc-01: before the change
	web := l.all[1]
	web.Tags = []string{"a", "b"}
	l.agent.RegisterInstance(t, web)
	return path
}

// TestLocatedRoundsQueryOnlyWhatChanged: in the tables watch, a round
// compares Consul's node dump with the previous round's and queries only
// the services whose instances, checks or nodes moved, whatever the kind of
// change; the snapshot still equals Consul after every one. A round where
// only checks moved reads no dump.
func TestLocatedRoundsQueryOnlyWhatChanged(t *testing.T) {
	for _, stale := range []bool{false, true} {
		// With stale reads, every answer is checked against the dump:
		// the counts below hold only if their digests agree.
		t.Run(fmt.Sprintf("stale=%v", stale), func(t *testing.T) { testLocatedRounds(t, stale) })
	}
}

func testLocatedRounds(t *testing.T, stale bool) {
	agent := consultest.Start(t)
	all := locatedCatalog(t, agent)
	names := []string{"new"}
	for _, inst := range all {
		names = append(names, inst.Service)
	}
	proxy := faultproxy.Start(t, agent.Addr)
	d, reg := newDiscovery(t, proxy.Addr, func(c *consulsd.Config) {
		c.AllowStale = stale
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
		{"a new instance without checks", func() {
			agent.RegisterInstance(t, consultest.Instance{Node: "node-3", NodeMeta: map[string]string{"rack": "r1"}, Service: "svc-02", ID: "svc-02-b", Port: 9002, NoCheck: true})
		}, 1, "located"},
		{"its deregistration", func() { agent.DeregisterInstance(t, "node-3", "svc-02-b") }, 1, "located"},
		{"a new instance on a new node", func() {
			// Not at the agent's own address: the dump adds the agent's
			// version to the meta of a node there that has no meta (see
			// answerDigest), and its answers would never agree.
			agent.RegisterInstance(t, consultest.Instance{Node: "node-9", NodeAddress: "10.0.0.9", Service: "svc-01", ID: "svc-01-b", Port: 9001, Tags: []string{"a"}})
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
		// Changes that neither the service list, the checks nor the
		// nodes show.
		{"a port change", func() {
			all[9].Port = 9999
			agent.RegisterInstance(t, all[9])
		}, 1, "located"},
		{"a service meta change", func() {
			all[10].Meta = map[string]string{"version": "2"}
			agent.RegisterInstance(t, all[10])
		}, 1, "located"},
		{"a service address change", func() {
			all[11].Address = "10.9.9.9"
			agent.RegisterInstance(t, all[11])
		}, 1, "located"},
		{"a tag and a port at once", func() {
			all[0].Tags = []string{"a", "c"}
			agent.RegisterInstance(t, all[0])
			all[1].Port = 9991
			agent.RegisterInstance(t, all[1])
		}, 2, "located"},
		// Last: a health round leaves the dump's digests of the services
		// it changed behind, and the next located round reads them again.
		{"maintenance on", func() { setMaintenance(t, agent, "node-2", "svc-06", true) }, 0, "health"},
		{"maintenance off", func() { setMaintenance(t, agent, "node-2", "svc-06", false) }, 0, "health"},
		{"a node check failing", func() { agent.SetNodeHealth(t, "node-2", "critical") }, 0, "health"},
		{"a service check failing", func() { agent.SetHealth(t, all[7], "critical") }, 0, "health"},
	}
	for _, step := range steps {
		step.change()
		before, kindBefore, dumps := serviceQueries(proxy, names...), rounds(t, reg, step.kind), proxy.Requests(dumpPath)
		check(step.name)
		if n := serviceQueries(proxy, names...) - before; n != step.queries {
			t.Errorf("after %s: %d per-service queries, want %d", step.name, n, step.queries)
		}
		if rounds(t, reg, step.kind) != kindBefore+1 {
			t.Errorf("after %s: not a %s round", step.name, step.kind)
		}
		wantDumps := 1
		if step.kind == "health" {
			wantDumps = 0
		}
		if n := proxy.Requests(dumpPath) - dumps; n != wantDumps {
			t.Errorf("after %s: %d reads of the node dump, want %d", step.name, n, wantDumps)
		}
	}
}

// TestWithoutTheNodeDump: where Consul does not serve its node dump (a
// proxy in front of it that allows public paths only), every round that
// sees the catalog move queries every service, and the snapshot still
// follows Consul. The dump is not asked for again.
func TestWithoutTheNodeDump(t *testing.T) {
	agent := consultest.Start(t)
	all := locatedCatalog(t, agent)
	proxy := faultproxy.Start(t, agent.Addr)
	proxy.Set(dumpPath, faultproxy.Answer(404, "Not Found"))
	d, reg := newDiscovery(t, proxy.Addr, func(c *consulsd.Config) {
		c.AllowStale = false
		c.RefreshInterval = time.Hour
	})
	for range 3 {
		refresh(t, d)
	}
	if n := proxy.Requests(dumpPath); n != 1 {
		t.Fatalf("the node dump was asked for %d times, want once", n)
	}
	all[3].Port = 9993
	agent.RegisterInstance(t, all[3])
	full, before := rounds(t, reg, "full"), proxy.Requests("/v1/health/service/svc-00")
	if got, want := seen(refresh(t, d)), truth(t, agent); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after a port change:\n got %v\nwant %v", got, want)
	}
	if rounds(t, reg, "full") != full+1 || proxy.Requests("/v1/health/service/svc-00") != before+1 {
		t.Error("the round after a change was not a full one")
	}
	if n := proxy.Requests(dumpPath); n != 1 {
		t.Errorf("the node dump was asked for %d times, want once", n)
	}
}

// TestLaggingDumpIsNotTrusted: with stale reads, a node dump from a server
// that has not applied the change the round's indexes show could hide it
// for good (the next round's indexes would not move again). The round
// reads again from the leader instead.
func TestLaggingDumpIsNotTrusted(t *testing.T) {
	l := startLocated(t, nil)
	agent, all, proxy, d := l.agent, l.all, l.proxy, l.d
	proxy.Keep(dumpPath) // the lagging server's dump: before the change
	proxy.Set(dumpPath, faultproxy.Lagging)
	all[7].Meta = map[string]string{"version": "2"}
	agent.RegisterInstance(t, all[7])
	groups := refresh(t, d)
	if got := label(groups["svc-07"], "node-2", "__meta_consul_service_metadata_version"); got != "2" {
		t.Errorf("svc-07's version is %q after a round, want 2: the lagging dump hid the change", got)
	}
	if n := proxy.Requests(dumpPath); n < 2 {
		t.Errorf("the dump was read %d times since the change, want a second read from the leader", n)
	}
}

// TestLocatedRoundSeesWhatAFilterLetsIn: with a filter on nodes, an
// instance left out is in no group; when its node changes so that the
// filter lets it in, the round still finds its service: the dump holds
// every instance, filtered or not.
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

// TestLaggingAnswerIsReadAgain: a located round read a changed service
// from a server behind the change, with stale reads. Its answer does not
// agree with the node dump, so the round reads it again from the leader,
// and owes no settling round.
func TestLaggingAnswerIsReadAgain(t *testing.T) {
	l := startLocated(t, nil)
	proxy, d := l.proxy, l.d
	path := l.lagSvc01(t)

	before := proxy.Requests(path)
	if got := label(refresh(t, d)["svc-01"], "node-0", "__meta_consul_tags"); got != ",a,b," {
		t.Errorf("the located round left tags %q, want the leader's ,a,b,", got)
	}
	if n := proxy.Requests(path) - before; n != 2 {
		t.Errorf("the located round queried svc-01 %d times, want 2: the lagging server, then the leader", n)
	}
	before = serviceQueries(proxy, "svc-00", "svc-01", "svc-02", "svc-03")
	refresh(t, d)
	if n := serviceQueries(proxy, "svc-00", "svc-01", "svc-02", "svc-03") - before; n != 0 {
		t.Errorf("the round after made %d queries of svc-00…03, want none: nothing is owed", n)
	}
}

// TestLocatedRoundSettles: with a filter on each service's instances
// (here tags), answers hold only some instances and cannot be checked
// against the dump. A located round read a changed service from a server
// behind the change; the settling round reads that service, and only that
// one, again from the leader.
func TestLocatedRoundSettles(t *testing.T) {
	l := startLocated(t, func(c *consulsd.Config) { c.Tags = []string{"a"} })
	proxy, d, reg := l.proxy, l.d, l.reg
	l.lagSvc01(t)

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

// TestBlocksShareTheDump: Discoveries that read the same catalog with the
// same credentials (the blocks of a configuration file) read one node dump
// between them for a change, not one each, and each still sees its part.
func TestBlocksShareTheDump(t *testing.T) {
	agent := consultest.Start(t)
	all := locatedCatalog(t, agent)
	proxy := faultproxy.Start(t, agent.Addr)
	dumps := consulsd.NewDumps()
	blocks := map[string]*consulsd.Discovery{}
	for _, svc := range []string{"svc-00", "svc-05"} {
		blocks[svc], _ = newDiscovery(t, proxy.Addr, func(c *consulsd.Config) {
			c.RefreshInterval = time.Hour
			c.Services = []string{svc}
			c.Dumps = dumps
		})
	}
	for range 3 {
		for _, d := range blocks {
			refresh(t, d)
		}
	}
	all[0].Port = 9990 // svc-00 on node-0
	agent.RegisterInstance(t, all[0])
	all[5].Port = 9995 // svc-05 on node-1
	agent.RegisterInstance(t, all[5])

	before := proxy.Requests(dumpPath)
	for svc, d := range blocks {
		node := map[string]string{"svc-00": "node-0", "svc-05": "node-1"}[svc]
		want := map[string]string{"svc-00": "9990", "svc-05": "9995"}[svc]
		if got := label(refresh(t, d)[svc], node, "__meta_consul_service_port"); got != want {
			t.Errorf("%s's port is %q after the change, want %s", svc, got, want)
		}
	}
	if n := proxy.Requests(dumpPath) - before; n != 1 {
		t.Errorf("the two blocks read the node dump %d times for one change, want once", n)
	}
}

// TestNewLeaderConfirmsNothing: an answer that disagrees with the dump is
// read again from the leader, and a leader just elected answers ordinary
// reads from what it has applied, which can lack the change (in a cluster
// test it lacked a whole instance, which left the file for good). The
// read again is a consistent one, which such a leader refuses: the round
// fails and keeps the targets, and the next one, once the leader caught
// up, reads the change.
func TestNewLeaderConfirmsNothing(t *testing.T) {
	l := startLocated(t, nil)
	proxy, d := l.proxy, l.d
	const path = "/v1/health/service/svc-01"
	proxy.Keep(path) // what the new leader has applied: svc-01 before the change
	proxy.Set(path, faultproxy.NewLeader)
	web := l.all[1]
	web.Tags = []string{"a", "b"}
	l.agent.RegisterInstance(t, web)

	if groups, err := d.Refresh(t.Context()); err == nil {
		for _, g := range groups {
			if g.Source == "svc-01" {
				t.Fatalf("the round took svc-01 from a leader that had not applied the change (tags %q)", label(g, "node-0", "__meta_consul_tags"))
			}
		}
		t.Fatal("the round succeeded without svc-01")
	}
	proxy.ClearAll()
	if got := label(refresh(t, d)["svc-01"], "node-0", "__meta_consul_tags"); got != ",a,b," {
		t.Errorf("once the leader caught up, svc-01 has tags %q, want ,a,b,", got)
	}
}
