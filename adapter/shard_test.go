package adapter

import (
	"fmt"
	"maps"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/relabel"
	"go.yaml.in/yaml/v2"
)

// hashmodRules is the relabeling the README gives for shard K of N, as a
// Prometheus scrape config would hold it.
const hashmodRules = `
- source_labels: [__address__]
  modulus: %d
  target_label: __tmp_hash
  action: hashmod
- source_labels: [__tmp_hash]
  regex: %d
  action: keep
`

// prometheusKeeps returns a predicate on a target's labels: whether
// Prometheus's own relabeling with hashmodRules keeps it on shard index of
// count.
func prometheusKeeps(t *testing.T, index, count uint64) func(model.LabelSet) bool {
	t.Helper()
	var cfgs []*relabel.Config
	if err := yaml.UnmarshalStrict(fmt.Appendf(nil, hashmodRules, count, index), &cfgs); err != nil {
		t.Fatal(err)
	}
	for _, c := range cfgs {
		if err := c.Validate(model.UTF8Validation); err != nil {
			t.Fatal(err)
		}
	}
	return func(ls model.LabelSet) bool {
		lb := labels.NewBuilder(labels.EmptyLabels())
		for name, v := range ls {
			lb.Set(string(name), string(v))
		}
		return relabel.ProcessBuilder(lb, cfgs...)
	}
}

// shardGroups is a catalog of services whose targets have addresses in
// every form consulsd writes (IPv4, IPv6 in brackets, host names) and a
// few it does not, with labels on the groups as consulsd puts them there.
// The last group has one target, so that some shards hold all of it and
// the others none.
func shardGroups() []*targetgroup.Group {
	var groups []*targetgroup.Group
	for s := range 12 {
		g := &targetgroup.Group{
			Source: fmt.Sprintf("svc-%02d", s),
			Labels: model.LabelSet{"__meta_consul_service": model.LabelValue(fmt.Sprintf("svc-%02d", s)), "__meta_consul_dc": "dc1"},
		}
		for i := range 250 {
			addrs := []string{
				fmt.Sprintf("10.%d.%d.%d:%d", s, i/200, i%200, 9100+s),
				fmt.Sprintf("[2001:db8::%x:%x]:8080", s, i),
				fmt.Sprintf("web-%d.svc-%d.example.com:443", i, s),
				fmt.Sprintf("node-%d-%d", s, i), // no port
				fmt.Sprintf("hôte-%d.exemple:80", i+1000*s),
			}
			addr := addrs[i%len(addrs)]
			g.Targets = append(g.Targets, model.LabelSet{"__address__": model.LabelValue(addr), "__meta_consul_node": model.LabelValue(fmt.Sprint("n", i))})
		}
		groups = append(groups, g)
	}
	lone := &targetgroup.Group{Source: "lone", Targets: []model.LabelSet{{"__address__": "10.99.0.1:80"}}}
	return append(groups, lone, &targetgroup.Group{Source: "empty"}, nil)
}

// merged returns a target's labels as Prometheus sees them: its own over
// its group's.
func merged(g *targetgroup.Group, target model.LabelSet) model.LabelSet {
	ls := g.Labels.Clone()
	maps.Copy(ls, target)
	return ls
}

// TestShardFilterAgreesWithPrometheus: for several counts and every index,
// the targets Filter gives shard K are exactly those Prometheus's own
// hashmod and keep rules keep on K, and over all K every target is served
// exactly once.
func TestShardFilterAgreesWithPrometheus(t *testing.T) {
	groups := shardGroups()
	total := 0
	for _, g := range slices.DeleteFunc(slices.Clone(groups), isNil) {
		total += len(g.Targets)
	}
	for _, count := range []uint64{1, 2, 3, 4, 7, 16} {
		served := map[string]int{} // address -> how many shards served it
		for index := range count {
			keeps := prometheusKeeps(t, index, count)
			var want, got []string
			for _, g := range slices.DeleteFunc(slices.Clone(groups), isNil) {
				for _, tg := range g.Targets {
					if keeps(merged(g, tg)) {
						want = append(want, string(tg[model.AddressLabel]))
					}
				}
			}
			for _, g := range (Shard{Index: index, Count: count}).Filter(groups) {
				for _, tg := range g.Targets {
					addr := string(tg[model.AddressLabel])
					got = append(got, addr)
					served[addr]++
				}
			}
			slices.Sort(want)
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Errorf("shard %d of %d: Filter serves %d targets, Prometheus keeps %d; Filter only: %v; Prometheus only: %v",
					index, count, len(got), len(want), missing(want, got), missing(got, want))
			}
			if count > 1 && (len(got) == 0 || len(got) == total) {
				t.Errorf("shard %d of %d serves %d of %d targets: the catalog does not exercise the split", index, count, len(got), total)
			}
		}
		if len(served) != total {
			t.Errorf("%d shards serve %d distinct targets, want all %d", count, len(served), total)
		}
		for addr, n := range served {
			if n != 1 {
				t.Errorf("%d shards: %s served by %d shards, want 1", count, addr, n)
			}
		}
	}
}

