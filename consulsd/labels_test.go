package consulsd

import (
	"fmt"
	"reflect"
	"runtime"
	"testing"
	"unsafe"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

func TestTargetLabels(t *testing.T) {
	base := func() *api.ServiceEntry {
		return &api.ServiceEntry{
			Node: &api.Node{Node: "n1", Address: "10.0.0.1", Datacenter: "dc1"},
			Service: &api.AgentService{
				ID: "web-1", Service: "web", Port: 8080, Tags: []string{"a", "b"},
			},
			Checks: api.HealthChecks{{Status: api.HealthPassing}},
		}
	}
	tests := []struct {
		name      string
		edit      func(*api.ServiceEntry)
		separator string
		want      model.LabelSet // only these labels are checked
		absent    []model.LabelName
	}{
		{
			name:      "node address when the service has none",
			separator: ",",
			want: model.LabelSet{
				model.AddressLabel:  "10.0.0.1:8080",
				addressLabel:        "10.0.0.1",
				serviceAddressLabel: "",
				servicePortLabel:    "8080",
				nodeLabel:           "n1",
				serviceLabel:        "web",
				serviceIDLabel:      "web-1",
				datacenterLabel:     "dc1",
				tagsLabel:           ",a,b,",
				healthLabel:         "passing",
			},
			absent: []model.LabelName{namespaceLabel, partitionLabel},
		},
		{
			name:      "service address wins, IPv6 in brackets",
			edit:      func(e *api.ServiceEntry) { e.Service.Address = "2001:db8::1" },
			separator: ",",
			want: model.LabelSet{
				model.AddressLabel:  "[2001:db8::1]:8080",
				serviceAddressLabel: "2001:db8::1",
				addressLabel:        "10.0.0.1",
			},
		},
		{
			name:      "IPv6 node address",
			edit:      func(e *api.ServiceEntry) { e.Node.Address = "::1" },
			separator: ",",
			want:      model.LabelSet{model.AddressLabel: "[::1]:8080"},
		},
		{
			name:      "custom separator wraps the tags",
			separator: ";",
			want:      model.LabelSet{tagsLabel: ";a;b;"},
		},
		{
			name:      "no tags still wrapped, as Prometheus does",
			edit:      func(e *api.ServiceEntry) { e.Service.Tags = nil },
			separator: ",",
			want:      model.LabelSet{tagsLabel: ",,"},
		},
		{
			name: "meta keys are sanitised",
			edit: func(e *api.ServiceEntry) {
				e.Node.Meta = map[string]string{"rack-id": "r1", "zone.name": "z"}
				e.Service.Meta = map[string]string{"metrics/path": "/m", "ok_key": "v"}
				e.Node.TaggedAddresses = map[string]string{"lan_ipv4": "10.0.0.1", "wan-v6": "::2"}
			},
			separator: ",",
			want: model.LabelSet{
				"__meta_consul_metadata_rack_id":              "r1",
				"__meta_consul_metadata_zone_name":            "z",
				"__meta_consul_service_metadata_metrics_path": "/m",
				"__meta_consul_service_metadata_ok_key":       "v",
				"__meta_consul_tagged_address_lan_ipv4":       "10.0.0.1",
				"__meta_consul_tagged_address_wan_v6":         "::2",
			},
		},
		{
			name: "health is the worst check",
			edit: func(e *api.ServiceEntry) {
				e.Checks = api.HealthChecks{{Status: api.HealthPassing}, {Status: api.HealthCritical}, {Status: api.HealthWarning}}
			},
			separator: ",",
			want:      model.LabelSet{healthLabel: "critical"},
		},
		{
			name: "enterprise namespace and partition when set",
			edit: func(e *api.ServiceEntry) {
				e.Service.Namespace = "ns"
				e.Service.Partition = "p"
			},
			separator: ",",
			want:      model.LabelSet{namespaceLabel: "ns", partitionLabel: "p"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := base()
			if tc.edit != nil {
				tc.edit(e)
			}
			got := targetLabels(e, tc.separator)
			for name, want := range tc.want {
				if v, ok := got[name]; !ok || v != want {
					t.Errorf("%s = %q (present %v), want %q", name, v, ok, want)
				}
			}
			for _, name := range tc.absent {
				if _, ok := got[name]; ok {
					t.Errorf("%s present, want absent", name)
				}
			}
			if err := got.Validate(); err != nil {
				t.Errorf("invalid label set: %v", err)
			}
		})
	}
}

// TestServiceGroupSharesCommonLabels: labels every instance has with the
// same value move to the group, the rest stay on the targets, and merging
// them back gives each instance's own labels (without empty ones).
func TestServiceGroupSharesCommonLabels(t *testing.T) {
	entry := func(node, addr, id, health string, meta map[string]string) *api.ServiceEntry {
		return &api.ServiceEntry{
			Node:    &api.Node{Node: node, Address: addr, Datacenter: "dc1", Meta: map[string]string{"os": "linux", "rack": node}},
			Service: &api.AgentService{ID: id, Service: "web", Port: 80, Tags: []string{"a"}, Meta: meta},
			Checks:  api.HealthChecks{{Status: health}},
		}
	}
	entries := []*api.ServiceEntry{
		entry("n1", "10.0.0.1", "web-1", api.HealthPassing, map[string]string{"v": "1"}),
		entry("n2", "10.0.0.2", "web-2", api.HealthCritical, map[string]string{"v": "1"}),
		entry("n3", "10.0.0.3", "web-3", api.HealthPassing, nil),
	}
	g := serviceGroup("web", entries, ",")
	wantShared := model.LabelSet{
		serviceLabel: "web", servicePortLabel: "80", tagsLabel: ",a,", datacenterLabel: "dc1",
		"__meta_consul_metadata_os": "linux",
	}
	if !reflect.DeepEqual(g.Labels, wantShared) {
		t.Errorf("group labels %v, want %v", g.Labels, wantShared)
	}
	if len(g.Targets) != len(entries) {
		t.Fatalf("%d targets, want %d", len(g.Targets), len(entries))
	}
	for i, e := range entries {
		for name := range wantShared {
			if _, ok := g.Targets[i][name]; ok {
				t.Errorf("target %d repeats the shared label %s", i, name)
			}
		}
		want := targetLabels(e, ",")
		for n, v := range want {
			if v == "" {
				delete(want, n)
			}
		}
		if got := g.Labels.Merge(g.Targets[i]); !reflect.DeepEqual(got, want) {
			t.Errorf("target %d: merged labels\n%v\nwant\n%v", i, got, want)
		}
	}

	// One instance: nothing to share, everything stays on the target.
	one := serviceGroup("web", entries[:1], ",")
	if len(one.Labels) != 0 || len(one.Targets) != 1 || one.Targets[0][nodeLabel] != "n1" || one.Targets[0][serviceLabel] != "web" {
		t.Errorf("single instance: group labels %v, target %v", one.Labels, one.Targets)
	}
	if none := serviceGroup("web", nil, ","); none.Source != "web" || len(none.Targets) != 0 {
		t.Errorf("no instances: %+v", none)
	}
}

// TestHolds: a group holds its instances' labels however they are shared
// out between group and targets, and any added, removed or changed label
// makes it not hold them.
func TestHolds(t *testing.T) {
	entries := func() []*api.ServiceEntry {
		var es []*api.ServiceEntry
		for i := 1; i <= 3; i++ {
			es = append(es, &api.ServiceEntry{
				Node:    &api.Node{Node: fmt.Sprintf("n%d", i), Address: fmt.Sprintf("10.0.0.%d", i), Datacenter: "dc1", Meta: map[string]string{"os": "linux"}},
				Service: &api.AgentService{ID: fmt.Sprintf("web-%d", i), Service: "web", Port: 80, Meta: map[string]string{"v": "1"}},
				Checks:  api.HealthChecks{{Status: api.HealthPassing}},
			})
		}
		return es
	}
	g := serviceGroup("web", entries(), ",")
	if !holds(g, instanceLabels(entries(), ",")) {
		t.Fatal("a group does not hold the instances it was built from")
	}
	// The same labels, all on the targets.
	flat := &targetgroup.Group{Source: "web"}
	for _, tl := range g.Targets {
		flat.Targets = append(flat.Targets, g.Labels.Merge(tl))
	}
	if !holds(flat, instanceLabels(entries(), ",")) {
		t.Error("a group with every label on its targets does not hold the same instances")
	}

	for name, edit := range map[string]func([]*api.ServiceEntry){
		"a changed node value":     func(es []*api.ServiceEntry) { es[1].Node.Address = "10.0.0.9" },
		"a changed shared value":   func(es []*api.ServiceEntry) { es[2].Service.Meta["v"] = "2" },
		"an added label":           func(es []*api.ServiceEntry) { es[0].Node.Meta["rack"] = "r1" },
		"a removed shared label":   func(es []*api.ServiceEntry) { delete(es[0].Node.Meta, "os") },
		"a label emptied":          func(es []*api.ServiceEntry) { es[0].Service.Meta["v"] = "" },
		"a label set from empty":   func(es []*api.ServiceEntry) { es[0].Service.Address = "10.1.1.1" },
		"one instance fewer":       func(es []*api.ServiceEntry) {},
		"instances in other order": func(es []*api.ServiceEntry) { es[0], es[1] = es[1], es[0] },
	} {
		es := entries()
		edit(es)
		if name == "one instance fewer" {
			es = es[:2]
		}
		if holds(g, instanceLabels(es, ",")) {
			t.Errorf("%s: the old group still holds the instances", name)
		}
	}
}

// serviceGroup builds a service's group as a round does when the service is
// new or changed.
func serviceGroup(name string, entries []*api.ServiceEntry, tagSeparator string) *targetgroup.Group {
	return groupOf(name, instanceLabels(entries, tagSeparator))
}

// TestNodeValuesSharedAcrossGC: instances on one node, in services built
// at different times, share one copy of the node's values for as long as a
// group holds them, also across garbage collections (at GOGC=50 a full
// round at scale spans several).
func TestNodeValuesSharedAcrossGC(t *testing.T) {
	entry := func(service string) *api.ServiceEntry {
		// Fresh strings, as decoding each answer makes them.
		return &api.ServiceEntry{
			Node:    &api.Node{Node: fmt.Sprint("node-", 42), Address: fmt.Sprint("10.0.0.", 42), Datacenter: "dc1"},
			Service: &api.AgentService{ID: service + "-1", Service: service, Port: 80},
		}
	}
	// Two instances, so that the node's labels stay on the targets.
	build := func(service string) *targetgroup.Group {
		other := entry(service)
		other.Node.Node, other.Service.ID = "node-7", service+"-2"
		return serviceGroup(service, []*api.ServiceEntry{entry(service), other}, ",")
	}
	nodeOf := func(g *targetgroup.Group) string {
		for _, tl := range g.Targets {
			if tl[nodeLabel] == "node-42" {
				return string(tl[nodeLabel])
			}
		}
		t.Fatalf("group %s: no target on node-42: %v", g.Source, g.Targets)
		return ""
	}

	web := build("web")
	runtime.GC()
	runtime.GC()
	db := build("db")
	if a, b := nodeOf(web), nodeOf(db); unsafe.StringData(a) != unsafe.StringData(b) {
		t.Error("the groups of web and db, built with a garbage collection in between, hold separate copies of node-42's name")
	}
	runtime.KeepAlive(web)
}
