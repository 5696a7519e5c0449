package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
)

// TestNothingIsMissed drives random bursts of every kind of catalog change
// against a real agent, and after each burst waits until the files of two
// daemons, one per watch mode, equal byte for byte what --once writes
// against the same Consul. A change the per-service watch failed to notice
// would leave its file behind for good: its refresh interval is an hour, so
// no full round can make up for it. The tables watch promises less: a
// change that none of its bulk answers shows (a service's meta), made in
// the same round as one they do, waits for the full round due within a
// refresh interval, here two seconds; TestLocatedRoundsQueryOnlyWhatChanged
// holds it to every single change at once. PROPERTY_SEED repeats a run.
func TestNothingIsMissed(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("PROPERTY_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("PROPERTY_SEED: %v", err)
		}
	}
	t.Logf("PROPERTY_SEED=%d", seed)
	m := &model{rng: rand.New(rand.NewPCG(seed, 0)), instances: map[string]consultest.Instance{}, maint: map[string]bool{}}

	ca, cert, key := consultest.GenerateCerts(t)
	agent := consultest.Start(t, consultest.WithHTTPS(ca, cert, key))
	m.agent = agent
	for range 6 {
		m.newInstance(t)
	}

	dir := t.TempDir()
	common := []string{"--consul.min-round-interval=50ms"}
	daemons := map[string]string{
		"tables":   filepath.Join(dir, "tables.json"),
		"services": filepath.Join(dir, "services.json"),
	}
	startDaemon(t, nil, append(common, "--refresh.interval=2s", "--listen.address="+agent.Addr, "--consul.watch-mode=tables", "--output.file="+daemons["tables"])...)
	startDaemon(t, nil, append(common, "--refresh.interval=1h", "--listen.address=https://"+agent.HTTPSAddr, "--consul.ca-file="+ca,
		"--consul.watch-mode=services", "--output.file="+daemons["services"])...)

	once := filepath.Join(dir, "once.json")
	for step := range 30 {
		var did []string
		for range 1 + m.rng.IntN(3) {
			did = append(did, m.change(t))
		}
		if r := runBinary(t, nil, "--once", "--listen.address="+agent.Addr, "--output.file="+once); r.code != 0 {
			t.Fatalf("--once exited %d: %s", r.code, r.stderr)
		}
		want, err := os.ReadFile(once)
		if err != nil {
			t.Fatal(err)
		}
		for mode, path := range daemons {
			deadline := time.Now().Add(hangGuard)
			for {
				got, _ := os.ReadFile(path)
				if bytes.Equal(got, want) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("step %d (%v): the %s daemon's file never equalled --once:\n%s\nwant:\n%s", step, did, mode, got, want)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
}

// model keeps what the test registered, so that it can pick what to change.
type model struct {
	agent     *consultest.Agent
	rng       *rand.Rand
	seq       int
	instances map[string]consultest.Instance // by node/ID
	maint     map[string]bool                // node/ID in maintenance
}

var (
	modelServices = []string{"web", "api", "db", "cache"}
	modelNodes    = []string{"node-a", "node-b", "node-c", "node-d"}
	modelHealth   = []string{api.HealthPassing, api.HealthWarning, api.HealthCritical}
)

func key(inst consultest.Instance) string { return inst.Node + "/" + inst.ID }

// pick returns a registered instance, in a stable order for the seed.
func (m *model) pick() (consultest.Instance, bool) {
	keys := make([]string, 0, len(m.instances))
	for k := range m.instances {
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return consultest.Instance{}, false
	}
	slices.Sort(keys)
	return m.instances[keys[m.rng.IntN(len(keys))]], true
}

func (m *model) nodeAddress(node string) string {
	return fmt.Sprintf("10.1.%d.%d", slices.Index(modelNodes, node), m.rng.IntN(3)+1)
}

func (m *model) newInstance(t *testing.T) string {
	m.seq++
	inst := consultest.Instance{
		Node:    modelNodes[m.rng.IntN(len(modelNodes))],
		Service: modelServices[m.rng.IntN(len(modelServices))],
		Port:    8000 + m.seq,
		Tags:    []string{"t" + strconv.Itoa(m.rng.IntN(3))},
		Health:  modelHealth[m.rng.IntN(len(modelHealth))],
	}
	if m.rng.IntN(4) == 0 {
		inst.Service = "svc-" + strconv.Itoa(m.seq) // a new service
	}
	inst.ID = fmt.Sprintf("%s-%d", inst.Service, m.seq)
	// The node's address and meta as they are now: a registration
	// updates the node too.
	inst.NodeAddress, inst.NodeMeta = m.nodeOf(inst.Node)
	m.agent.RegisterInstance(t, inst)
	m.instances[key(inst)] = inst
	return "new instance " + key(inst)
}

// nodeOf returns a node's current address and meta, from any instance on
// it, or fresh ones for a node without instances.
func (m *model) nodeOf(node string) (string, map[string]string) {
	for _, inst := range m.instances {
		if inst.Node == node {
			return inst.NodeAddress, inst.NodeMeta
		}
	}
	return m.nodeAddress(node), map[string]string{"rack": "r0"}
}

// setNode records a node's new address and meta on every instance on it.
func (m *model) setNode(node, address string, meta map[string]string) {
	for k, inst := range m.instances {
		if inst.Node == node {
			inst.NodeAddress, inst.NodeMeta = address, meta
			m.instances[k] = inst
		}
	}
}

// change makes one random change of a random kind and says what it did.
func (m *model) change(t *testing.T) string {
	inst, ok := m.pick()
	if !ok {
		return m.newInstance(t)
	}
	c := m.agent.Client.Catalog()
	must := func(_ *api.WriteMeta, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	switch kind := m.rng.IntN(10); kind {
	case 0:
		return m.newInstance(t)
	case 1:
		m.agent.DeregisterInstance(t, inst.Node, inst.ID)
		delete(m.instances, key(inst))
		delete(m.maint, key(inst))
		return "deregistered " + key(inst)
	case 2:
		inst.Health = modelHealth[m.rng.IntN(len(modelHealth))]
		m.agent.SetHealth(t, inst, inst.Health)
		m.instances[key(inst)] = inst
		return "health " + inst.Health + " " + key(inst)
	case 3, 4:
		address, meta := m.nodeOf(inst.Node)
		if kind == 3 {
			meta = map[string]string{"rack": "r" + strconv.Itoa(m.rng.IntN(5))}
		} else {
			address = m.nodeAddress(inst.Node)
		}
		must(c.Register(&api.CatalogRegistration{Node: inst.Node, Address: address, NodeMeta: meta}, nil))
		m.setNode(inst.Node, address, meta)
		return "node " + inst.Node + " " + address + " " + meta["rack"]
	case 5:
		inst.Tags = []string{"t" + strconv.Itoa(m.rng.IntN(3)), "u" + strconv.Itoa(m.rng.IntN(2))}
		inst.Meta = map[string]string{"version": strconv.Itoa(m.rng.IntN(3))}
		must(c.Register(&api.CatalogRegistration{Node: inst.Node, SkipNodeUpdate: true, Service: &api.AgentService{
			ID: inst.ID, Service: inst.Service, Port: inst.Port, Tags: inst.Tags, Meta: inst.Meta}}, nil))
		m.instances[key(inst)] = inst
		return "tags and meta " + key(inst)
	case 6:
		// Every instance of the service goes: the service is removed.
		for _, other := range m.instances {
			if other.Service == inst.Service {
				m.agent.DeregisterInstance(t, other.Node, other.ID)
				delete(m.instances, key(other))
				delete(m.maint, key(other))
			}
		}
		return "removed service " + inst.Service
	case 7:
		id := "_service_maintenance:" + inst.ID
		if m.maint[key(inst)] {
			must(c.Deregister(&api.CatalogDeregistration{Node: inst.Node, CheckID: id}, nil))
		} else {
			must(c.Register(&api.CatalogRegistration{Node: inst.Node, SkipNodeUpdate: true, Check: &api.AgentCheck{
				Node: inst.Node, CheckID: id, Name: "Service Maintenance Mode", Status: api.HealthCritical, ServiceID: inst.ID}}, nil))
		}
		m.maint[key(inst)] = !m.maint[key(inst)]
		return fmt.Sprintf("maintenance %v %s", m.maint[key(inst)], key(inst))
	case 8:
		status := modelHealth[m.rng.IntN(len(modelHealth))]
		m.agent.SetNodeHealth(t, inst.Node, status)
		return "node health " + status + " " + inst.Node
	default:
		m.agent.DeregisterNode(t, inst.Node)
		for k, other := range m.instances {
			if other.Node == inst.Node {
				delete(m.instances, k)
				delete(m.maint, k)
			}
		}
		return "deregistered node " + inst.Node
	}
}
