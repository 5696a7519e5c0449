package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/repo"
	"github.com/consul-sd-adapter/consul-sd-adapter/sdconfig"
)

// checkConfigFile makes the output directories of the configuration at
// path, as whoever deploys it would, and fails the test unless
// --config.check accepts it without writing any output file.
func checkConfigFile(t *testing.T, path string) *sdconfig.Config {
	t.Helper()
	cfg, err := sdconfig.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range cfg.Entries {
		if err := os.MkdirAll(filepath.Dir(e.File), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	r := runBinary(t, nil, "--config.check", "--config.file="+path)
	if r.code != 0 || !strings.Contains(r.stdout, ": SUCCESS: ") {
		t.Fatalf("--config.check --config.file=%s: exit %d\n%s%s", path, r.code, r.stdout, r.stderr)
	}
	for _, e := range cfg.Entries {
		if _, err := os.Stat(e.File); err == nil {
			t.Errorf("--config.check wrote %s", e.File)
		}
	}
	return cfg
}

// TestExampleConfig checks examples/consul-sd-adapter.yml, then runs it
// against two federated datacenters: each entry must find what its
// comment says it does.
func TestExampleConfig(t *testing.T) {
	example, err := os.ReadFile(repo.Path(t.Fatal, "examples", "consul-sd-adapter.yml"))
	if err != nil {
		t.Fatal(err)
	}
	// A copy, so that the output directories next to it can be made.
	dir := t.TempDir()
	entries := checkConfigFile(t, writeConfig(t, dir, string(example))).Entries

	f := consultest.StartFederation(t)
	for _, inst := range []consultest.Instance{
		{Node: "pay-1", NodeAddress: "10.1.0.1", Service: "payments-api", Port: 8080},
		{Node: "pay-2", NodeAddress: "10.1.0.2", Service: "ledger", Port: 8080},
		{Node: "prod-1", NodeAddress: "10.1.0.3", NodeMeta: map[string]string{"env": "prod"}, Service: "search", Port: 9100, Tags: []string{"metrics"}},
		{Node: "prod-1", NodeAddress: "10.1.0.3", NodeMeta: map[string]string{"env": "prod"}, Service: "cache", Port: 6379},
		{Node: "dev-1", NodeAddress: "10.1.0.4", NodeMeta: map[string]string{"env": "dev"}, Service: "search", Port: 9100, Tags: []string{"metrics"}},
		{Node: "web-1", NodeAddress: "10.1.0.5", Service: "web", Port: 80, Meta: map[string]string{"team": "frontend", "env": "prod"}},
		{Node: "web-2", NodeAddress: "10.1.0.6", Service: "web", Port: 80, Meta: map[string]string{"team": "frontend", "env": "staging"}},
		{Node: "web-3", NodeAddress: "10.1.0.7", Service: "web", Port: 80, Meta: map[string]string{"team": "frontend", "env": "prod"}, Tags: []string{"canary"}},
		{Node: "api-1", NodeAddress: "10.1.0.8", Service: "api", Port: 80, Meta: map[string]string{"team": "backend", "env": "prod"}},
	} {
		f.DC1.RegisterInstance(t, inst)
	}
	f.DC2.RegisterInstance(t, consultest.Instance{Node: "pay-3", NodeAddress: "10.2.0.1", Service: "payments-api", Port: 8080})

	cfg := writeConfig(t, dir, strings.ReplaceAll(string(example), "localhost:8500", f.DC1.Addr))
	r := runBinary(t, nil, "--once", "--config.file="+cfg)
	if r.code != 0 {
		t.Fatalf("--once exited %d:\n%s", r.code, r.stderr)
	}
	want := map[string]string{
		"payments":     "10.1.0.1:8080,10.1.0.2:8080,10.2.0.1:8080",
		"prod-metrics": "10.1.0.3:9100",
		"frontend":     "10.1.0.5:80",
	}
	for _, e := range entries {
		w, ok := want[e.Name]
		if !ok {
			t.Errorf("the example's entry %s is new to this test: register what it should find", e.Name)
		} else if got := addresses(t, e.File); got != w {
			t.Errorf("entry %s wrote %s, want %s", e.Name, got, w)
		}
		delete(want, e.Name)
	}
	if len(want) > 0 {
		t.Errorf("entries missing from the example: %v", want)
	}
}
