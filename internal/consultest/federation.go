package consultest

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// Federation is two datacenters, dc1 and dc2, joined over the WAN as Consul
// federates datacenters. Each is a single server, raft on disk, which is
// also the agent clients talk to: a query for the other datacenter (?dc=)
// is forwarded to the other's server. dc1 is the primary datacenter.
type Federation struct {
	// DC1 and DC2 are the servers of dc1 and dc2; Options given to
	// StartFederation apply to both.
	DC1, DC2 *Agent
}

// StartFederation starts a federation and waits until each datacenter
// lists the other and answers queries for it. It is stopped when the test
// ends.
func StartFederation(t testing.TB, opts ...Option) *Federation {
	t.Helper()
	f, err := LaunchFederation(Binary(t), t.TempDir(), opts...)
	if f != nil {
		stopAtEnd(t, f.agents())
	}
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// LaunchFederation is StartFederation for programs that are not tests: the
// caller stops the federation.
func LaunchFederation(bin, dir string, opts ...Option) (*Federation, error) {
	var dcs []*Agent
	for _, dc := range []string{"dc1", "dc2"} {
		a, err := clusterAgent(bin, filepath.Join(dir, dc), opts...)
		if err != nil {
			return nil, err
		}
		a.Datacenter = dc
		a.cfg.role, a.cfg.servers = "server", 1
		// Every server of a federation names the same primary; without it
		// each datacenter would take itself for the primary.
		a.cfg.extra = append(a.cfg.extra, `primary_datacenter = "dc1"`)
		dcs = append(dcs, a)
	}
	f := &Federation{DC1: dcs[0], DC2: dcs[1]}
	// Each joins the other, so that either one, restarted, finds the other
	// again whatever its serf snapshot kept.
	f.DC1.cfg.joinWAN = []string{f.DC2.wanAddr()}
	f.DC2.cfg.joinWAN = []string{f.DC1.wanAddr()}
	if err := launchAll(f.agents()); err != nil {
		return f, err
	}
	if err := f.waitFederated(); err != nil {
		f.Stop()
		return f, err
	}
	return f, nil
}

func (a *Agent) wanAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(a.ports.serfWAN)) }

func (f *Federation) agents() []*Agent { return []*Agent{f.DC1, f.DC2} }

// Stop stops both datacenters.
func (f *Federation) Stop() { stopAll(f.agents()) }

// waitFederated polls until each datacenter serves the other, or
// startTimeout.
func (f *Federation) waitFederated() error {
	deadline := time.Now().Add(startTimeout)
	for {
		err := f.federated()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("datacenters not federated after %s: %w", startTimeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// federated reports why a datacenter does not serve the other yet, or nil.
func (f *Federation) federated() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, pair := range [][2]*Agent{{f.DC1, f.DC2}, {f.DC2, f.DC1}} {
		from, to := pair[0], pair[1]
		dcs, err := from.Client.Catalog().Datacenters()
		if err != nil {
			return err
		}
		if !slices.Contains(dcs, to.Datacenter) {
			return fmt.Errorf("%s lists datacenters %v, not %s yet", from.Datacenter, dcs, to.Datacenter)
		}
		// The list comes from WAN gossip alone: only a forwarded query
		// shows that the other's server answers through this one.
		q := (&api.QueryOptions{Datacenter: to.Datacenter}).WithContext(ctx)
		node, _, err := from.Client.Catalog().Node(to.Node, q)
		if err != nil {
			return fmt.Errorf("query for %s through %s: %w", to.Datacenter, from.Datacenter, err)
		}
		if node == nil || node.Node == nil {
			return fmt.Errorf("%s's node not found through %s", to.Datacenter, from.Datacenter)
		}
	}
	return nil
}
