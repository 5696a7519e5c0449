package main

import (
	"bytes"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

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

// readmeBlock returns the fenced block that follows the line
// <!-- check: name --> in README.md.
func readmeBlock(t *testing.T, name string) string {
	t.Helper()
	readme, err := os.ReadFile(repo.Path(t.Fatal, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(readme), "<!-- check: "+name+" -->\n```")
	if !ok {
		t.Fatalf("README.md has no fenced block after <!-- check: %s -->", name)
	}
	_, body, _ := strings.Cut(after, "\n") // the fence's language
	body, _, ok = strings.Cut(body, "```")
	if !ok {
		t.Fatalf("README.md: the block after <!-- check: %s --> does not end", name)
	}
	return body
}

// promJob is a scrape config of Prometheus: its service discovery, and
// the rest as it is.
type promJob struct {
	Name   string           `yaml:"job_name,omitempty"`
	Consul []map[string]any `yaml:"consul_sd_configs,omitempty"`
	FileSD []map[string]any `yaml:"file_sd_configs,omitempty"`
	HTTPSD []map[string]any `yaml:"http_sd_configs,omitempty"`
	Rest   map[string]any   `yaml:",inline"`
}

type promConfig struct {
	ScrapeConfigs []promJob `yaml:"scrape_configs"`
}

func decodeYAML(t *testing.T, what, text string, v any) {
	t.Helper()
	dec := yaml.NewDecoder(strings.NewReader(text))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v\n%s", what, err, text)
	}
}

// promtoolCheck runs promtool check config on cfg, written as
// prometheus.yml into dir, and fails the test on an error or a warning.
func promtoolCheck(t *testing.T, dir string, cfg promConfig) {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: run make test (it installs prometheus)")
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(promtool, "check", "config", "prometheus.yml")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || bytes.Contains(out, []byte("WARNING")) {
		t.Errorf("promtool check config: %v\n%s\n%s", err, out, data)
	}
}

// TestReadmeMigration checks the README's migration from consul_sd_configs:
// the adapter takes the job's blocks unchanged, its configuration passes
// --config.check, and the job with file_sd_configs or http_sd_configs in
// place of consul_sd_configs (everything else kept) passes promtool and
// reads what the adapter writes. Debian's promtool has no Consul SD, so
// the job as it was is checked through the adapter, whose parser for the
// blocks is Prometheus's.
func TestReadmeMigration(t *testing.T) {
	var before promConfig
	decodeYAML(t, "migration-prometheus", readmeBlock(t, "migration-prometheus"), &before)
	var adapterCfg struct {
		Entries []struct {
			Name   string
			File   string
			Blocks []map[string]any `yaml:"consul_sd_configs"`
		} `yaml:"discovery_configs"`
	}
	text := readmeBlock(t, "migration-adapter")
	decodeYAML(t, "migration-adapter", text, &adapterCfg)
	// Side by side with prometheus.yml, as the README has them.
	dir := t.TempDir()
	cfg := checkConfigFile(t, writeConfig(t, dir, text))
	if len(before.ScrapeConfigs) != 1 || len(adapterCfg.Entries) != 1 {
		t.Fatalf("want one job and one entry, got %d and %d", len(before.ScrapeConfigs), len(adapterCfg.Entries))
	}
	job, entry := before.ScrapeConfigs[0], adapterCfg.Entries[0]
	if entry.Name != job.Name {
		t.Errorf("entry %q is not named after job %q", entry.Name, job.Name)
	}
	if len(job.Consul) == 0 || !reflect.DeepEqual(job.Consul, entry.Blocks) {
		t.Errorf("the entry's blocks are not the job's, unchanged:\n%v\n%v", job.Consul, entry.Blocks)
	}
	// promtool warns about a file_sd file that is not there.
	if err := os.WriteFile(cfg.Entries[0].File, []byte("[]\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, name := range []string{"migration-file-sd", "migration-http-sd"} {
		t.Run(name, func(t *testing.T) {
			var sd promJob
			decodeYAML(t, name, readmeBlock(t, name), &sd)
			if sd.Name != "" || sd.Consul != nil || len(sd.Rest) > 0 || len(sd.FileSD)+len(sd.HTTPSD) != 1 {
				t.Fatalf("want one file_sd_configs or http_sd_configs entry and nothing else, got %+v", sd)
			}
			for _, f := range sd.FileSD {
				if files, _ := f["files"].([]any); len(files) != 1 || filepath.Join(dir, fmt.Sprint(files[0])) != cfg.Entries[0].File {
					t.Errorf("file_sd_configs reads %v, the adapter writes %s", f["files"], cfg.Entries[0].File)
				}
			}
			for _, h := range sd.HTTPSD {
				if u, err := url.Parse(fmt.Sprint(h["url"])); err != nil || u.Path != httpSDPath+"/"+entry.Name {
					t.Errorf("http_sd_configs fetches %v, the adapter serves the entry at %s/%s", h["url"], httpSDPath, entry.Name)
				}
			}
			after := job
			after.Consul, after.FileSD, after.HTTPSD = nil, sd.FileSD, sd.HTTPSD
			promtoolCheck(t, dir, promConfig{ScrapeConfigs: []promJob{after}})
		})
	}
}
