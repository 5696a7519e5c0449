package sdconfig

import (
	"maps"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/consul-sd-adapter/consul-sd-adapter/consulsd"
)

// TestDiscoveryConfig: every selecting and connecting option of a block
// reaches the Discovery's configuration, and the flags' settings stay.
func TestDiscoveryConfig(t *testing.T) {
	cfg, err := Parse([]byte(`discovery_configs:
  - name: web
    file: out/web.json
    consul_sd_configs:
      - server: consul.example:8501
        scheme: https
        path_prefix: /consul
        token: secret
        datacenter: dc2
        namespace: team
        partition: part
        allow_stale: false
        refresh_interval: 7s
        services: [web, api]
        tags: [prod]
        node_meta: {rack: r1}
        filter: 'ServiceTags contains "prod"'
        health_filter: 'Service.Meta.env == "prod"'
        tag_separator: ";"
        enable_http2: false
`), "/etc/adapter")
	if err != nil {
		t.Fatal(err)
	}
	e := cfg.Entries[0]
	if want := filepath.FromSlash("/etc/adapter/out/web.json"); e.File != want {
		t.Errorf("file %q, want %q: relative to the configuration's directory", e.File, want)
	}
	base := consulsd.DefaultConfig
	base.RequestTimeout, base.WatchMode = 3*time.Second, consulsd.WatchAuto
	got, err := DiscoveryConfig(e.Blocks[0], base, &Transports{})
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"address", got.Address, "consul.example:8501"},
		{"scheme", got.Scheme, "https"},
		{"path prefix", got.PathPrefix, "/consul"},
		{"token", got.Token, "secret"},
		{"datacenter", got.Datacenter, "dc2"},
		{"namespace", got.Namespace, "team"},
		{"partition", got.Partition, "part"},
		{"allow stale", got.AllowStale, false},
		{"refresh interval", got.RefreshInterval, 7 * time.Second},
		{"services", slices.Equal(got.Services, []string{"web", "api"}), true},
		{"tags", slices.Equal(got.Tags, []string{"prod"}), true},
		{"node meta", maps.Equal(got.NodeMeta, map[string]string{"rack": "r1"}), true},
		{"catalog filter", got.CatalogFilter, `ServiceTags contains "prod"`},
		{"health filter", got.Filter, `Service.Meta.env == "prod"`},
		{"tag separator", got.TagSeparator, ";"},
		{"environment as Prometheus reads it", got.PrometheusEnvironment, true},
		{"a transport", got.Transport != nil && got.WatchTransport != nil, true},
		{"the tables watch without HTTP/2", got.WatchMode, consulsd.WatchTables},
		{"the flags' request timeout", got.RequestTimeout, 3 * time.Second},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.name, c.got, c.want)
		}
	}
}

// TestTransportsShared: blocks with the same HTTP client settings share
// their transports (connections); other settings get their own.
func TestTransportsShared(t *testing.T) {
	cfg, err := Parse([]byte(`discovery_configs:
  - name: a
    file: a.json
    consul_sd_configs: [{services: [a]}, {services: [b], datacenter: dc2}, {basic_auth: {username: u, password: p}}]
`), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var tr Transports
	var keeps []any
	for _, b := range cfg.Entries[0].Blocks {
		c, err := DiscoveryConfig(b, consulsd.DefaultConfig, &tr)
		if err != nil {
			t.Fatal(err)
		}
		keeps = append(keeps, c.Transport)
	}
	if keeps[0] != keeps[1] {
		t.Error("two blocks with the same HTTP client settings got transports of their own")
	}
	if keeps[0] == keeps[2] {
		t.Error("a block with basic auth shares the transport of blocks without")
	}
}
