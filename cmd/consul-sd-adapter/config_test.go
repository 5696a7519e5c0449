package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
)

// writeConfig writes a configuration file into dir.
func writeConfig(t *testing.T, dir, text string) string {
	t.Helper()
	path := filepath.Join(dir, "adapter.yml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// addresses returns the sorted addresses of a file_sd file, comma-joined.
func addresses(t *testing.T, path string) string {
	t.Helper()
	v, _, err := decodeFile(path)
	if err != nil {
		return "error: " + err.Error()
	}
	var addrs []string
	for _, details := range v {
		addrs = append(addrs, strings.Fields(details)[0])
	}
	slices.Sort(addrs)
	return strings.Join(addrs, ",")
}

// TestConfigFile runs entries of a configuration file against a real
// agent: each writes its own file and serves it at /targets/<name>, blocks
// of one entry merge, and a reload (POST /-/reload, SIGHUP) changes the
// entries without restarting the unchanged one's discoverer; a bad
// configuration is refused and the running one goes on.
func TestConfigFile(t *testing.T) {
	agent := consultest.Start(t)
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", Port: 80, Tags: []string{"prod"}})
	agent.RegisterInstance(t, consultest.Instance{Node: "n2", NodeAddress: "10.0.0.2", Service: "web", Port: 80})
	agent.RegisterInstance(t, consultest.Instance{Node: "n3", NodeAddress: "10.0.0.3", Service: "db", Port: 5432})
	dir := t.TempDir()
	webFile, mixFile, dbFile := filepath.Join(dir, "web.json"), filepath.Join(dir, "mix.json"), filepath.Join(dir, "db.json")
	steady := fmt.Sprintf(`
  - name: steady
    file: db.json
    consul_sd_configs:
      - server: %s
        services: [db]
        refresh_interval: 1h
`, agent.Addr)
	cfgPath := writeConfig(t, dir, fmt.Sprintf(`discovery_configs:
  - name: web
    file: web.json
    consul_sd_configs:
      - server: %[1]s
        services: [web]
        tags: [prod]
  - name: mix
    file: mix.json
    consul_sd_configs:
      - server: %[1]s
        services: [db]
      - server: %[1]s
        services: [web]
`, agent.Addr)+steady)
	d := startDaemon(t, nil, "--config.file="+cfgPath, "--web.enable-lifecycle")
	// Ready once every entry's file is written; a file can show a moment
	// before its entry counts as written.
	eventually(t, "every entry's file, and ready", func() bool {
		code, _ := d.get("/-/ready")
		return code == http.StatusOK && addresses(t, webFile) == "10.0.0.1:80" &&
			addresses(t, mixFile) == "10.0.0.1:80,10.0.0.2:80,10.0.0.3:5432" &&
			addresses(t, dbFile) == "10.0.0.3:5432"
	})
	if code, body := d.get("/targets/web"); code != 200 || !strings.Contains(body, "10.0.0.1:80") || strings.Contains(body, "10.0.0.2") {
		t.Errorf("/targets/web: %d %s", code, body)
	}
	if code, body := d.get("/targets/nope"); code != 404 || !strings.Contains(body, "mix, steady, web") {
		t.Errorf("/targets/nope: %d %s, want 404 naming the entries", code, body)
	}
	if code, body := d.get("/status/mix"); code != 200 || !strings.Contains(body, "10.0.0.3:5432") {
		t.Errorf("/status/mix: %d %s", code, body)
	}
	steadyLists := `consul_sd_adapter_consul_request_duration_seconds_count{block="0",code="200",endpoint="/v1/catalog/services",entry="steady"}`
	before := d.metric(steadyLists)
	if before < 1 {
		t.Fatalf("no service list counted for the steady entry: %v", before)
	}

	// A bad configuration is refused; the files stay as they were.
	writeConfig(t, dir, "discovery_configs:\n  - name: web\n    file: web.json\n    consul_sd_configs: [{server: ''}]\n")
	if code, body := post(t, d, "/-/reload"); code != 500 || !strings.Contains(body, "requires a server address") {
		t.Errorf("reload of a bad configuration: %d %s, want 500 with Prometheus's error", code, body)
	}
	if v := d.metric("consul_sd_adapter_config_last_reload_successful"); v != 0 {
		t.Errorf("config_last_reload_successful = %v after a failed reload, want 0", v)
	}

	// web takes another tag-less selection, mix goes, new comes; steady
	// is left as it was.
	writeConfig(t, dir, fmt.Sprintf(`discovery_configs:
  - name: web
    file: web.json
    consul_sd_configs:
      - server: %[1]s
        services: [web]
  - name: new
    file: new.json
    consul_sd_configs:
      - server: %[1]s
`, agent.Addr)+steady)
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the reloaded entries' files", func() bool {
		return addresses(t, webFile) == "10.0.0.1:80,10.0.0.2:80" &&
			addresses(t, filepath.Join(dir, "new.json")) == "10.0.0.1:80,10.0.0.2:80,10.0.0.3:5432"
	})
	if v := d.metric("consul_sd_adapter_config_last_reload_successful"); v != 1 {
		t.Errorf("config_last_reload_successful = %v after a reload, want 1", v)
	}
	if after := d.metric(steadyLists); after != before {
		t.Errorf("the unchanged entry listed services %v times after the reloads, was %v: its discoverer was restarted", after, before)
	}
	if got := addresses(t, mixFile); got != "10.0.0.1:80,10.0.0.2:80,10.0.0.3:5432" {
		t.Errorf("the removed entry's file changed: %s", got)
	}
	for _, series := range []string{
		`consul_sd_adapter_targets{block="0",entry="mix"}`, `consul_sd_adapter_file_writes_total{entry="mix"}`,
	} {
		if v := d.metric(series); v != -1 {
			t.Errorf("%s = %v after its entry was removed: the series stays, frozen", series, v)
		}
	}
	if v := d.metric(`consul_sd_adapter_targets{block="0",entry="web"}`); v != 2 {
		t.Errorf("the reloaded entry web counts %v targets, want 2", v)
	}
	if code, _ := d.get("/targets/mix"); code != 404 {
		t.Errorf("/targets/mix after its entry was removed: %d, want 404", code)
	}
}

