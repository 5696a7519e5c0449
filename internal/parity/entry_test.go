package parity

import (
	"reflect"
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

// adapterArgs returns the arguments that make the adapter discover what
// block, a whole consul_sd_configs entry, selects. The adapter takes only
// flags so far; once it reads the entry itself, this is the one function
// to replace (write block to a file, return --config.file).
//
// Every field is mapped with Prometheus's defaults applied, so that a
// default the adapter does not share shows as a difference. A field with
// no flag fails the test: compared with it ignored, the adapter would be
// held to a selection it was never given.
func adapterArgs(t *testing.T, block string) []string {
	t.Helper()
	conf := parseEntry(t, block)
	args := []string{"--listen.address=" + conf.Server, "--consul.tag-separator=" + conf.TagSeparator}
	if conf.AllowStale {
		args = append(args, "--consul.allow-stale")
	} else {
		args = append(args, "--no-consul.allow-stale")
	}
	for _, s := range conf.Services {
		args = append(args, "--consul.service="+s)
	}
	for _, tag := range conf.ServiceTags {
		args = append(args, "--consul.tag="+tag)
	}
	// Both apply to each service's /v1/health/service query.
	if conf.HealthFilter != "" {
		args = append(args, "--consul.filter="+conf.HealthFilter)
	}
	if conf.Datacenter != "" {
		args = append(args, "--consul.datacenter="+conf.Datacenter)
	}

	rest, def := conf, consul.DefaultSDConfig
	rest.Server, rest.TagSeparator, rest.AllowStale = def.Server, def.TagSeparator, def.AllowStale
	rest.Services, rest.ServiceTags, rest.HealthFilter, rest.Datacenter = nil, nil, "", ""
	if !reflect.DeepEqual(rest, def) {
		t.Fatalf("consul_sd_configs entry %q sets fields the adapter has no flag for", block)
	}
	return args
}
