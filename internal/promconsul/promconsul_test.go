package promconsul

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/adapterproc"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
)

// hangGuard bounds each Discover that should settle: no timing assertion,
// only a limit on how long a broken build hangs the test.
const hangGuard = 30 * time.Second

// TestDiscoverSettles: Discover returns what Prometheus's Consul SD finds,
// whichever way the entry makes it watch: services by name (one that does
// not exist included), or the catalog, selecting some services or none.
func TestDiscoverSettles(t *testing.T) {
	agent := consultest.Start(t)
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", ID: "web-1", Port: 80, Tags: []string{"prod"}})
	agent.RegisterInstance(t, consultest.Instance{Node: "n2", NodeAddress: "10.0.0.2", Service: "web", ID: "web-2", Port: 80})
	agent.RegisterInstance(t, consultest.Instance{Node: "n2", NodeAddress: "10.0.0.2", Service: "db", ID: "db-1", Port: 5432})
	for _, tc := range []struct {
		name, block string
		want        []string // the targets' node/service ID
	}{
		{"by name", "services: [web, nosuch]", []string{"n1/web-1", "n2/web-2"}},
		{"the catalog", "tags: [prod]", []string{"n1/web-1"}},
		{"the catalog, nothing selected", "tags: [nosuch]", nil},
		{"everything", "{}", []string{agent.Node + "/consul", "n1/web-1", "n2/db-1", "n2/web-2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
			defer cancel()
			block := "server: " + agent.Addr
			if tc.block != "{}" {
				block += "\n" + tc.block
			}
			targets, err := Discover(ctx, block)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, ls := range targets {
				got = append(got, string(ls["__meta_consul_node"]+"/"+ls["__meta_consul_service_id"]))
			}
			slices.Sort(got)
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("targets %q, want %q", got, tc.want)
			}
		})
	}
}

// TestDiscoverFails: a misspelt field is refused, as Prometheus refuses
// it, and a Consul that never answers ends the wait with ctx, naming what
// never came.
func TestDiscoverFails(t *testing.T) {
	if _, err := Discover(context.Background(), "server: localhost:8500\nservice: [web]"); err == nil || !strings.Contains(err.Error(), "field service not found") {
		t.Errorf("a misspelt field: err = %v, want field service not found", err)
	}

	addr, err := adapterproc.FreeAddr() // nobody listens there
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = Discover(ctx, "server: "+addr+"\nservices: [web]")
	if err == nil || !strings.Contains(err.Error(), `no group yet for ["web"]`) {
		t.Errorf("no Consul: err = %v, want the wait to end naming web", err)
	}
}

// TestTargets: a target's own label wins over its group's, empty values
// stay, and the order does not depend on the groups'.
func TestTargets(t *testing.T) {
	groups := []*targetgroup.Group{
		{Source: "b", Labels: model.LabelSet{"g": "b", "x": "group"}, Targets: []model.LabelSet{{"__address__": "b:1", "x": ""}}},
		nil,
		{Source: "a", Labels: model.LabelSet{"g": "a"}, Targets: []model.LabelSet{{"__address__": "a:2"}, {"__address__": "a:1", "g": "own"}}},
	}
	want := []string{`{__address__="a:1", g="own"}`, `{__address__="a:2", g="a"}`, `{__address__="b:1", g="b", x=""}`}
	for _, order := range [][]*targetgroup.Group{groups, {groups[2], groups[1], groups[0]}} {
		var got []string
		for _, ls := range Targets(order) {
			got = append(got, ls.String())
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("Targets = %q, want %q", got, want)
		}
	}
}
