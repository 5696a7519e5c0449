package parity

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/prometheus/discovery/consul"
	"go.yaml.in/yaml/v2"
)

// parseEntry parses a consul_sd_configs entry as Prometheus does: strictly,
// through SDConfig's own UnmarshalYAML (its defaults and validation).
func parseEntry(t *testing.T, block string) consul.SDConfig {
	t.Helper()
	var conf consul.SDConfig
	if err := yaml.UnmarshalStrict([]byte(block), &conf); err != nil {
		t.Fatalf("consul_sd_configs entry %q: %v", block, err)
	}
	return conf
}

// withServer returns block with server set to addr. The cases leave the
// server out, because the agent's address is only known at run time; the
// result is the whole entry both sides are given.
func withServer(t *testing.T, block, addr string) string {
	t.Helper()
	var entry yaml.MapSlice
	if err := yaml.Unmarshal([]byte(block), &entry); err != nil {
		t.Fatalf("consul_sd_configs entry %q: %v", block, err)
	}
	for _, item := range entry {
		if item.Key == "server" {
			t.Fatalf("consul_sd_configs entry %q: the test sets the server", block)
		}
	}
	out, err := yaml.Marshal(append(yaml.MapSlice{{Key: "server", Value: addr}}, entry...))
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// adapterConfig writes the adapter's configuration file for block, a
// whole consul_sd_configs entry, next to out, the file to write, and
// returns its path. The block goes in as it is: the adapter parses the
// same text Prometheus parsed.
func adapterConfig(t *testing.T, block, out string) string {
	t.Helper()
	var entry yaml.MapSlice
	if err := yaml.Unmarshal([]byte(block), &entry); err != nil {
		t.Fatalf("consul_sd_configs entry %q: %v", block, err)
	}
	cfg := yaml.MapSlice{{Key: "discovery_configs", Value: []yaml.MapSlice{{
		{Key: "name", Value: "parity"}, {Key: "file", Value: out}, {Key: "consul_sd_configs", Value: []yaml.MapSlice{entry}},
	}}}}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(filepath.Dir(out), "adapter.yml")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
