package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/hashicorp/consul/api"
)

// churner changes the catalog at a steady, modest rate, within fixed
// bounds: instances come from a pool of nodes x services, so the catalog
// never outgrows maxInstances.
type churner struct {
	client       *api.Client
	nodes        int
	services     int
	maxInstances int
	rng          *rand.Rand

	// present is what churner registered: "node/service" -> instance.
	present map[string]instance
	// meta is each node's metadata, so that registrations keep it.
	meta map[string]map[string]string
	// counts of operations done, by kind.
	ops map[string]int
	// tolerate counts a write Consul refuses instead of stopping: in a
	// cluster whose leader is killed on purpose.
	tolerate bool
}

type instance struct {
	node, service string
	port          int
	tags          []string
}

func (i instance) key() string { return i.node + "/" + i.service }

func newChurner(client *api.Client, nodes, services, maxInstances int, seed uint64) *churner {
	return &churner{
		client: client, nodes: nodes, services: services, maxInstances: maxInstances,
		rng:     rand.New(rand.NewPCG(seed, seed^0x5eed)),
		present: map[string]instance{},
		meta:    map[string]map[string]string{},
		ops:     map[string]int{},
	}
}

func (c *churner) nodeName(n int) string    { return fmt.Sprintf("soak-node-%03d", n) }
func (c *churner) serviceName(s int) string { return fmt.Sprintf("svc-%02d", s) }
func (c *churner) nodeAddress(n int) string {
	return fmt.Sprintf("10.%d.%d.%d", 20+n/62500, n/250%250, n%250+1)
}

// seed registers n instances before the adapter starts.
func (c *churner) seed(ctx context.Context, n int) error {
	for range n {
		if err := c.register(ctx); err != nil {
			return err
		}
	}
	return nil
}

// run does one operation per tick until ctx ends, and returns the first
// error from Consul.
func (c *churner) run(ctx context.Context, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := c.step(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !c.tolerate {
				return err
			}
			// A cluster without a leader refuses writes for a moment.
			c.ops["refused"]++
		}
	}
}

// step does one random operation: register, deregister, health flip or
// node meta change, keeping the catalog between a quarter and all of
// maxInstances.
func (c *churner) step(ctx context.Context) error {
	r := c.rng.IntN(100)
	switch {
	case len(c.present) < c.maxInstances/4 || (r < 30 && len(c.present) < c.maxInstances):
		return c.register(ctx)
	case r < 60:
		return c.deregister(ctx)
	case r < 85:
		return c.flipHealth(ctx)
	default:
		return c.changeNodeMeta(ctx)
	}
}

func (c *churner) write(ctx context.Context) *api.WriteOptions {
	return (&api.WriteOptions{}).WithContext(ctx)
}

func (c *churner) register(ctx context.Context) error {
	var inst instance
	for {
		n, s := c.rng.IntN(c.nodes), c.rng.IntN(c.services)
		inst = instance{node: c.nodeName(n), service: c.serviceName(s), port: 8000 + s}
		if _, ok := c.present[inst.key()]; !ok {
			break
		}
	}
	if c.rng.IntN(2) == 0 {
		inst.tags = []string{"canary"}
	}
	n := 0
	fmt.Sscanf(inst.node, "soak-node-%d", &n)
	_, err := c.client.Catalog().Register(&api.CatalogRegistration{
		Node:     inst.node,
		Address:  c.nodeAddress(n),
		NodeMeta: c.meta[inst.node], // as changeNodeMeta left it
		Service:  &api.AgentService{ID: inst.service, Service: inst.service, Port: inst.port, Tags: inst.tags},
		Check:    c.check(inst, api.HealthPassing),
	}, c.write(ctx))
	if err != nil {
		return fmt.Errorf("registering %s: %w", inst.key(), err)
	}
	c.present[inst.key()] = inst
	c.ops["register"]++
	return nil
}

func (c *churner) pick() (instance, bool) {
	if len(c.present) == 0 {
		return instance{}, false
	}
	i := c.rng.IntN(len(c.present))
	for _, inst := range c.present {
		if i == 0 {
			return inst, true
		}
		i--
	}
	panic("unreachable")
}

func (c *churner) deregister(ctx context.Context) error {
	inst, ok := c.pick()
	if !ok {
		return nil
	}
	if _, err := c.client.Catalog().Deregister(&api.CatalogDeregistration{Node: inst.node, ServiceID: inst.service}, c.write(ctx)); err != nil {
		return fmt.Errorf("deregistering %s: %w", inst.key(), err)
	}
	delete(c.present, inst.key())
	c.ops["deregister"]++
	return nil
}

func (c *churner) flipHealth(ctx context.Context) error {
	inst, ok := c.pick()
	if !ok {
		return nil
	}
	status := []string{api.HealthPassing, api.HealthWarning, api.HealthCritical}[c.rng.IntN(3)]
	_, err := c.client.Catalog().Register(&api.CatalogRegistration{
		Node: inst.node, SkipNodeUpdate: true, Check: c.check(inst, status),
	}, c.write(ctx))
	if err != nil {
		return fmt.Errorf("setting health of %s: %w", inst.key(), err)
	}
	c.ops["health"]++
	return nil
}

func (c *churner) changeNodeMeta(ctx context.Context) error {
	inst, ok := c.pick() // a node that has an instance, so the change shows
	if !ok {
		return nil
	}
	n := 0
	fmt.Sscanf(inst.node, "soak-node-%d", &n)
	meta := map[string]string{"rack": fmt.Sprintf("r%d", c.rng.IntN(4))}
	// Without a service or check the registration updates only the node.
	_, err := c.client.Catalog().Register(&api.CatalogRegistration{
		Node: inst.node, Address: c.nodeAddress(n), NodeMeta: meta,
	}, c.write(ctx))
	if err != nil {
		return fmt.Errorf("changing meta of node %s: %w", inst.node, err)
	}
	c.meta[inst.node] = meta
	c.ops["node-meta"]++
	return nil
}

func (c *churner) check(inst instance, status string) *api.AgentCheck {
	return &api.AgentCheck{
		Node: inst.node, CheckID: "service:" + inst.service, Name: inst.service + " check",
		Status: status, ServiceID: inst.service, ServiceName: inst.service,
	}
}
