package consultest_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
)

func TestRegisterAndRead(t *testing.T) {
	t.Parallel()
	a := consultest.Start(t)

	a.RegisterInstance(t, consultest.Instance{
		Node:     "node-a",
		NodeMeta: map[string]string{"rack": "a"},
		Service:  "web",
		ID:       "web-1",
		Port:     8080,
		Tags:     []string{"v1"},
		Meta:     map[string]string{"team": "x"},
	})
	b := consultest.Instance{
		Node:            "node-b",
		NodeAddress:     "10.0.0.2",
		NodeMeta:        map[string]string{"rack": "b"},
		TaggedAddresses: map[string]string{"lan": "10.0.0.2", "wan": "192.0.2.2"},
		Service:         "web",
		Address:         "10.0.0.20",
		Port:            9090,
		Health:          api.HealthCritical,
	}
	a.RegisterInstance(t, b)

	byNode := healthOf(t, a, "web", false)
	if len(byNode) != 2 {
		t.Fatalf("got %d instances of web, want 2: %v", len(byNode), byNode)
	}
	ea, eb := byNode["node-a"], byNode["node-b"]
	checks := []struct{ name, got, want string }{
		{"node-a rack", ea.Node.Meta["rack"], "a"},
		{"node-a address", ea.Node.Address, "127.0.0.1"},
		{"node-a service id", ea.Service.ID, "web-1"},
		{"node-a service meta", ea.Service.Meta["team"], "x"},
		{"node-a tags", strings.Join(ea.Service.Tags, ","), "v1"},
		{"node-a health", ea.Checks.AggregatedStatus(), api.HealthPassing},
		{"node-b rack", eb.Node.Meta["rack"], "b"},
		{"node-b address", eb.Node.Address, "10.0.0.2"},
		{"node-b wan", eb.Node.TaggedAddresses["wan"], "192.0.2.2"},
		{"node-b service id", eb.Service.ID, "web"},
		{"node-b service address", eb.Service.Address, "10.0.0.20"},
		{"node-b health", eb.Checks.AggregatedStatus(), api.HealthCritical},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
	if got := len(healthOf(t, a, "web", true)); got != 1 {
		t.Errorf("passing instances = %d, want 1", got)
	}

	a.SetHealth(t, b, api.HealthWarning)
	eb = healthOf(t, a, "web", false)["node-b"]
	if got := eb.Checks.AggregatedStatus(); got != api.HealthWarning {
		t.Errorf("node-b health after SetHealth = %q, want warning", got)
	}
	if got := eb.Node.Meta["rack"]; got != "b" {
		t.Errorf("SetHealth changed node meta: rack = %q", got)
	}

	a.DeregisterInstance(t, "node-a", "web-1")
	if _, ok := healthOf(t, a, "web", false)["node-a"]; ok {
		t.Error("node-a still has web after DeregisterInstance")
	}
	a.DeregisterNode(t, "node-b")
	if got := healthOf(t, a, "web", false); len(got) != 0 {
		t.Errorf("web still has instances after deregistering: %v", got)
	}
}

// healthOf returns the instances of service by node name.
func healthOf(t *testing.T, a *consultest.Agent, service string, passingOnly bool) map[string]*api.ServiceEntry {
	t.Helper()
	entries, _, err := a.Client.Health().Service(service, "", passingOnly, nil)
	if err != nil {
		t.Fatalf("health of %s: %v", service, err)
	}
	out := map[string]*api.ServiceEntry{}
	for _, e := range entries {
		out[e.Node.Node] = e
	}
	return out
}

func TestStopRestart(t *testing.T) {
	t.Parallel()
	a := consultest.Start(t)
	addr := a.Addr
	a.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "web"})

	for _, stop := range []struct {
		name string
		fn   func()
	}{
		{"Stop", a.Stop},
		{"Kill", a.Kill},
	} {
		stop.fn()
		stop.fn() // idempotent
		if _, err := a.Client.Status().Leader(); err == nil {
			t.Fatalf("after %s: agent still answers", stop.name)
		}
		a.Restart(t)
		if a.Addr != addr {
			t.Fatalf("after %s and Restart: Addr = %s, want %s", stop.name, a.Addr, addr)
		}
		// Dev agents keep state in memory only.
		if got := healthOf(t, a, "web", false); len(got) != 0 {
			t.Errorf("after %s and Restart: web has %d instances, want none", stop.name, len(got))
		}
		a.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "web"})
	}
	a.Restart(t) // while running
	if _, err := a.Client.Status().Leader(); err != nil {
		t.Fatalf("after Restart of a running agent: %v", err)
	}
}

func TestACL(t *testing.T) {
	t.Parallel()
	const token = "9a3b5c1e-0000-4000-8000-000000000001"
	a := consultest.Start(t, consultest.WithACL(token))
	a.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "web"})
	if got := len(healthOf(t, a, "web", false)); got != 1 {
		t.Fatalf("web has %d instances with the management token, want 1", got)
	}

	for _, tc := range []struct {
		token, want string
	}{
		{"", "Permission denied"},                                 // anonymous
		{"00000000-0000-4000-8000-00000000dead", "ACL not found"}, // unknown
	} {
		c, err := api.NewClient(&api.Config{Address: a.Addr, Token: tc.token})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Catalog().Register(&api.CatalogRegistration{Node: "n2", Address: "127.0.0.1"}, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("register with token %q: error %v, want one containing %q", tc.token, err, tc.want)
		}
	}
}

func TestTLS(t *testing.T) {
	t.Parallel()
	a := consultest.Start(t, consultest.WithTLS(consultest.GenerateCerts(t)))
	if !strings.HasPrefix(a.URL(), "https://") {
		t.Errorf("URL() = %s, want https", a.URL())
	}
	a.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "web"})
	if got := len(healthOf(t, a, "web", false)); got != 1 {
		t.Fatalf("web has %d instances over TLS, want 1", got)
	}
	// Plain HTTP must not be served, on the API port or elsewhere.
	resp, err := http.Get("http://" + a.Addr + "/v1/status/leader")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("plain HTTP to %s answered 200", a.Addr)
		}
	}
}

// TestCluster: three servers elect a leader, the client agent reaches the
// catalog through them, and the cluster survives losing its leader.
func TestCluster(t *testing.T) {
	c := consultest.StartCluster(t)
	leader, err := c.Leader()
	if err != nil {
		t.Fatal(err)
	}
	c.Client.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "web", Port: 80})
	for _, s := range c.Servers {
		waitUntil(t, s.Node+" has web", func() bool {
			entries, _, err := s.Client.Health().Service("web", "", false, &api.QueryOptions{AllowStale: true})
			return err == nil && len(entries) == 1
		})
	}

	leader.Kill()
	next, err := c.Leader()
	if err != nil {
		t.Fatal(err)
	}
	if next == leader {
		t.Fatal("the killed server still leads")
	}
	// The client agent's first write may still go to the old leader's
	// connection and fail ("stream closed"): the cluster takes writes again
	// once the agent has moved on.
	waitUntil(t, "a write through the client agent after the election", func() bool {
		_, err := c.Client.Client.Catalog().Register(&api.CatalogRegistration{
			Node: "n2", Address: "127.0.0.1", Service: &api.AgentService{ID: "web", Service: "web", Port: 80},
		}, nil)
		return err == nil
	})
	if err := leader.Start(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the restarted server to catch up", func() bool {
		entries, _, err := leader.Client.Health().Service("web", "", false, &api.QueryOptions{AllowStale: true})
		return err == nil && len(entries) == 2
	})
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
