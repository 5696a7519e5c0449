package main

import (
	"fmt"
	"os"
	"path/filepath"

	promconsul "github.com/prometheus/prometheus/discovery/consul"
	"go.yaml.in/yaml/v2"

	"github.com/consul-sd-adapter/consul-sd-adapter/sdconfig"
)

// churnEntries is how many entries the configuration file of the churn's
// config-file observers has.
const churnEntries = 4

// splitFilters returns n catalog filters (Prometheus's `filter`, which
// Consul applies to /v1/catalog/services) that split the services between
// n entries by the last character of their name: runs of digits, and for
// the last entry every name that ends in none of the others' digits. Every
// name, the churn's new services too, matches exactly one of them. Consul
// 1.22 filters that endpoint by the fields of its service nodes, the
// service's name being ServiceName.
func splitFilters(n int) []string {
	var filters []string
	lo := 0
	for i := range n - 1 {
		hi := lo + (10-lo+n-i-1)/(n-i) // what is left, spread evenly
		filters = append(filters, fmt.Sprintf(`ServiceName matches "[%d-%d]$"`, lo, hi-1))
		lo = hi
	}
	last := ""
	if lo > 0 {
		last = fmt.Sprintf(`ServiceName not matches "[0-%d]$"`, lo-1)
	}
	return append(filters, last)
}

// writeSplitConfig writes dir/adapter.yml, a configuration file of n
// entries that split the catalog between them (splitFilters), each with one
// block made by block and writing a file of its own in dir. It returns the
// configuration file's path and the entries' files.
func writeSplitConfig(dir string, n int, block func() *promconsul.SDConfig) (string, []string, error) {
	var cfg sdconfig.Config
	var files []string
	for i, filter := range splitFilters(n) {
		b := block()
		b.Filter = filter
		name := fmt.Sprintf("part%d", i)
		files = append(files, filepath.Join(dir, name+".json"))
		cfg.Entries = append(cfg.Entries, &sdconfig.Entry{Name: name, File: files[i], Blocks: []*promconsul.SDConfig{b}})
	}
	data, err := yaml.Marshal(&cfg)
	if err != nil {
		return "", nil, err
	}
	path := filepath.Join(dir, "adapter.yml")
	return path, files, os.WriteFile(path, data, 0o644)
}
