package parity

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/promconsul"
)

const (
	nodeLabel      = "__meta_consul_node"
	serviceLabel   = "__meta_consul_service"
	serviceIDLabel = "__meta_consul_service_id"
)

// instance names one service instance; both sides' targets are matched by it.
type instance struct{ node, serviceID string }

func (i instance) String() string { return i.node + "/" + i.serviceID }

func instanceOf(ls model.LabelSet) instance {
	return instance{string(ls[nodeLabel]), string(ls[serviceIDLabel])}
}

// readFileSD reads a file_sd file as Prometheus's file_sd decodes it, and
// returns its targets merged with their entries' labels, as
// promconsul.Targets returns Prometheus's.
func readFileSD(path string) ([]model.LabelSet, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var groups []*targetgroup.Group
	if err := json.Unmarshal(data, &groups); err != nil {
		return nil, fmt.Errorf("file_sd cannot decode %s: %w", path, err)
	}
	return promconsul.Targets(groups), nil
}

// documented is what the adapter's documented differences from
// Prometheus's Consul SD depend on, for one consul_sd_configs entry.
type documented struct {
	allowList []string // the entry's services
	// registered holds each instance's service name as registered.
	// Consul looks names up without regard to case, so the query for "api"
	// also returns the instances of "API".
	registered map[instance]string
}

// expected returns what the adapter should list where Prometheus's Consul
// SD lists prom: prom with the documented differences applied, and no
// others:
//   - Consul's own service "consul" is left out unless the allow-list
//     names it;
//   - labels with empty values are left out (Prometheus treats them as
//     absent anyway);
//   - each instance is listed once, under the name it was registered
//     with: Prometheus lists it under every name that differs only in
//     case, and the adapter under its own. An instance not in registered
//     is kept, so that the comparison reports it.
func (d documented) expected(prom []model.LabelSet) []model.LabelSet {
	var want []model.LabelSet
	for _, t := range prom {
		svc := string(t[serviceLabel])
		if svc == "consul" && !slices.Contains(d.allowList, svc) {
			continue
		}
		if name, ok := d.registered[instanceOf(t)]; ok && name != svc {
			continue
		}
		ls := model.LabelSet{}
		for k, v := range t {
			if v != "" {
				ls[k] = v
			}
		}
		want = append(want, ls)
	}
	return want
}

// compare returns the differences between want (Prometheus's, see
// expected) and got (the adapter's), one readable entry per instance
// (node/service ID) that differs: missing from the adapter, extra in it,
// listed more than once, or with labels that differ.
func compare(want, got []model.LabelSet) []string {
	wantBy, gotBy := byInstance(want), byInstance(got)
	keys := map[instance]bool{}
	for k := range wantBy {
		keys[k] = true
	}
	for k := range gotBy {
		keys[k] = true
	}
	var diffs []string
	for _, k := range slices.SortedFunc(maps.Keys(keys), func(a, b instance) int { return strings.Compare(a.String(), b.String()) }) {
		w, g := wantBy[k], gotBy[k]
		switch {
		case len(w) > 1 || len(g) > 1:
			diffs = append(diffs, fmt.Sprintf("%s: listed more than once (by Prometheus %d times, by the adapter %d):\n    Prometheus %v\n    adapter    %v", k, len(w), len(g), w, g))
		case len(g) == 0:
			diffs = append(diffs, fmt.Sprintf("%s: missing from the adapter: %v", k, w[0]))
		case len(w) == 0:
			diffs = append(diffs, fmt.Sprintf("%s: extra in the adapter: %v", k, g[0]))
		default:
			if lines := labelDiffs(w[0], g[0]); len(lines) > 0 {
				diffs = append(diffs, fmt.Sprintf("%s: labels differ:\n%s", k, strings.Join(lines, "\n")))
			}
		}
	}
	return diffs
}

func byInstance(targets []model.LabelSet) map[instance][]model.LabelSet {
	by := map[instance][]model.LabelSet{}
	for _, t := range targets {
		by[instanceOf(t)] = append(by[instanceOf(t)], t)
	}
	return by
}

// labelDiffs returns one line per label whose value differs between
// Prometheus's target want and the adapter's got.
func labelDiffs(want, got model.LabelSet) []string {
	names := map[model.LabelName]bool{}
	for n := range want {
		names[n] = true
	}
	for n := range got {
		names[n] = true
	}
	var lines []string
	for _, n := range slices.Sorted(maps.Keys(names)) {
		w, inWant := want[n]
		g, inGot := got[n]
		if w != g || inWant != inGot {
			lines = append(lines, fmt.Sprintf("    %s: Prometheus %s, adapter %s", n, show(w, inWant), show(g, inGot)))
		}
	}
	return lines
}

