package parity

import (
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
)

// node is a catalog node. Registering an instance updates its node, so
// every instance on a node carries the same node fields (see on).
type node struct {
	name, address string
	meta, tagged  map[string]string
}

// The nodes: meta keys that need sanitising (rack-id), tagged addresses
// (one key needing it too), an IPv6 address, and a node in maintenance.
var (
	nodeA = node{"node-a", "10.0.0.1", map[string]string{"rack-id": "r1", "zone": "z1"},
		map[string]string{"lan": "10.0.0.1", "wan": "198.51.100.1"}}
	nodeB = node{"node-b", "10.0.0.2", map[string]string{"rack-id": "r2"}, map[string]string{"lan": "10.0.0.2"}}
	nodeC = node{"node-c", "2001:db8::3", map[string]string{"rack-id": "r3", "ip-version": "6"},
		map[string]string{"lan_ipv6": "2001:db8::3", "wan-v6": "2001:db8:ffff::3"}}
	nodeD = node{"node-d", "10.0.0.4", map[string]string{"rack-id": "r4"}, nil}
)

// maintenanceNode is in node maintenance, as `consul maint` would put it.
var maintenanceNode = nodeD

// uncheckedInstance is registered without any check.
var uncheckedInstance = instance{nodeC.name, "api-2"}

// on places inst on n.
func (n node) on(inst consultest.Instance) consultest.Instance {
	inst.Node, inst.NodeAddress, inst.NodeMeta, inst.TaggedAddresses = n.name, n.address, n.meta, n.tagged
	return inst
}

// fixture is the catalog, besides Consul's own service: "api" and "API"
// both registered, a tag (canary) on one instance only and another (v2) on
// some, service meta with keys needing sanitising and an empty value,
// service addresses (IPv4, IPv6) on some instances, health passing,
// warning, critical, none and maintenance.
var fixture = []consultest.Instance{
	nodeA.on(consultest.Instance{Service: "web", ID: "web-1", Port: 8080, Tags: []string{"prod", "v1"},
		Meta: map[string]string{"env": "prod", "team-name": "core"}}),
	nodeB.on(consultest.Instance{Service: "web", ID: "web-2", Port: 8080, Tags: []string{"prod", "v2"},
		Address: "192.0.2.10", Meta: map[string]string{"env": "prod"}, Health: api.HealthWarning}),
	nodeC.on(consultest.Instance{Service: "web", ID: "web-3", Port: 8081, Tags: []string{"canary"},
		Meta: map[string]string{"env": "staging"}, Health: api.HealthCritical}),
	maintenanceNode.on(consultest.Instance{Service: "web", ID: "web-4", Port: 8080, Tags: []string{"prod"},
		Meta: map[string]string{"env": "prod"}}),
	nodeA.on(consultest.Instance{Service: "api", ID: "api-1", Port: 9000, Tags: []string{"prod", "v2"},
		Address: "2001:db8::10", Meta: map[string]string{"env": "prod"}}),
	nodeC.on(consultest.Instance{Service: "api", ID: uncheckedInstance.serviceID, Port: 9000}),
	nodeB.on(consultest.Instance{Service: "API", ID: "API-1", Port: 9001, Tags: []string{"prod"},
		Meta: map[string]string{"env": "prod"}}),
	nodeB.on(consultest.Instance{Service: "db", ID: "db-1", Port: 5432, Tags: []string{"primary"},
		Meta: map[string]string{"env": "prod", "db-engine": "pg"}}),
	nodeC.on(consultest.Instance{Service: "db", ID: "db-2", Port: 5432, Tags: []string{"replica"},
		Meta: map[string]string{"note": ""}}),
}

// registerCatalog registers the fixture in agent, and returns the service
// name each instance was registered with, Consul's own included.
func registerCatalog(t *testing.T, agent *consultest.Agent) map[instance]string {
	t.Helper()
	registered := map[instance]string{{agent.Node, "consul"}: "consul"}
	for _, inst := range fixture {
		agent.RegisterInstance(t, inst)
		registered[instance{inst.Node, inst.ID}] = inst.Service
	}

	checks, _, err := agent.Client.Health().Node(uncheckedInstance.node, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range checks {
		if c.ServiceID == uncheckedInstance.serviceID {
			dereg := &api.CatalogDeregistration{Node: c.Node, CheckID: c.CheckID}
			if _, err := agent.Client.Catalog().Deregister(dereg, nil); err != nil {
				t.Fatal(err)
			}
		}
	}

	maint := &api.CatalogRegistration{Node: maintenanceNode.name, SkipNodeUpdate: true, Check: &api.AgentCheck{
		Node: maintenanceNode.name, CheckID: api.NodeMaint, Name: "Node Maintenance Mode", Status: api.HealthCritical}}
	if _, err := agent.Client.Catalog().Register(maint, nil); err != nil {
		t.Fatal(err)
	}
	return registered
}
