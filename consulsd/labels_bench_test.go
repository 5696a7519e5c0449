package consulsd

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// BenchmarkTargetLabels measures the labels of one instance with realistic
// meta; B/op is what every target costs in memory.
func BenchmarkTargetLabels(b *testing.B) {
	e := &api.ServiceEntry{
		Node: &api.Node{
			Node: "node-0042", Address: "10.0.0.42", Datacenter: "dc1",
			Meta:            map[string]string{"rack": "r07", "az": "eu-west-1a", "os": "linux"},
			TaggedAddresses: map[string]string{"lan": "10.0.0.42", "wan": "192.0.2.42"},
		},
		Service: &api.AgentService{
			ID: "svc-00042-3", Service: "svc-00042", Port: 20042, Tags: []string{"prometheus", "team-7", "v1"},
			Meta: map[string]string{"version": "1.2.3", "metrics_path": "/metrics"},
		},
		Checks: api.HealthChecks{{Status: api.HealthPassing}},
	}
	b.ReportAllocs()
	for b.Loop() {
		if ls := targetLabels(e, ","); len(ls) < 10 {
			b.Fatal(fmt.Sprint(ls))
		}
	}
}

// BenchmarkGroupsRetained100k measures what the groups of 100,000 targets
// (20,000 services × 5 instances, 20 instances a node) keep in memory once
// built, as a full round builds them: each instance's strings decoded
// separately, services one after another, garbage collections in between
// (at GOGC=50 a round at this size spans several). retained-B/target is
// the live heap the groups hold, per target.
func BenchmarkGroupsRetained100k(b *testing.B) {
	const services, instances, perNode = 20000, 5, 20
	nodes := services * instances / perNode
	node := func(n int) *api.Node {
		// Fresh copies, as decoding each answer makes them.
		s := func(f string, a ...any) string { return fmt.Sprintf(f, a...) }
		return &api.Node{
			Node: s("node-%04d", n), Address: s("10.0.%d.%d", n/256, n%256), Datacenter: s("dc1"),
			Meta:            map[string]string{"rack": s("r%02d", n%40), "az": s("eu-west-1%c", 'a'+rune(n%3)), "os": s("linux")},
			TaggedAddresses: map[string]string{"lan": s("10.0.%d.%d", n/256, n%256), "wan": s("192.0.%d.%d", n/256, n%256)},
		}
	}
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		groups := make([]*targetgroup.Group, services)
		for s := range services {
			entries := make([]*api.ServiceEntry, instances)
			for i := range instances {
				entries[i] = &api.ServiceEntry{
					Node: node((s*instances + i) % nodes),
					Service: &api.AgentService{
						ID: fmt.Sprintf("svc-%05d-%d", s, i), Service: fmt.Sprintf("svc-%05d", s), Port: 20000 + s%40000,
						Tags: []string{"prometheus", "v1"}, Meta: map[string]string{"version": "1.2.3"},
					},
					Checks: api.HealthChecks{{Status: api.HealthPassing}},
				}
			}
			groups[s] = groupOf(entries[0].Service.Service, instanceLabels(entries, ","))
			if s%2000 == 1999 {
				runtime.GC()
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(services*instances), "retained-B/target")
		runtime.KeepAlive(groups)
	}
}