func show(v model.LabelValue, ok bool) string {
	if !ok {
		return "(absent)"
	}
	return fmt.Sprintf("%q", v)
}

// TestCompare: the comparison is only as good as its power to fail. From
// Prometheus's targets and the adapter's that differ only as documented,
// each kind of change must be reported, once, naming the instance and
// what changed; and the documented differences must not be.
func TestCompare(t *testing.T) {
	target := func(node, service, id string) model.LabelSet {
		return model.LabelSet{model.AddressLabel: "10.0.0.1:80", nodeLabel: model.LabelValue(node),
			serviceLabel: model.LabelValue(service), serviceIDLabel: model.LabelValue(id), "__meta_consul_tags": ",a,"}
	}
	web, api := target("n1", "web", "web-1"), target("n1", "api", "api-1")
	withEmpty := web.Clone()
	withEmpty["__meta_consul_service_address"] = ""
	prom := []model.LabelSet{
		withEmpty,
		api,
		target("n1", "API", "api-1"), // the same instance, found by the lookup of "API"
		target("agent", "consul", "consul"),
	}
	registered := map[instance]string{{"n1", "web-1"}: "web", {"n1", "api-1"}: "api", {"agent", "consul"}: "consul"}
	doc := documented{registered: registered}
	adapter := []model.LabelSet{web, api}
	if diffs := compare(doc.expected(prom), adapter); len(diffs) > 0 {
		t.Fatalf("documented differences reported:\n%s", strings.Join(diffs, "\n"))
	}

	for _, tc := range []struct {
		name string
		doc  documented
		edit func(web, api model.LabelSet) []model.LabelSet // on copies of the adapter's targets
		want []string                                       // in the one difference reported
	}{
		{"label changed", doc, func(web, api model.LabelSet) []model.LabelSet {
			web["__meta_consul_tags"] = ",b,"
			return []model.LabelSet{web, api}
		}, []string{"n1/web-1", `__meta_consul_tags: Prometheus ",a,", adapter ",b,"`}},
		{"label missing", doc, func(web, api model.LabelSet) []model.LabelSet {
			delete(api, "__meta_consul_tags")
			return []model.LabelSet{web, api}
		}, []string{"n1/api-1", `__meta_consul_tags: Prometheus ",a,", adapter (absent)`}},
		{"empty label written", doc, func(web, api model.LabelSet) []model.LabelSet {
			web["__meta_consul_service_address"] = ""
			return []model.LabelSet{web, api}
		}, []string{"n1/web-1", `__meta_consul_service_address: Prometheus (absent), adapter ""`}},
		{"under the other name", doc, func(web, api model.LabelSet) []model.LabelSet {
			api[serviceLabel] = "API"
			return []model.LabelSet{web, api}
		}, []string{"n1/api-1", `__meta_consul_service: Prometheus "api", adapter "API"`}},
		{"target missing", doc, func(web, _ model.LabelSet) []model.LabelSet {
			return []model.LabelSet{web}
		}, []string{"n1/api-1: missing from the adapter"}},
		{"target extra", doc, func(web, api model.LabelSet) []model.LabelSet {
			return []model.LabelSet{web, api, target("n2", "web", "web-2")}
		}, []string{"n2/web-2: extra in the adapter"}},
		{"target twice", doc, func(web, api model.LabelSet) []model.LabelSet {
			return []model.LabelSet{web, api, web.Clone()}
		}, []string{"n1/web-1: listed more than once (by Prometheus 1 times, by the adapter 2)"}},
		{"consul allow-listed", documented{allowList: []string{"web", "consul"}, registered: registered},
			func(web, api model.LabelSet) []model.LabelSet { return []model.LabelSet{web, api} },
			[]string{"agent/consul: missing from the adapter"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			diffs := compare(tc.doc.expected(prom), tc.edit(web.Clone(), api.Clone()))
			if len(diffs) != 1 {
				t.Fatalf("%d differences reported, want 1:\n%s", len(diffs), strings.Join(diffs, "\n"))
			}
			for _, w := range tc.want {
				if !strings.Contains(diffs[0], w) {
					t.Errorf("the difference reported does not say %q:\n%s", w, diffs[0])
				}
			}
		})
	}
}