func isNil(g *targetgroup.Group) bool { return g == nil }

// missing returns the elements of a not in b, both sorted.
func missing(a, b []string) []string {
	var out []string
	for _, s := range a {
		if _, found := slices.BinarySearch(b, s); !found {
			out = append(out, s)
		}
	}
	return out
}

// TestShardFilterSharesGroups: Filter changes nothing it was given, returns
// a group all of whose targets it keeps as itself, and leaves out groups
// with none.
func TestShardFilterSharesGroups(t *testing.T) {
	groups := shardGroups()
	before := cloneGroups(groups)
	for index := range uint64(3) {
		s := Shard{Index: index, Count: 3}
		byID := map[string]*targetgroup.Group{}
		for _, g := range s.Filter(groups) {
			if len(g.Targets) == 0 {
				t.Errorf("shard %d: group %s kept without targets", index, g.Source)
			}
			byID[g.Source] = g
		}
		lone := groups[slices.IndexFunc(groups, func(g *targetgroup.Group) bool { return g != nil && g.Source == "lone" })]
		if got, ok := byID[lone.Source]; ok != s.Holds(string(lone.Targets[0][model.AddressLabel])) || ok && got != lone {
			t.Errorf("shard %d: the one-target group came back as %p (present %v), want the group itself (%p) exactly on its own shard", index, got, ok, lone)
		}
		if _, ok := byID["empty"]; ok {
			t.Errorf("shard %d: a group without targets is served", index)
		}
	}
	if !reflect.DeepEqual(groups, before) {
		t.Error("Filter changed the groups it was given")
	}
	// One shard: every group with targets, each itself, in order.
	all := (Shard{Index: 0, Count: 1}).Filter(groups)
	if want := groups[:len(groups)-2]; !slices.Equal(all, want) {
		t.Errorf("one shard: Filter returned %d groups, want the %d with targets, as they are", len(all), len(want))
	}
}

func cloneGroups(groups []*targetgroup.Group) []*targetgroup.Group {
	out := make([]*targetgroup.Group, len(groups))
	for i, g := range groups {
		if g == nil {
			continue
		}
		// maps.Clone, not LabelSet.Clone: it keeps a nil map nil, for
		// reflect.DeepEqual.
		c := &targetgroup.Group{Source: g.Source, Labels: maps.Clone(g.Labels)}
		for _, tg := range g.Targets {
			c.Targets = append(c.Targets, maps.Clone(tg))
		}
		out[i] = c
	}
	return out
}

func TestParseShard(t *testing.T) {
	for _, tc := range []struct {
		query string
		want  *Shard
	}{
		{"", nil},
		{"page=2", nil},
		{"shards=1&shard=0", &Shard{Index: 0, Count: 1}},
		{"shards=3&shard=2", &Shard{Index: 2, Count: 3}},
		{"shard=0&shards=3", &Shard{Index: 0, Count: 3}},
		{"shards=%2B3&shard=1", &Shard{Index: 1, Count: 3}},
	} {
		got, err := ParseShard(query(t, tc.query))
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseShard(%q) = %+v, %v; want %+v", tc.query, got, err, tc.want)
		}
	}
	for _, tc := range badShardQueries {
		got, err := ParseShard(query(t, tc.query))
		if err == nil {
			t.Errorf("ParseShard(%q) = %+v, want an error", tc.query, got)
			continue
		}
		checkParamError(t, tc.query, err.Error(), tc.param)
	}
}

// badShardQueries are queries ParseShard refuses, each with the parameter
// its error must name.
var badShardQueries = []struct{ query, param string }{
	{"shards=3", "shards"},
	{"shard=1", "shard"},
	{"shards=&shard=0", "shards"},
	{"shards=three&shard=0", "shards"},
	{"shards=3.0&shard=0", "shards"},
	{"shards=0&shard=0", "shards"},
	{"shards=-2&shard=0", "shards"},
	{"shards=99999999999999999999&shard=0", "shards"},
	{"shards=3&shard=", "shard"},
	{"shards=3&shard=1x", "shard"},
	{"shards=3&shard=-1", "shard"},
	{"shards=3&shard=3", "shard"},
	{"shards=3&shard=7", "shard"},
	{"shards=3&shard=0&shard=1", "shard"},
	{"shards=3&shards=4&shard=1", "shards"},
	{"shards=3&shard=%0A1", "shard"},
}

// checkParamError asserts that msg is one line starting with the name of
// the parameter at fault.
func checkParamError(t *testing.T, query, msg, param string) {
	t.Helper()
	if !strings.HasPrefix(msg, param+":") || strings.Contains(strings.TrimSuffix(msg, "\n"), "\n") {
		t.Errorf("%q: error %q, want one line naming %s", query, msg, param)
	}
}

func query(t *testing.T, q string) url.Values {
	t.Helper()
	v, err := url.ParseQuery(q)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
