package sdconfig

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"sync"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/discovery"
	"github.com/prometheus/prometheus/discovery/consul"
	"github.com/prometheus/prometheus/discovery/targetgroup"

	"github.com/consul-sd-adapter/consul-sd-adapter/adapter"
	"github.com/consul-sd-adapter/consul-sd-adapter/consulsd"
)

// AllDatacenters as a block's datacenter discovers every datacenter the
// agent knows, each on its own.
const AllDatacenters = "*"

// Env is what every block's discoverer in the process shares: the
// settings of the flags, the logger, the registry, the transports. There
// is one per process; blocks built with it compare equal across reloads
// when unchanged, so the discovery Manager keeps their discoverers.
type Env struct {
	Base       consulsd.Config
	Logger     log.Logger
	Registerer prometheus.Registerer

	transports Transports
	mu         sync.Mutex
	running    map[runKey]*consulsd.Discovery
}

// BlockKey names a block by its entry and its place in the entry.
type BlockKey struct {
	Entry string
	Index int
}

// runKey names a running discoverer: a block's, or for a block of every
// datacenter, that of one datacenter.
type runKey struct {
	BlockKey
	datacenter string
}

// NewEnv returns an Env. Every block takes its requests in flight from one
// bound of base.MaxConcurrency, and blocks that read the same catalog share
// the node dump that locates its changes.
func NewEnv(base consulsd.Config, logger log.Logger, reg prometheus.Registerer) *Env {
	base.InFlight = consulsd.NewInFlight(base.MaxConcurrency)
	base.Dumps = consulsd.NewDumps()
	return &Env{Base: base, Logger: logger, Registerer: reg, running: map[runKey]*consulsd.Discovery{}}
}

// Sets returns the discovery configs of every entry, by entry name, for
// the discovery Manager.
func (env *Env) Sets(cfg *Config) map[string]discovery.Configs {
	sets := make(map[string]discovery.Configs, len(cfg.Entries))
	keys := map[BlockKey]bool{}
	for _, e := range cfg.Entries {
		for i, b := range e.Blocks {
			sets[e.Name] = append(sets[e.Name], &blockConfig{key: BlockKey{e.Name, i}, block: b, env: env})
			keys[BlockKey{e.Name, i}] = true
		}
	}
	env.mu.Lock()
	maps.DeleteFunc(env.running, func(k runKey, d *consulsd.Discovery) bool {
		if keys[k.BlockKey] {
			return false
		}
		d.Unregister() // its series would stay, frozen, and alert
		return true
	})
	env.mu.Unlock()
	return sets
}

// Check builds every block's discoverer without starting it, so that what
// only shows then (a TLS file that cannot be read, an address no request
// could go to) is found before the configuration is used.
func (env *Env) Check(cfg *Config) error {
	for _, e := range cfg.Entries {
		for i, b := range e.Blocks {
			if _, err := env.newDiscovery(runKey{BlockKey: BlockKey{e.Name, i}}, b, prometheus.NewRegistry()); err != nil {
				return err
			}
		}
	}
	return nil
}

// Once runs one round of a block and returns its targets (for --once).
// A block of every datacenter runs one round in each.
func (env *Env) Once(ctx context.Context, key BlockKey, b *consul.SDConfig) ([]*targetgroup.Group, error) {
	dcs := []string{""}
	if b.Datacenter == AllDatacenters {
		var err error
		if dcs, err = env.datacenters(key, b); err != nil {
			return nil, err
		}
	}
	var all []*targetgroup.Group
	for _, dc := range dcs {
		d, err := env.start(runKey{key, dc}, b)
		if err != nil {
			return nil, err
		}
		groups, err := d.Refresh(ctx)
		if err != nil {
			return nil, fmt.Errorf("consul_sd_configs[%d]%s: %w", key.Index, inDatacenter(dc), err)
		}
		all = append(all, withDatacenter(dc, groups)...)
	}
	return all, nil
}

