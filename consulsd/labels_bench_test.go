package consulsd

import (
	"fmt"
	"testing"

	"github.com/hashicorp/consul/api"
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
