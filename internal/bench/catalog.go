package main

import (
	"context"
	"fmt"
	"log"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// instancesPerNode sets how many instances share a catalog node, so that
// node meta and addresses repeat across targets as in a real cluster.
const instancesPerNode = 20

// registerWorkers is how many catalog registrations are in flight at once.
const registerWorkers = 32

// catalog describes a synthetic catalog: services svc-00000.. with
// instances each, spread over nodes node-0000..
type catalog struct {
	services  int
	instances int
}

func (c catalog) nodes() int {
	return max(c.instances, (c.services*c.instances+instancesPerNode-1)/instancesPerNode)
}

func serviceName(s int) string { return fmt.Sprintf("svc-%05d", s) }

func nodeName(n int) string { return fmt.Sprintf("node-%04d", n) }

// instanceRef names one service instance in the catalog.
type instanceRef struct {
	Node, Service, ID string
}

func (r instanceRef) key() string { return r.Node + "/" + r.ID }

// instance returns instance i of service s: on node (s*instances+i) mod
// nodes, so a service's instances sit on distinct nodes.
func (c catalog) instance(s, i int) (instanceRef, *api.CatalogRegistration) {
	n := (s*c.instances + i) % c.nodes()
	ref := instanceRef{Node: nodeName(n), Service: serviceName(s), ID: fmt.Sprintf("%s-%d", serviceName(s), i)}
	return ref, c.registration(ref, n, s, 20000+s%40000)
}

// registration builds a catalog registration with the labels a real
// instance tends to have: node meta, tagged addresses, tags, service meta
// and one passing service check.
func (c catalog) registration(ref instanceRef, n, s, port int) *api.CatalogRegistration {
	addr := fmt.Sprintf("10.%d.%d.%d", n/65536%256, n/256%256, n%256)
	return &api.CatalogRegistration{
		Node:    ref.Node,
		Address: addr,
		NodeMeta: map[string]string{
			"rack": fmt.Sprintf("r%02d", n%40),
			"az":   fmt.Sprintf("eu-west-1%c", 'a'+rune(n%3)),
			"os":   "linux",
		},
		TaggedAddresses: map[string]string{"lan": addr, "wan": fmt.Sprintf("192.0.%d.%d", n/256%256, n%256)},
		Service: &api.AgentService{
			ID:      ref.ID,
			Service: ref.Service,
			Port:    port,
			Tags:    []string{"prometheus", fmt.Sprintf("team-%d", s%17), "v1"},
			Meta: map[string]string{
				"version":      fmt.Sprintf("1.%d.%d", s%7, s%13),
				"metrics_path": "/metrics",
			},
		},
		Check: &api.AgentCheck{
			Node:        ref.Node,
			CheckID:     "service:" + ref.ID,
			Name:        "Service '" + ref.Service + "' check",
			Status:      api.HealthPassing,
			ServiceID:   ref.ID,
			ServiceName: ref.Service,
		},
	}
}

// register fills the catalog with services [from, c.services): from > 0
// grows a catalog in place. It logs progress every few seconds.
func (c catalog) register(ctx context.Context, client *api.Client, from int) error {
	total := (c.services - from) * c.instances
	if total <= 0 {
		return nil
	}
	start := time.Now()
	jobs := make(chan *api.CatalogRegistration)
	var done atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, registerWorkers)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range registerWorkers {
		wg.Go(func() {
			for reg := range jobs {
				if _, err := client.Catalog().Register(reg, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
					errc <- fmt.Errorf("registering %s/%s: %w", reg.Node, reg.Service.ID, err)
					cancel()
					return
				}
				done.Add(1)
			}
		})
	}
	stopProgress := progress(func() string {
		return fmt.Sprintf("registered %d/%d instances", done.Load(), total)
	})
feed:
	for s := from; s < c.services; s++ {
		for i := range c.instances {
			_, reg := c.instance(s, i)
			select {
			case jobs <- reg:
			case <-ctx.Done():
				break feed
			}
		}
	}
	close(jobs)
	wg.Wait()
	stopProgress()
	select {
	case err := <-errc:
		return err
	default:
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	el := time.Since(start)
	log.Printf("registered %d instances of %d services in %.1fs (%.0f/s)", total, c.services-from, el.Seconds(), float64(total)/el.Seconds())
	return nil
}

// progress logs msg() every 5 seconds until the returned func is called.
func progress(msg func() string) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				log.Print(msg())
			}
		}
	})
	return func() { close(done); wg.Wait() }
}