// datacenters lists the datacenters the block's agent knows of.
func (env *Env) datacenters(key BlockKey, b *consul.SDConfig) ([]string, error) {
	cfg, err := env.discoveryConfig(runKey{BlockKey: key}, b)
	if err != nil {
		return nil, err
	}
	dcs, err := consulsd.Datacenters(cfg)
	if err != nil {
		return nil, fmt.Errorf("discovery_configs %q, consul_sd_configs[%d]: listing datacenters: %w", key.Entry, key.Index, err)
	}
	return dcs, nil
}

// start returns the Discovery of a block (or of one of its datacenters),
// its metrics registered with labels naming the block, and records it as
// running.
func (env *Env) start(key runKey, b *consul.SDConfig) (*consulsd.Discovery, error) {
	block := strconv.Itoa(key.Index)
	if key.datacenter != "" {
		block += "/" + key.datacenter
	}
	reg := prometheus.WrapRegistererWith(prometheus.Labels{"entry": key.Entry, "block": block}, env.Registerer)
	d, err := env.newDiscovery(key, b, reg)
	if err != nil {
		return nil, err
	}
	env.mu.Lock()
	env.running[key] = d
	env.mu.Unlock()
	return d, nil
}

// forget drops a discoverer that stopped from those running, unless
// another has taken its place.
func (env *Env) forget(key runKey, d *consulsd.Discovery) {
	env.mu.Lock()
	if env.running[key] == d {
		delete(env.running, key)
	}
	env.mu.Unlock()
}

// drop forgets a datacenter's discoverer gone from the agent's list, and
// its metrics: their series would stay, frozen, and alert.
func (env *Env) drop(key runKey, d *consulsd.Discovery) {
	d.Unregister()
	env.forget(key, d)
}

func (env *Env) discoveryConfig(key runKey, b *consul.SDConfig) (consulsd.Config, error) {
	cfg, err := DiscoveryConfig(b, env.Base, &env.transports)
	if cfg.Datacenter == AllDatacenters {
		cfg.Datacenter = key.datacenter // "" until listed: the agent's own
	}
	return cfg, err
}

func (env *Env) newDiscovery(key runKey, b *consul.SDConfig, reg prometheus.Registerer) (*consulsd.Discovery, error) {
	cfg, err := env.discoveryConfig(key, b)
	if err == nil {
		var d *consulsd.Discovery
		logger := log.With(env.Logger, "entry", key.Entry, "block", key.Index)
		if key.datacenter != "" {
			logger = log.With(logger, "datacenter", key.datacenter)
		}
		if d, err = consulsd.New(cfg, logger, reg); err == nil {
			return d, nil
		}
	}
	return nil, fmt.Errorf("discovery_configs %q, consul_sd_configs[%d]: %w", key.Entry, key.Index, err)
}

// Statuses returns the status of every running discoverer of an entry.
func (env *Env) Statuses(entry string) []consulsd.Status {
	env.mu.Lock()
	defer env.mu.Unlock()
	var statuses []consulsd.Status
	for k, d := range env.running {
		if k.Entry == entry {
			statuses = append(statuses, d.Status())
		}
	}
	return statuses
}

// blockConfig is a block as a discovery config. Two are deeply equal when
// the block and its place are: a reload keeps the discoverer.
type blockConfig struct {
	key   BlockKey
	block *consul.SDConfig
	env   *Env
}

func (*blockConfig) Name() string { return "consul_sd_adapter" }

func (c *blockConfig) NewDiscoverer(discovery.DiscovererOptions) (discovery.Discoverer, error) {
	if c.block.Datacenter == AllDatacenters {
		return &datacenters{env: c.env, key: c.key, block: c.block}, nil
	}
	return c.env.start(runKey{BlockKey: c.key}, c.block)
}

func (*blockConfig) NewDiscovererMetrics(prometheus.Registerer, discovery.RefreshMetricsInstantiator) discovery.DiscovererMetrics {
	return adapter.NoMetrics{}
}
