// Package sdconfig reads the configuration file: a list of entries, each an
// output file and the consul_sd_configs blocks whose targets it holds. The
// blocks are parsed by Prometheus's own Consul SD config type, so every
// option, default and validation error is Prometheus's, and a block pasted
// from a prometheus.yml works unchanged.
package sdconfig

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/prometheus/prometheus/discovery/consul"
	"go.yaml.in/yaml/v2"

	"github.com/consul-sd-adapter/consul-sd-adapter/adapter"
	"github.com/consul-sd-adapter/consul-sd-adapter/consulsd"
)

// namePattern is what an entry's name may hold: it is a URL path segment
// (/targets/<name>) and a label value.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Config is the configuration file.
type Config struct {
	Entries []*Entry `yaml:"discovery_configs"`
}

// Entry is one output: the file its targets are written to, and the blocks
// that discover them. Blocks for different datacenters merge into the file.
type Entry struct {
	Name   string             `yaml:"name"`
	File   string             `yaml:"file"`
	Blocks []*consul.SDConfig `yaml:"consul_sd_configs"`
}

// Load reads and checks a configuration file. Relative paths in it (output
// files, TLS files) are taken from the file's directory, as Prometheus
// does for its own.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	cfg, err := Parse(data, abs)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Parse parses and checks a configuration; relative paths are taken from dir.
func Parse(data []byte, dir string) (*Config, error) {
	cfg := &Config{}
	if err := yaml.UnmarshalStrict(data, cfg); err != nil {
		// The YAML parser puts each error on a line of its own: one line
		// reads better in a log and after "error:".
		return nil, errors.New(strings.Join(strings.Fields(err.Error()), " "))
	}
	if len(cfg.Entries) == 0 {
		return nil, errors.New("no discovery_configs: nothing to discover")
	}
	names, files := map[string]bool{}, map[string]string{}
	for i, e := range cfg.Entries {
		if e == nil {
			return nil, fmt.Errorf("discovery_configs[%d] is empty", i)
		}
		if !namePattern.MatchString(e.Name) {
			return nil, fmt.Errorf("discovery_configs[%d]: name %q: use letters, digits, _ and - only", i, e.Name)
		}
		if names[e.Name] {
			return nil, fmt.Errorf("discovery_configs: name %q is used twice", e.Name)
		}
		names[e.Name] = true
		if e.File == "" {
			return nil, fmt.Errorf("discovery_configs %q: no file to write", e.Name)
		}
		if !filepath.IsAbs(e.File) {
			e.File = filepath.Join(dir, e.File)
		}
		if _, err := adapter.FormatOf(e.File); err != nil {
			return nil, fmt.Errorf("discovery_configs %q: %w", e.Name, err)
		}
		if other, ok := files[e.File]; ok {
			return nil, fmt.Errorf("discovery_configs %q and %q write the same file %s", other, e.Name, e.File)
		}
		files[e.File] = e.Name
		if len(e.Blocks) == 0 {
			return nil, fmt.Errorf("discovery_configs %q: no consul_sd_configs", e.Name)
		}
		for j, b := range e.Blocks {
			if b == nil {
				return nil, fmt.Errorf("discovery_configs %q: consul_sd_configs[%d] is empty", e.Name, j)
			}
			b.SetDirectory(dir)
		}
	}
	return cfg, nil
}

// Blocks counts the consul_sd_configs blocks of every entry.
func (c *Config) Blocks() int {
	n := 0
	for _, e := range c.Entries {
		n += len(e.Blocks)
	}
	return n
}

// DiscoveryConfig returns the Discovery configuration of a block: what it
// selects and where Consul is from the block, the process-wide settings
// (timeouts, concurrency, watch) from base, the transports from t.
func DiscoveryConfig(b *consul.SDConfig, base consulsd.Config, t *Transports) (consulsd.Config, error) {
	var socket string
	if path, ok := strings.CutPrefix(b.Server, "unix://"); ok {
		socket = path
	}
	keep, fresh, err := t.get(b.HTTPClientConfig, socket)
	if err != nil {
		return consulsd.Config{}, err
	}
	cfg := base
	cfg.Address, cfg.Scheme, cfg.PathPrefix = b.Server, b.Scheme, b.PathPrefix
	cfg.Datacenter, cfg.Namespace, cfg.Partition = b.Datacenter, b.Namespace, b.Partition
	cfg.Token = string(b.Token)
	cfg.AllowStale = b.AllowStale
	cfg.RefreshInterval = time.Duration(b.RefreshInterval)
	cfg.Services, cfg.Tags, cfg.NodeMeta = b.Services, b.ServiceTags, b.NodeMeta
	cfg.CatalogFilter, cfg.Filter = b.Filter, b.HealthFilter
	cfg.CatalogFilterName, cfg.FilterName = "filter", "health_filter"
	cfg.TagSeparator = b.TagSeparator
	cfg.Transport, cfg.WatchTransport = keep, fresh
	cfg.PrometheusEnvironment = true
	cfg.NoRedirects = !b.HTTPClientConfig.FollowRedirects
	if !b.HTTPClientConfig.EnableHTTP2 && cfg.WatchMode == consulsd.WatchAuto {
		// Without HTTP/2 each parked per-service query would hold a
		// connection of its own.
		cfg.WatchMode = consulsd.WatchTables
	}
	return cfg, nil
}
