package adapter_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"

	"github.com/consul-sd-adapter/consul-sd-adapter/adapter"
)

// benchGroups returns services groups of instances targets each, labelled
// as consulsd labels them: every label on the target, one target per
// instance, instancesPerNode instances sharing a node and its metadata.
func benchGroups(services, instances int) []*targetgroup.Group {
	const instancesPerNode = 20
	nodes := max(instances, services*instances/instancesPerNode)
	groups := make([]*targetgroup.Group, services)
	for s := range services {
		name := fmt.Sprintf("svc-%05d", s)
		g := &targetgroup.Group{Source: name, Targets: make([]model.LabelSet, instances)}
		for i := range instances {
			n := (s*instances + i) % nodes
			addr := fmt.Sprintf("10.%d.%d.%d", n/65536%256, n/256%256, n%256)
			port := fmt.Sprint(20000 + s%40000)
			health := "passing"
			if (s+i)%50 == 0 {
				health = "critical"
			}
			g.Targets[i] = model.LabelSet{
				model.AddressLabel:                            model.LabelValue(addr + ":" + port),
				"__meta_consul_address":                       model.LabelValue(addr),
				"__meta_consul_node":                          model.LabelValue(fmt.Sprintf("node-%04d", n)),
				"__meta_consul_service":                       model.LabelValue(name),
				"__meta_consul_service_id":                    model.LabelValue(fmt.Sprintf("%s-%d", name, i)),
				"__meta_consul_service_address":               "",
				"__meta_consul_service_port":                  model.LabelValue(port),
				"__meta_consul_tags":                          model.LabelValue(fmt.Sprintf(",prometheus,team-%d,v1,", s%17)),
				"__meta_consul_health":                        model.LabelValue(health),
				"__meta_consul_dc":                            "dc1",
				"__meta_consul_metadata_rack":                 model.LabelValue(fmt.Sprintf("r%02d", n%40)),
				"__meta_consul_metadata_az":                   model.LabelValue(fmt.Sprintf("eu-west-1%c", 'a'+rune(n%3))),
				"__meta_consul_metadata_os":                   "linux",
				"__meta_consul_service_metadata_version":      model.LabelValue(fmt.Sprintf("1.%d.%d", s%7, s%13)),
				"__meta_consul_service_metadata_metrics_path": "/metrics",
				"__meta_consul_tagged_address_lan":            model.LabelValue(addr),
				"__meta_consul_tagged_address_wan":            model.LabelValue(fmt.Sprintf("192.0.%d.%d", n/256%256, n%256)),
			}
		}
		groups[s] = g
	}
	return groups
}

// BenchmarkRenderWrite100k measures what the adapter does with a snapshot
// of 100,000 targets in 20,000 groups: convert it to file_sd entries, encode
// them as JSON and replace the file atomically (with fsync). make bench runs
// it and reports ns/op against the 300 ms target.
func BenchmarkRenderWrite100k(b *testing.B) {
	groups := benchGroups(20000, 5)
	path := filepath.Join(b.TempDir(), "custom_sd.json")
	var size int
	// Where the time goes, for whoever has to make it shorter.
	var entries, render, write time.Duration
	b.ReportAllocs()
	for b.Loop() {
		t0 := time.Now()
		e := adapter.Entries(groups)
		t1 := time.Now()
		data, err := adapter.Render(e, adapter.JSON)
		if err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if err := adapter.WriteFileAtomic(path, data, 0o644); err != nil {
			b.Fatal(err)
		}
		entries, render, write = entries+t1.Sub(t0), render+t2.Sub(t1), write+time.Since(t2)
		size = len(data)
	}
	n := float64(b.N)
	b.ReportMetric(float64(entries.Nanoseconds())/n, "entries-ns/op")
	b.ReportMetric(float64(render.Nanoseconds())/n, "render-ns/op")
	b.ReportMetric(float64(write.Nanoseconds())/n, "write-ns/op")
	b.ReportMetric(float64(size), "file-bytes")
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	if fi.Size() != int64(size) {
		b.Fatalf("%s has %d bytes, want %d", path, fi.Size(), size)
	}
}
