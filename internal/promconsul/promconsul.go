// Package promconsul runs Prometheus's own Consul service discovery
// (github.com/prometheus/prometheus/discovery/consul), configured from a
// consul_sd_configs entry exactly as prometheus.yml holds it, and returns
// the targets it discovered once it has settled. It is the reference the
// parity test holds the adapter to, so it adds nothing of its own: the
// entry is parsed by the real SDConfig (defaults and validation included)
// and the real Discovery does every request.
package promconsul

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
	"github.com/prometheus/common/promslog"
	"github.com/prometheus/prometheus/discovery"
	"github.com/prometheus/prometheus/discovery/consul"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	"go.yaml.in/yaml/v2"
)

// QuietPeriod is how long Discover waits, once every watched service has
// answered, for anything more before it returns. Each service's blocking
// query answers once and then waits for a change, so on a catalog that
// holds still nothing comes; the window only catches a change that was
// under way.
const QuietPeriod = 200 * time.Millisecond

// Discover runs Prometheus's Consul SD for block, one entry of
// consul_sd_configs in YAML (for example "server: 127.0.0.1:8500\ntags:
// [prod]"), and returns every target it discovered, each with its group's
// labels merged in, sorted (see Targets). Empty labels are kept, as
// Prometheus's SD sends them.
//
// It has settled when it has sent a group for every source it will watch
// (see watchedSources) and then nothing for QuietPeriod. The Discovery
// retries failed requests by itself, forever: ctx bounds the wait, and
// when it ends first the error names the services that never answered.
func Discover(ctx context.Context, block string) ([]model.LabelSet, error) {
	var conf consul.SDConfig
	// Strict, as Prometheus loads its configuration: a misspelt field is an
	// error rather than a default.
	if err := yaml.UnmarshalStrict([]byte(block), &conf); err != nil {
		return nil, fmt.Errorf("consul_sd_configs entry: %w", err)
	}
	reg := prometheus.NewRegistry() // one per run: the metrics register once per registry
	metrics := conf.NewDiscovererMetrics(reg, discovery.NewRefreshMetrics(reg))
	d, err := consul.NewDiscovery(&conf, promslog.NewNopLogger(), metrics)
	if err != nil {
		return nil, err
	}
	want, err := watchedSources(ctx, &conf)
	if err != nil {
		return nil, err
	}

	ctx, cancel := context.WithCancel(ctx)
	// Not waited for: the Discovery checks ctx only between its sleeps
	// (the catalog watch sleeps out its refresh interval), but every send
	// of it also selects on ctx, so once cancelled it ends by itself.
	defer cancel()
	ch := make(chan []*targetgroup.Group)
	go d.Run(ctx, ch)

	latest := map[string]*targetgroup.Group{} // by source: a group replaces the one before
	quiet := time.NewTimer(time.Hour)
	quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("the Consul SD did not settle: no group yet for %q: %w", missing(want, latest), ctx.Err())
		case update := <-ch:
			for _, g := range update {
				if g != nil {
					latest[g.Source] = g
				}
			}
			if len(missing(want, latest)) == 0 {
				quiet.Reset(QuietPeriod)
			}
		case <-quiet.C:
			return Targets(slices.Collect(maps.Values(latest))), nil
		}
	}
}

// watchedSources returns the sources of the groups the Discovery of conf
// sends once it has read everything, following its Run:
//   - with services and neither tags nor filter, exactly those services:
//     it queries each by name without looking at the catalog, and sends a
//     group even for one that does not exist;
//   - else the catalog's services (read with the entry's node_meta, filter
//     and allow_stale, as it reads them) that it selects by name and by
//     their tags (shouldWatch in discovery/consul);
//   - and when that selects none, the one empty group of source "" it
//     sends then.
//
// The catalog is read here once, so a catalog that changes meanwhile can
// make the two disagree: Discover then waits until ctx ends and says for
// which sources.
func watchedSources(ctx context.Context, conf *consul.SDConfig) ([]string, error) {
	if len(conf.Services) > 0 && len(conf.ServiceTags) == 0 && conf.Filter == "" {
		return conf.Services, nil
	}
	client, err := newClient(conf)
	if err != nil {
		return nil, err
	}
	opts := &consulapi.QueryOptions{AllowStale: conf.AllowStale, NodeMeta: conf.NodeMeta, Filter: conf.Filter}
	services, _, err := client.Catalog().Services(opts.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("listing the catalog's services: %w", err)
	}
	var sources []string
	for name, tags := range services {
		if (len(conf.Services) == 0 || slices.Contains(conf.Services, name)) &&
			!slices.ContainsFunc(conf.ServiceTags, func(t string) bool { return !slices.Contains(tags, t) }) {
			sources = append(sources, name)
		}
	}
	if len(sources) == 0 {
		return []string{""}, nil
	}
	slices.Sort(sources)
	return sources, nil
}

// newClient returns a Consul client with the connection settings of conf,
// built as NewDiscovery in discovery/consul builds its own.
func newClient(conf *consul.SDConfig) (*consulapi.Client, error) {
	httpClient, err := config.NewClientFromConfig(conf.HTTPClientConfig, "promconsul")
	if err != nil {
		return nil, err
	}
	return consulapi.NewClient(&consulapi.Config{
		Address:    conf.Server,
		PathPrefix: conf.PathPrefix,
		Scheme:     conf.Scheme,
		Datacenter: conf.Datacenter,
		Namespace:  conf.Namespace,
		Partition:  conf.Partition,
		Token:      string(conf.Token),
		HttpClient: httpClient,
	})
}

// missing returns the sources of want that have no group in latest.
func missing(want []string, latest map[string]*targetgroup.Group) []string {
	return slices.DeleteFunc(slices.Clone(want), func(s string) bool {
		_, ok := latest[s]
		return ok
	})
}

// Targets returns every target of groups with its group's labels merged
// in, as Prometheus's scrape manager merges them: a label of the target
// wins over its group's. Empty values are kept. The result is sorted by
// the label sets' text, so the same groups always give the same list.
func Targets(groups []*targetgroup.Group) []model.LabelSet {
	var targets []model.LabelSet
	for _, g := range groups {
		if g == nil {
			continue
		}
		for _, t := range g.Targets {
			targets = append(targets, g.Labels.Merge(t))
		}
	}
	slices.SortFunc(targets, func(a, b model.LabelSet) int { return strings.Compare(a.String(), b.String()) })
	return targets
}
