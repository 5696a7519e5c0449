package adapter_test

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"

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

// flipHealth returns groups with one target's health changed, sharing
// everything else, as the Discoverer sends after one health check flips.
func flipHealth(groups []*targetgroup.Group) []*targetgroup.Group {
	flipped := slices.Clone(groups)
	g := *groups[0]
	g.Targets = slices.Clone(g.Targets)
	t := maps.Clone(g.Targets[0])
	t["__meta_consul_health"] = "critical"
	g.Targets[0] = t
	flipped[0] = &g
	return flipped
}

// BenchmarkRenderWrite100k measures what the adapter does with a snapshot
// of 100,000 targets in 20,000 groups after one change in Consul: convert
// it to file_sd entries, encode them as JSON into the next file, and put
// that in place of the old one (with fsync). Successive snapshots differ
// in one target, so every operation rewrites the file. make bench runs it
// and reports ns/op against the 300 ms target.
func BenchmarkRenderWrite100k(b *testing.B) { benchRenderWrite(b, "custom_sd.json", adapter.JSON) }

// BenchmarkRenderWrite100kYAML is BenchmarkRenderWrite100k to a .yml file.
func BenchmarkRenderWrite100kYAML(b *testing.B) { benchRenderWrite(b, "custom_sd.yml", adapter.YAML) }

func benchRenderWrite(b *testing.B, file string, f adapter.Format) {
	snapshots := [2][]*targetgroup.Group{benchGroups(20000, 5)}
	snapshots[1] = flipHealth(snapshots[0])
	path := filepath.Join(b.TempDir(), file)
	a, err := adapter.New(adapter.Config{OutputFile: path, FileMode: 0o644}, log.NewNopLogger(), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		if err := a.Update(snapshots[n%2]); err != nil {
			b.Fatal(err)
		}
		n++
	}
	got, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	want, err := adapter.Render(snapshots[(n-1)%2], f)
	if err != nil {
		b.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		b.Fatalf("%s does not hold the last snapshot (%d bytes, want %d)", path, len(got), len(want))
	}
	b.ReportMetric(float64(len(got)), "file-bytes")
}

// BenchmarkRender100k is the CPU part of BenchmarkRenderWrite100k alone:
// conversion and JSON encoding, to io.Discard.
func BenchmarkRender100k(b *testing.B) { benchRender(b, adapter.JSON) }

// BenchmarkRender100kYAML is BenchmarkRender100k in YAML.
func BenchmarkRender100kYAML(b *testing.B) { benchRender(b, adapter.YAML) }

func benchRender(b *testing.B, f adapter.Format) {
	groups := benchGroups(20000, 5)
	b.ReportAllocs()
	for b.Loop() {
		if err := adapter.Write(io.Discard, groups, f); err != nil {
			b.Fatal(err)
		}
	}
}
