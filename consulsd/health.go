package consulsd

import (
	"context"
	"fmt"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// notPassing selects the checks that decide an instance's health: a status
// is the worst of its checks', and with none but passing ones it is passing.
// A maintenance check means maintenance whatever its own status, as Consul's
// aggregation counts it.
const notPassing = `Status != "passing" or CheckID == "` + api.NodeMaint + `" or CheckID matches "^` + api.ServiceMaintPrefix + `"`

// healthOnly reports whether, from the previous round's state to s, only
// health checks changed. Then the instances and all their labels but
// __meta_consul_health are as they were, and one query for the checks that
// are not passing tells every instance's health: a round of four requests
// instead of one per service. A filter may select on checks, so with one
// set every round queries the services.
func (d *Discovery) healthOnly(s catalogState) bool {
	return d.snapshot != nil && d.cfg.Filter == "" &&
		s.services == d.state.services && s.nodes == d.state.nodes && s.checks > d.state.checks
}

// instanceKey names one service instance in a datacenter.
type instanceKey struct {
	node, partition, namespace, serviceID string
}

// healthRound recomputes the health of every target of the previous
// snapshot from the checks that are not passing. Groups whose health did
// not change are kept as they are.
func (d *Discovery) healthRound(ctx context.Context, state catalogState, stale bool) ([]*targetgroup.Group, bool, error) {
	rctx, cancel := context.WithTimeout(ctx, d.cfg.RequestTimeout)
	defer cancel()
	opts := d.queryOptions(rctx)
	d.readAs(opts, stale)
	opts.Filter = notPassing
	checks, meta, err := d.client.Health().State(api.HealthAny, opts)
	if err != nil {
		return nil, false, fmt.Errorf("reading health checks: %w", err)
	}
	if stale && meta.LastIndex < d.state.checks {
		return nil, false, fmt.Errorf("health checks at index %d, below %d: %w", meta.LastIndex, d.state.checks, errBehind)
	}
	// With stale reads another server may answer, one behind the server
	// that gave the index: remember the older index, so that the next round
	// does not take its answer for the newer state.
	state.checks = min(state.checks, meta.LastIndex)
	// A node's own checks count for every instance on it.
	nodeChecks := map[instanceKey]api.HealthChecks{}
	serviceChecks := map[instanceKey]api.HealthChecks{}
	for _, c := range checks {
		if c.ServiceID == "" {
			k := instanceKey{node: c.Node, partition: c.Partition}
			nodeChecks[k] = append(nodeChecks[k], c)
		} else {
			k := instanceKey{node: c.Node, partition: c.Partition, namespace: c.Namespace, serviceID: c.ServiceID}
			serviceChecks[k] = append(serviceChecks[k], c)
		}
	}
	health := func(label func(model.LabelName) model.LabelValue) model.LabelValue {
		k := instanceKey{
			node: string(label(nodeLabel)), partition: string(label(partitionLabel)),
			namespace: string(label(namespaceLabel)), serviceID: string(label(serviceIDLabel)),
		}
		own := serviceChecks[k]
		k.namespace, k.serviceID = "", ""
		return model.LabelValue(append(own[:len(own):len(own)], nodeChecks[k]...).AggregatedStatus())
	}

	groups := make([]*targetgroup.Group, len(d.snapshot))
	changed := false
	for i, g := range d.snapshot {
		groups[i] = withHealth(g, health)
		changed = changed || groups[i] != g
	}
	d.state, d.snapshot = state, groups
	return groups, changed, nil
}

// withHealth returns g with each target's health label set by health, or g
// itself when none changes. Groups sent are never modified: a changed group
// is a new one, its labels shared out again. Unchanged groups, most of them
// in a large catalog, cost no allocation.
func withHealth(g *targetgroup.Group, health func(label func(model.LabelName) model.LabelValue) model.LabelValue) *targetgroup.Group {
	changed := false
	for _, t := range g.Targets {
		label := func(n model.LabelName) model.LabelValue {
			if v, ok := t[n]; ok {
				return v
			}
			return g.Labels[n]
		}
		if health(label) != label(healthLabel) {
			changed = true
			break
		}
	}
	if !changed {
		return g
	}
	instances := make([][]labelPair, len(g.Targets))
	for i, t := range g.Targets {
		merged := g.Labels.Merge(t)
		merged[healthLabel] = health(func(n model.LabelName) model.LabelValue { return merged[n] })
		for n, v := range merged {
			instances[i] = append(instances[i], labelPair{name: n, value: v})
		}
	}
	return groupOf(g.Source, instances)
}
