package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/faultproxy"
)

// TestConfigDatacenters runs two real datacenters federated over the WAN:
// blocks for dc1 and dc2 merge into one file, and so does a block of every
// datacenter ("*"). With dc2 down, its targets stay and dc1's changes go
// on; once it is back, its changes reach the files again.
func TestConfigDatacenters(t *testing.T) {
	fed := consultest.StartFederation(t)
	inst := func(node, addr string) consultest.Instance {
		return consultest.Instance{Node: node, NodeAddress: addr, Service: "web", Port: 80}
	}
	fed.DC1.RegisterInstance(t, inst("a1", "10.1.0.1"))
	fed.DC2.RegisterInstance(t, inst("b1", "10.2.0.1"))
	dir := t.TempDir()
	cfg := writeConfig(t, dir, fmt.Sprintf(`discovery_configs:
  - name: both
    file: both.json
    consul_sd_configs:
      - {server: %[1]q, datacenter: dc1, services: [web], refresh_interval: 2s}
      - {server: %[1]q, datacenter: dc2, services: [web], refresh_interval: 2s}
  - name: every
    file: every.json
    consul_sd_configs:
      - {server: %[1]q, datacenter: "*", services: [web], refresh_interval: 1s}
`, fed.DC1.Addr))
	files := []string{filepath.Join(dir, "both.json"), filepath.Join(dir, "every.json")}
	waitAll := func(what, want string) {
		t.Helper()
		eventually(t, what, func() bool {
			for _, f := range files {
				if addresses(t, f) != want {
					return false
				}
			}
			return true
		})
	}

	r := runBinary(t, nil, "--once", "--config.file="+cfg)
	if r.code != 0 {
		t.Fatalf("--once: exit %d\n%s", r.code, r.stderr)
	}
	for _, f := range files {
		if got := addresses(t, f); got != "10.1.0.1:80,10.2.0.1:80" {
			t.Errorf("--once wrote %s to %s, want both datacenters'", got, f)
		}
		if v, _, _ := decodeFile(f); len(v) != 2 {
			t.Errorf("%s: %v", f, v)
		}
	}
	for _, f := range files {
		data := string(mustRead(t, f))
		if !strings.Contains(data, `"__meta_consul_dc":"dc1"`) || !strings.Contains(data, `"__meta_consul_dc":"dc2"`) {
			t.Fatalf("%s lacks a datacenter label:\n%s", f, data)
		}
	}

	for _, f := range files { // so that what the daemon writes shows
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	d := startDaemon(t, nil, "--config.file="+cfg)
	waitAll("both datacenters in both files", "10.1.0.1:80,10.2.0.1:80")
	if code, _ := post(t, d, "/-/reload"); code != http.StatusForbidden {
		t.Errorf("POST /-/reload without --web.enable-lifecycle: %d, want 403", code)
	}

	fed.DC2.Stop()
	fed.DC1.RegisterInstance(t, inst("a2", "10.1.0.2"))
	waitAll("dc1's change with dc2 down, dc2's targets kept", "10.1.0.1:80,10.1.0.2:80,10.2.0.1:80")

	if err := fed.DC2.Start(); err != nil {
		t.Fatal(err)
	}
	fed.DC2.RegisterInstance(t, inst("b2", "10.2.0.2"))
	waitAll("dc2's change once it is back", "10.1.0.1:80,10.1.0.2:80,10.2.0.1:80,10.2.0.2:80")
}

// TestConfigDatacentersComeAndGo: a block of every datacenter follows the
// agent's list as it changes. The proxy in front of the agent first lists
// dc1 alone, then both, then dc2 alone: dc2's targets join the file, and
// dc1's leave it with its metrics.
func TestConfigDatacentersComeAndGo(t *testing.T) {
	fed := consultest.StartFederation(t)
	fed.DC1.RegisterInstance(t, consultest.Instance{Node: "a1", NodeAddress: "10.1.0.1", Service: "web", Port: 80})
	fed.DC2.RegisterInstance(t, consultest.Instance{Node: "b1", NodeAddress: "10.2.0.1", Service: "web", Port: 80})
	proxy := faultproxy.Start(t, fed.DC1.Addr)
	const list = "/v1/catalog/datacenters"
	proxy.Set(list, faultproxy.Answer(http.StatusOK, `["dc1"]`))
	dir := t.TempDir()
	cfg := writeConfig(t, dir, fmt.Sprintf(`discovery_configs:
  - name: every
    file: every.json
    consul_sd_configs: [{server: %q, datacenter: "*", services: [web], refresh_interval: 1s}]
`, proxy.Addr))
	out := filepath.Join(dir, "every.json")
	d := startDaemon(t, nil, "--config.file="+cfg)
	eventually(t, "dc1 alone", func() bool { return addresses(t, out) == "10.1.0.1:80" })

	proxy.Clear(list)
	eventually(t, "dc2 joining", func() bool { return addresses(t, out) == "10.1.0.1:80,10.2.0.1:80" })

	proxy.Set(list, faultproxy.Answer(http.StatusOK, `["dc2"]`))
	eventually(t, "dc1 leaving", func() bool { return addresses(t, out) == "10.2.0.1:80" })
	if v := d.metric(`consul_sd_adapter_targets{block="0/dc1",entry="every"}`); v != -1 {
		t.Errorf("dc1's targets gauge = %v after it left the list, want it gone", v)
	}
	if v := d.metric(`consul_sd_adapter_targets{block="0/dc2",entry="every"}`); v != 1 {
		t.Errorf("dc2's targets gauge = %v, want 1", v)
	}
}
