package adapter

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// gatedDiscoverer sends one group once its gate is closed.
type gatedDiscoverer struct {
	gate    chan struct{}
	address string
}

func (d *gatedDiscoverer) Run(ctx context.Context, up chan<- []*targetgroup.Group) {
	select {
	case <-d.gate:
	case <-ctx.Done():
		return
	}
	g := &targetgroup.Group{Source: "web", Targets: []model.LabelSet{{model.AddressLabel: model.LabelValue(d.address)}}}
	select {
	case up <- []*targetgroup.Group{g}:
	case <-ctx.Done():
	}
	<-ctx.Done()
}

// TestRunnerWaitsForEveryDiscoverer: a set of two discoverers is not
// written until both have sent, so the file never loses the targets of the
// slower one; then it holds both.
func TestRunnerWaitsForEveryDiscoverer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	path := filepath.Join(t.TempDir(), "web.json")
	if err := os.WriteFile(path, []byte("[]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	a, err := New(Config{OutputFile: path, FileMode: 0o644}, log.NewNopLogger(), reg)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRunner(ctx, nil, log.NewNopLogger(), reg)
	if err != nil {
		t.Fatal(err)
	}
	fast := &gatedDiscoverer{gate: make(chan struct{}), address: "10.0.0.1:80"}
	slow := &gatedDiscoverer{gate: make(chan struct{}), address: "10.0.0.2:80"}
	close(fast.gate)
	r.Apply(map[string]*Adapter{"web": a}, map[string]discovery.Configs{"web": {Discoverer(fast), Discoverer(slow)}})
	go r.Run(ctx) //nolint:errcheck // ends with ctx

	// The Manager syncs every managerThrottle: several syncs pass with
	// the fast discoverer's targets alone.
	time.Sleep(5 * managerThrottle)
	if data, _ := os.ReadFile(path); string(data) != "[]\n" {
		t.Fatalf("written before the slow discoverer sent: %s", data)
	}
	close(slow.gate)
	deadline := time.Now().Add(30 * time.Second)
	for {
		data, _ := os.ReadFile(path)
		if strings.Contains(string(data), "10.0.0.1:80") && strings.Contains(string(data), "10.0.0.2:80") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the file never held both discoverers' targets: %s", data)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
