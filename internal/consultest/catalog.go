package consultest

import (
	"testing"

	"github.com/hashicorp/consul/api"
)

// Instance is one service instance on one catalog node, as registered by
// RegisterInstance. Nodes are plain catalog entries: no agent runs on them,
// so one dev agent can hold any number of them.
type Instance struct {
	Node            string            // catalog node name; created if needed
	NodeAddress     string            // node address, default "127.0.0.1"
	NodeMeta        map[string]string // node metadata
	TaggedAddresses map[string]string // node tagged addresses (optional)
	Service         string            // service name
	ID              string            // service ID, default Service
	Address         string            // service address, may be empty
	Port            int               // service port
	Tags            []string          // service tags
	Meta            map[string]string // service metadata
	// Health is the status of the instance's one service-level check:
	// "passing" (default), "warning" or "critical".
	Health string
	// NoCheck registers the instance without a check.
	NoCheck bool
}

func (inst Instance) id() string {
	if inst.ID != "" {
		return inst.ID
	}
	return inst.Service
}

func (inst Instance) nodeAddress() string {
	if inst.NodeAddress != "" {
		return inst.NodeAddress
	}
	return "127.0.0.1"
}

// checkID is the ID of the instance's service check. One ID per service ID
// lets SetHealth address the check without knowing more.
func (inst Instance) checkID() string { return "service:" + inst.id() }

func (inst Instance) check(t testing.TB, status string) *api.AgentCheck {
	t.Helper()
	if status == "" {
		status = api.HealthPassing
	}
	switch status {
	case api.HealthPassing, api.HealthWarning, api.HealthCritical:
	default:
		t.Fatalf("consultest: instance %s/%s: health %q is not passing, warning or critical", inst.Node, inst.id(), status)
	}
	return &api.AgentCheck{
		Node:        inst.Node,
		CheckID:     inst.checkID(),
		Name:        "Service '" + inst.Service + "' check",
		Status:      status,
		ServiceID:   inst.id(),
		ServiceName: inst.Service,
	}
}

// RegisterInstance registers inst, its node and its service check through
// the catalog API. Registering again with the same Node and ID replaces the
// instance and updates the node.
func (a *Agent) RegisterInstance(t testing.TB, inst Instance) {
	t.Helper()
	if inst.Node == "" || inst.Service == "" {
		t.Fatalf("consultest: RegisterInstance needs Node and Service, got %+v", inst)
	}
	reg := &api.CatalogRegistration{
		Node:            inst.Node,
		Address:         inst.nodeAddress(),
		NodeMeta:        inst.NodeMeta,
		TaggedAddresses: inst.TaggedAddresses,
		Service: &api.AgentService{
			ID:      inst.id(),
			Service: inst.Service,
			Address: inst.Address,
			Port:    inst.Port,
			Tags:    inst.Tags,
			Meta:    inst.Meta,
		},
	}
	if !inst.NoCheck {
		reg.Check = inst.check(t, inst.Health)
	}
	if _, err := a.Client.Catalog().Register(reg, nil); err != nil {
		t.Fatalf("consultest: registering %s/%s: %v", inst.Node, inst.id(), err)
	}
}

// SetHealth sets the status of inst's service check ("passing", "warning"
// or "critical"), leaving the node and the service as they are. inst needs
// only Node, Service and, if it differs from Service, ID.
func (a *Agent) SetHealth(t testing.TB, inst Instance, status string) {
	t.Helper()
	reg := &api.CatalogRegistration{
		Node: inst.Node,
		// Without this the node's address and metadata would be reset to
		// whatever inst holds.
		SkipNodeUpdate: true,
		Check:          inst.check(t, status),
	}
	if _, err := a.Client.Catalog().Register(reg, nil); err != nil {
		t.Fatalf("consultest: setting health of %s/%s to %s: %v", inst.Node, inst.id(), status, err)
	}
}

// SetNodeHealth registers, or updates, a check of the node itself (not of
// a service on it) with the given status: it counts for every instance on
// the node.
func (a *Agent) SetNodeHealth(t testing.TB, node, status string) {
	t.Helper()
	reg := &api.CatalogRegistration{
		Node:           node,
		SkipNodeUpdate: true,
		Check:          &api.AgentCheck{Node: node, CheckID: "node-check", Name: "node check", Status: status},
	}
	if _, err := a.Client.Catalog().Register(reg, nil); err != nil {
		t.Fatalf("consultest: setting the node health of %s to %s: %v", node, status, err)
	}
}

// DeregisterInstance removes one service instance, and its checks, from a
// node. The node stays.
func (a *Agent) DeregisterInstance(t testing.TB, node, serviceID string) {
	t.Helper()
	dereg := &api.CatalogDeregistration{Node: node, ServiceID: serviceID}
	if _, err := a.Client.Catalog().Deregister(dereg, nil); err != nil {
		t.Fatalf("consultest: deregistering %s/%s: %v", node, serviceID, err)
	}
}

// DeregisterNode removes a node with all its services and checks.
func (a *Agent) DeregisterNode(t testing.TB, node string) {
	t.Helper()
	if _, err := a.Client.Catalog().Deregister(&api.CatalogDeregistration{Node: node}, nil); err != nil {
		t.Fatalf("consultest: deregistering node %s: %v", node, err)
	}
}

// AllEntries returns every instance of every service but Consul's own, read
// from the leader: what the adapter's file should list. An instance appears
// once, under the name it was registered with, although Consul's lookup by
// name ignores case.
func AllEntries(client *api.Client) ([]*api.ServiceEntry, error) {
	services, _, err := client.Catalog().Services(nil)
	if err != nil {
		return nil, err
	}
	var all []*api.ServiceEntry
	for name := range services {
		if name == "consul" {
			continue
		}
		entries, _, err := client.Health().Service(name, "", false, nil)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			if e.Service.Service == name {
				all = append(all, e)
			}
		}
	}
	return all, nil
}