func post(t *testing.T, d *daemon, path string) (int, string) {
	t.Helper()
	resp, err := http.Post("http://"+d.web+path, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestConfigOnce: --once runs every entry; an entry whose Consul cannot be
// reached is not written and makes the exit 1, the others are written.
func TestConfigOnce(t *testing.T) {
	agent := consultest.Start(t)
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", Port: 80})
	dir := t.TempDir()
	down := filepath.Join(dir, "down.json")
	if err := os.WriteFile(down, []byte("[]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, dir, fmt.Sprintf(`discovery_configs:
  - name: up
    file: up.json
    consul_sd_configs: [{server: %q}]
  - name: down
    file: down.json
    consul_sd_configs: [{server: %q}, {server: "127.0.0.1:1"}]
`, agent.Addr, agent.Addr))
	r := runBinary(t, nil, "--once", "--config.file="+cfg)
	if r.code != 1 {
		t.Errorf("exit %d, want 1: one entry failed\n%s", r.code, r.stderr)
	}
	if got := addresses(t, filepath.Join(dir, "up.json")); got != "10.0.0.1:80" {
		t.Errorf("the entry that succeeded wrote %q", got)
	}
	if data, _ := os.ReadFile(down); string(data) != "[]\n" {
		t.Errorf("the entry with a failed block was written: %q", data)
	}
	if !strings.Contains(r.stderr, `entry=down`) || !strings.Contains(r.stderr, "consul_sd_configs[1]") {
		t.Errorf("the failure does not name the entry and block:\n%s", r.stderr)
	}
}

// TestConfigBadInput: each bad configuration gets one line and exit 2, at
// start, and --config.check tells a good file from a bad one.
func TestConfigBadInput(t *testing.T) {
	dir := t.TempDir()
	entry := func(name, file, blocks string) string {
		return fmt.Sprintf("  - name: %s\n    file: %s\n    consul_sd_configs: %s\n", name, file, blocks)
	}
	good := "discovery_configs:\n" + entry("web", "web.json", "[{server: '127.0.0.1:1', services: [web]}]")
	tests := []struct {
		name, config string
		args         []string
		want         string
	}{
		{"with a discovery flag", good, []string{"--listen.address=127.0.0.1:1"}, "--config.file and --listen.address"},
		{"missing file", "", nil, "no such file"},
		{"no entries", "discovery_configs: []\n", nil, "no discovery_configs"},
		{"unknown field", "discovery_configs:\n" + entry("web", "web.json", "[{server: x, service: [web]}]"), nil, "field service not found"},
		{"Prometheus's validation", "discovery_configs:\n" + entry("web", "web.json", "[{server: x, token: t, authorization: {credentials: c}}]"), nil, "at most one of consul SD token"},
		{"bad name", "discovery_configs:\n" + entry("a/b", "web.json", "[{}]"), nil, `name "a/b"`},
		{"name twice", good + entry("web", "other.json", "[{}]"), nil, `name "web" is used twice`},
		{"file twice", good + entry("other", "web.json", "[{}]"), nil, "write the same file"},
		{"bad extension", "discovery_configs:\n" + entry("web", "web.txt", "[{}]"), nil, "must end in .json"},
		{"no blocks", "discovery_configs:\n" + entry("web", "web.json", "[]"), nil, "no consul_sd_configs"},
		{"missing TLS file", "discovery_configs:\n" + entry("web", "web.json", "[{tls_config: {ca_file: nope.pem}}]"), nil, "nope.pem"},
		{"bad address", "discovery_configs:\n" + entry("web", "web.json", "[{server: 'http://[bad'}]"), nil, "invalid Consul address"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sub := t.TempDir()
			cfg := filepath.Join(sub, "missing.yml")
			if tc.config != "" {
				cfg = writeConfig(t, sub, tc.config)
			}
			for _, mode := range [][]string{{"--once"}, {"--config.check"}} {
				r := runBinary(t, nil, append(append(mode, "--config.file="+cfg), tc.args...)...)
				stderr := strings.TrimSpace(r.stderr)
				if r.code != 2 || strings.Contains(stderr, "\n") || !strings.Contains(stderr, tc.want) {
					t.Errorf("%s: exit %d, stderr %q; want 2 and one line containing %q", mode[0], r.code, stderr, tc.want)
				}
				if _, err := os.Stat(filepath.Join(sub, "web.json")); err == nil {
					t.Errorf("%s: a bad configuration wrote a file", mode[0])
				}
			}
		})
	}

	cfg := writeConfig(t, dir, good)
	r := runBinary(t, nil, "--config.check", "--config.file="+cfg)
	if r.code != 0 || !strings.Contains(r.stdout, "SUCCESS: 1 entries, 1 consul_sd_configs blocks") {
		t.Errorf("--config.check of a good file: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "web.json")); err == nil {
		t.Error("--config.check wrote the output file")
	}
}

// TestConfigEnvironment: a block reads Consul's environment as
// Prometheus's Consul SD does: its own token wins over
// $CONSUL_HTTP_TOKEN_FILE, and a block without a token takes
// $CONSUL_HTTP_TOKEN.
func TestConfigEnvironment(t *testing.T) {
	agent := consultest.Start(t, consultest.WithACL(managementToken))
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", Port: 80})
	dir := t.TempDir()
	wrong := filepath.Join(dir, "wrong-token")
	if err := os.WriteFile(wrong, []byte("00000000-0000-4000-8000-00000000dead\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, dir, fmt.Sprintf(`discovery_configs:
  - name: web
    file: web.json
    consul_sd_configs: [{server: %q, token: %q, services: [web]}]
`, agent.Addr, managementToken))
	r := runBinary(t, []string{"CONSUL_HTTP_TOKEN_FILE=" + wrong}, "--once", "--config.file="+cfg)
	if r.code != 0 || addresses(t, filepath.Join(dir, "web.json")) != "10.0.0.1:80" {
		t.Errorf("the block's token lost to the environment: exit %d\n%s", r.code, r.stderr)
	}

	cfg = writeConfig(t, dir, fmt.Sprintf(`discovery_configs:
  - name: env
    file: env.json
    consul_sd_configs: [{server: %q, services: [web]}]
`, agent.Addr))
	r = runBinary(t, []string{"CONSUL_HTTP_TOKEN=" + managementToken}, "--once", "--config.file="+cfg)
	if r.code != 0 || addresses(t, filepath.Join(dir, "env.json")) != "10.0.0.1:80" {
		t.Errorf("a block without a token did not take $CONSUL_HTTP_TOKEN: exit %d\n%s", r.code, r.stderr)
	}
}
