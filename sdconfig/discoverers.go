package sdconfig

import (
	"fmt"
	"maps"
	"strconv"
	"sync"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/discovery"
	"github.com/prometheus/prometheus/discovery/consul"

	"github.com/consul-sd-adapter/consul-sd-adapter/adapter"
	"github.com/consul-sd-adapter/consul-sd-adapter/consulsd"
)

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
	running    map[BlockKey]*consulsd.Discovery
}

// BlockKey names a block by its entry and its place in the entry.
type BlockKey struct {
	Entry string
	Index int
}

// NewEnv returns an Env.
func NewEnv(base consulsd.Config, logger log.Logger, reg prometheus.Registerer) *Env {
	return &Env{Base: base, Logger: logger, Registerer: reg, running: map[BlockKey]*consulsd.Discovery{}}
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
	maps.DeleteFunc(env.running, func(k BlockKey, _ *consulsd.Discovery) bool { return !keys[k] })
	env.mu.Unlock()
	return sets
}

// Check builds every block's discoverer without starting it, so that what
// only shows then (a TLS file that cannot be read, an address no request
// could go to) is found before the configuration is used.
func (env *Env) Check(cfg *Config) error {
	for _, e := range cfg.Entries {
		for i, b := range e.Blocks {
			if _, err := env.newDiscovery(BlockKey{e.Name, i}, b, prometheus.NewRegistry()); err != nil {
				return err
			}
		}
	}
	return nil
}

// New returns the Discovery of one block, its metrics registered with
// labels naming the block, and without the Manager (for --once).
func (env *Env) New(key BlockKey, b *consul.SDConfig) (*consulsd.Discovery, error) {
	return env.newDiscovery(key, b, env.blockRegisterer(key))
}

func (env *Env) blockRegisterer(key BlockKey) prometheus.Registerer {
	return prometheus.WrapRegistererWith(prometheus.Labels{"entry": key.Entry, "block": strconv.Itoa(key.Index)}, env.Registerer)
}

func (env *Env) newDiscovery(key BlockKey, b *consul.SDConfig, reg prometheus.Registerer) (*consulsd.Discovery, error) {
	cfg, err := DiscoveryConfig(b, env.Base, &env.transports)
	if err == nil {
		var d *consulsd.Discovery
		if d, err = consulsd.New(cfg, log.With(env.Logger, "entry", key.Entry, "block", key.Index), reg); err == nil {
			return d, nil
		}
	}
	return nil, fmt.Errorf("discovery_configs %q, consul_sd_configs[%d]: %w", key.Entry, key.Index, err)
}

// Running returns the discoverers the Manager runs, by block.
func (env *Env) Running() map[BlockKey]*consulsd.Discovery {
	env.mu.Lock()
	defer env.mu.Unlock()
	return maps.Clone(env.running)
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
	d, err := c.env.New(c.key, c.block)
	if err != nil {
		return nil, err
	}
	c.env.mu.Lock()
	c.env.running[c.key] = d
	c.env.mu.Unlock()
	return d, nil
}

func (*blockConfig) NewDiscovererMetrics(prometheus.Registerer, discovery.RefreshMetricsInstantiator) discovery.DiscovererMetrics {
	return adapter.NoMetrics{}
}
