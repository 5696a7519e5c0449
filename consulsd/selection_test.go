package consulsd_test

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/consul-sd-adapter/consul-sd-adapter/consulsd"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
)

// TestServiceNotFound: an allow-listed name Consul does not have is
// counted while it is missing, and discovered once registered.
func TestServiceNotFound(t *testing.T) {
	agent := consultest.Start(t)
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "web", Port: 80})
	d, reg := newDiscovery(t, agent.Addr, func(c *consulsd.Config) { c.Services = []string{"web", "wbe"} })
	if groups := refresh(t, d); groups["web"] == nil || groups["wbe"] != nil {
		t.Fatalf("groups %v, want web only", groups)
	}
	if got := gauge(t, reg, "consul_sd_adapter_services_not_found"); got != 1 {
		t.Errorf("services_not_found = %v, want 1 (wbe)", got)
	}
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "wbe", Port: 81})
	if groups := refresh(t, d); groups["wbe"] == nil {
		t.Errorf("wbe not discovered once registered: %v", groups)
	}
	if got := gauge(t, reg, "consul_sd_adapter_services_not_found"); got != 0 {
		t.Errorf("services_not_found = %v once wbe exists, want 0", got)
	}
}

// TestFilterRejected: a filter expression Consul refuses fails the round
// with an error that names it, counted under a reason of its own.
func TestFilterRejected(t *testing.T) {
	agent := consultest.Start(t)
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "web", Port: 80})
	d, reg := newDiscovery(t, agent.Addr, func(c *consulsd.Config) { c.Filter = `Service.Nope == "x"` })
	_, err := d.Refresh(t.Context())
	if err == nil || !strings.Contains(err.Error(), "--consul.filter") || !strings.Contains(err.Error(), `Service.Nope`) {
		t.Errorf("err = %v, want one naming --consul.filter and the expression", err)
	}
	if got := failures(t, reg, "filter"); got != 1 {
		t.Errorf("filter failures = %v, want 1", got)
	}
}

// TestUnixSocket: an agent's API on a unix socket is reached through the
// adapter's own HTTP client (its limits and instrumentation), not the one
// consul/api would swap in.
func TestUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "consul.sock")
	agent := consultest.Start(t, consultest.WithHCL(`addresses { http = "127.0.0.1 unix://`+sock+`" }`))
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "web", Port: 80})
	d, reg := newDiscovery(t, "unix://"+sock, nil)
	if groups := refresh(t, d); groups["web"] == nil || len(groups["web"].Targets) != 1 {
		t.Fatalf("groups %v, want web's one instance", groups)
	}
	if n := histogramCount(t, reg, "consul_sd_adapter_consul_request_duration_seconds", "/v1/health/service"); n != 1 {
		t.Errorf("the request histogram saw %d health queries, want 1: the adapter's client was not used", n)
	}
}

// TestBadAddress: an address no request could go to is refused at start.
func TestBadAddress(t *testing.T) {
	for _, addr := range []string{"http://[bad", "ftp://consul:8500", "https://"} {
		cfg := consulsd.DefaultConfig
		cfg.Address = addr
		if _, err := consulsd.New(cfg, log.NewNopLogger(), prometheus.NewRegistry()); err == nil || !strings.Contains(err.Error(), "Consul address") {
			t.Errorf("%q: err = %v, want one about the Consul address", addr, err)
		}
	}
}

// TestTokenFileMissing: a token file that cannot be read is refused at
// start, with the path in the message.
func TestTokenFileMissing(t *testing.T) {
	cfg := consulsd.DefaultConfig
	cfg.TokenFile = filepath.Join(t.TempDir(), "nope")
	_, err := consulsd.New(cfg, log.NewNopLogger(), prometheus.NewRegistry())
	if err == nil || !strings.Contains(err.Error(), cfg.TokenFile) || strings.Contains(err.Error(), "  ") {
		t.Errorf("err = %v, want one clean line naming the file", err)
	}
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	n, err := testutil.GatherAndCount(reg, name)
	if err != nil || n != 1 {
		t.Fatalf("%s: %d series, %v", name, n, err)
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return 0
}

// concurrencyCounter is a transport that records the most requests it
// carried at once; each takes a little while, so that rounds overlap.
type concurrencyCounter struct {
	mu        sync.Mutex
	now, peak int
	next      http.RoundTripper
}

func (c *concurrencyCounter) RoundTrip(req *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.now++
	c.peak = max(c.peak, c.now)
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.now--
		c.mu.Unlock()
	}()
	time.Sleep(10 * time.Millisecond)
	return c.next.RoundTrip(req)
}

// TestInFlightSharedByDiscoveries: two Discoveries sharing one InFlight
// of 3 never have more than 3 requests in flight together, though each
// may have 3 of its own.
func TestInFlightSharedByDiscoveries(t *testing.T) {
	agent := consultest.Start(t)
	for i := range 12 {
		agent.RegisterInstance(t, consultest.Instance{Node: fmt.Sprintf("n%d", i), Service: fmt.Sprintf("s%d", i), Port: 80})
	}
	counter := &concurrencyCounter{next: http.DefaultTransport}
	shared := consulsd.NewInFlight(3)
	var ds []*consulsd.Discovery
	for range 2 {
		d, _ := newDiscovery(t, agent.Addr, func(c *consulsd.Config) {
			c.MaxConcurrency, c.InFlight, c.Transport, c.WatchTransport = 3, shared, counter, counter
		})
		ds = append(ds, d)
	}
	var wg sync.WaitGroup
	for _, d := range ds {
		wg.Go(func() {
			if _, err := d.Refresh(context.Background()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if counter.peak > 3 {
		t.Errorf("%d requests in flight at once over two Discoveries sharing a bound of 3", counter.peak)
	}
	if counter.peak < 2 {
		t.Errorf("at most %d request in flight: the rounds did not overlap, so the bound was not tested", counter.peak)
	}
}

// TestCatalogFilterRejected: so is a catalog filter (a block's `filter`)
// that Consul refuses, named by what set it.
func TestCatalogFilterRejected(t *testing.T) {
	agent := consultest.Start(t)
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "web", Port: 80})
	d, reg := newDiscovery(t, agent.Addr, func(c *consulsd.Config) { c.CatalogFilter = `Service.Nope == "x"` })
	_, err := d.Refresh(t.Context())
	if err == nil || !strings.Contains(err.Error(), "(filter)") || !strings.Contains(err.Error(), `Service.Nope`) {
		t.Errorf("err = %v, want one naming the filter option and the expression", err)
	}
	if got := failures(t, reg, "filter"); got != 1 {
		t.Errorf("filter failures = %v, want 1", got)
	}
}
