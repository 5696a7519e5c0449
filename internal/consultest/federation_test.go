package consultest_test

import (
	"slices"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
)

// TestFederation: each datacenter lists the other, a query through dc1 for
// dc2 answers from dc2's catalog, fails while dc2 is down and answers again
// once it is back, its catalog kept.
func TestFederation(t *testing.T) {
	// Options apply to both datacenters' agents.
	f := consultest.StartFederation(t, consultest.WithHCL(`node_meta { federated = "yes" }`))
	for _, a := range []*consultest.Agent{f.DC1, f.DC2} {
		dcs, err := a.Client.Catalog().Datacenters()
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(dcs)
		if !slices.Equal(dcs, []string{"dc1", "dc2"}) {
			t.Errorf("%s lists datacenters %v, want [dc1 dc2]", a.Datacenter, dcs)
		}
		node, _, err := a.Client.Catalog().Node(a.Node, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := node.Node.Meta["federated"]; got != "yes" {
			t.Errorf("%s's agent has node meta federated = %q, want yes (WithHCL)", a.Datacenter, got)
		}
	}

	f.DC2.RegisterInstance(t, consultest.Instance{Node: "n2", Service: "web", Port: 80})
	inDC2 := &api.QueryOptions{Datacenter: "dc2"}
	webOf := func(q *api.QueryOptions) ([]*api.ServiceEntry, error) {
		entries, _, err := f.DC1.Client.Health().Service("web", "", false, q)
		return entries, err
	}
	entries, err := webOf(inDC2)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Node.Node != "n2" || entries[0].Node.Datacenter != "dc2" {
		t.Fatalf("web in dc2 through dc1 = %v, want n2 in dc2", describe(entries))
	}
	if entries, err := webOf(nil); err != nil || len(entries) != 0 {
		t.Fatalf("web in dc1 = %v, %v; want none", describe(entries), err)
	}

	f.DC2.Stop()
	waitUntil(t, "a query for dc2 through dc1 to fail", func() bool {
		_, err := webOf(inDC2)
		return err != nil
	})
	if _, err := webOf(nil); err != nil {
		t.Fatalf("dc1 fails its own queries while dc2 is down: %v", err)
	}

	if err := f.DC2.Start(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "web in dc2 through dc1 after dc2's restart", func() bool {
		entries, err := webOf(inDC2)
		return err == nil && len(entries) == 1 && entries[0].Node.Datacenter == "dc2"
	})
}

// describe lists entries as datacenter/node/service, for failure messages.
func describe(entries []*api.ServiceEntry) []string {
	var out []string
	for _, e := range entries {
		out = append(out, e.Node.Datacenter+"/"+e.Node.Node+"/"+e.Service.ID)
	}
	return out
}
