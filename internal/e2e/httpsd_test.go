package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/discovery/targetgroup"
	"go.yaml.in/yaml/v3"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/adapterproc"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
)

// The http_sd path: Prometheus fetches the targets from the adapter's
// /targets instead of reading its file. Same Consul, same labels, same
// relabeling as the file_sd tests in e2e_test.go.

// TestHTTPSDPrometheusDiscoversConsul follows every instance from Consul
// through the adapter's /targets into Prometheus's targets. Then the adapter
// is replaced by one that cannot reach Consul: it answers 503, and
// Prometheus keeps the targets it had instead of dropping them.
func TestHTTPSDPrometheusDiscoversConsul(t *testing.T) {
	agent := consultest.Start(t)
	insts := fixture(t, agent)
	webAddr := freeAddr(t)
	adapter, cmd := runAdapter(t, agent.Addr, webAddr)
	adapter.waitReady(t)

	// What Prometheus will fetch, checked first on its own.
	resp := getTargets(t, adapter, nil)
	if resp.status != http.StatusOK {
		t.Fatalf("GET /targets: %d, want 200\n%s", resp.status, resp.body)
	}
	checkJSONContentType(t, resp.contentType)
	checkGroups(t, decodeGroups(t, resp.body), insts)

	url := "http://" + webAddr + httpSDPath
	s := startHTTPSDPrometheus(t, url, nil)
	s.waitTargets(t, "every instance in Prometheus", hasAll(insts))
	s.checkTargets(t, insts)

	// A new adapter on the same address, with Consul unreachable: it has
	// no successful refresh, so /targets must answer 503, not [] (which
	// would make Prometheus drop every target).
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-adapter.done
	down := downConsulAddr(t)
	adapter2, _ := runAdapter(t, down, webAddr)
	waitStatus(t, adapter2, "/-/healthy", nil, http.StatusOK)
	for _, path := range []string{httpSDPath, "/-/ready"} {
		if r := get(t, adapter2, path, nil); r.status != http.StatusServiceUnavailable {
			t.Errorf("adapter with Consul down: GET %s: %d, want 503\n%s", path, r.status, r.body)
		}
	}
	// Every failure counted from here on is a 503: the adapter answers
	// and has nothing to give.
	const failures = "prometheus_sd_http_failures_total"
	start := s.prom.metric(t, failures)
	waitFor(t, "Prometheus: two more failed http_sd refreshes", func() (bool, string) {
		n := s.prom.metric(t, failures)
		return n >= start+2, fmt.Sprintf("%s went from %v to %v", failures, start, n)
	})
	// A failed refresh sends Prometheus's scrape manager nothing: the
	// targets it lists are those it had.
	s.checkTargets(t, insts)
	if r := get(t, adapter2, httpSDPath, nil); r.status != http.StatusServiceUnavailable {
		t.Errorf("adapter with Consul down: GET %s: %d at the end, want 503", httpSDPath, r.status)
	}
}

// TestHTTPSDEmptyCatalog: a catalog holding only Consul's own service (which
// the adapter leaves out) is served as [], not null, with 200: there really
// are no targets.
func TestHTTPSDEmptyCatalog(t *testing.T) {
	agent := consultest.Start(t)
	adapter, _ := runAdapter(t, agent.Addr, freeAddr(t))
	adapter.waitReady(t)
	r := getTargets(t, adapter, nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET /targets: %d, want 200\n%s", r.status, r.body)
	}
	checkJSONContentType(t, r.contentType)
	if got := string(bytes.TrimSpace(r.body)); got != "[]" {
		t.Errorf("GET /targets with only consul in the catalog: %q, want []", got)
	}
	if groups := decodeGroups(t, r.body); len(groups) != 0 {
		t.Errorf("decoded %d groups, want none", len(groups))
	}
}

// TestHTTPSDBasicAuth: with basic auth in --web.config.file, /targets
// refuses requests without the right credentials, and a Prometheus with
// basic_auth in its http_sd config still gets every target.
func TestHTTPSDBasicAuth(t *testing.T) {
	const user, password = "prometheus", "s3cret-for-http-sd"
	webConfig := adapterproc.BasicAuthWebConfig(t, user, password)

	agent := consultest.Start(t)
	insts := fixture(t, agent)
	webAddr := freeAddr(t)
	adapter, _ := runAdapter(t, agent.Addr, webAddr, "--web.config.file="+webConfig)
	good := &credentials{user, password}
	waitStatus(t, adapter, "/-/ready", good, http.StatusOK)

	for _, c := range []struct {
		name  string
		creds *credentials
	}{
		{"no credentials", nil},
		{"wrong password", &credentials{user, "wrong"}},
		{"unknown user", &credentials{"nobody", password}},
	} {
		if r := getTargets(t, adapter, c.creds); r.status != http.StatusUnauthorized {
			t.Errorf("GET /targets with %s: %d, want 401\n%s", c.name, r.status, r.body)
		} else if bytes.Contains(r.body, []byte(insts[0].Node)) {
			t.Errorf("GET /targets with %s: 401, but the body holds targets:\n%s", c.name, r.body)
		}
	}
	r := getTargets(t, adapter, good)
	if r.status != http.StatusOK {
		t.Fatalf("GET /targets with credentials: %d, want 200\n%s", r.status, r.body)
	}
	checkJSONContentType(t, r.contentType)
	checkGroups(t, decodeGroups(t, r.body), insts)

	s := startHTTPSDPrometheus(t, "http://"+webAddr+httpSDPath, good)
	s.waitTargets(t, "every instance in Prometheus, fetched with basic auth", hasAll(insts))
	s.checkTargets(t, insts)
}

// httpSDPath is where the adapter serves its targets for http_sd_configs.
const httpSDPath = "/targets"

type credentials struct{ user, password string }

// runAdapter starts the adapter with its web server on webAddr, without
// waiting for it to be ready (it may never be: Consul may be down, or its
// endpoints may need credentials). Its output file is in a fresh
// directory. The returned command lets a test kill it early.
func runAdapter(t *testing.T, consulAddr, webAddr string, extra ...string) (*process, *exec.Cmd) {
	t.Helper()
	return runAdapterTo(t, consulAddr, filepath.Join(t.TempDir(), "custom_sd.json"), webAddr, extra...)
}

// downConsulAddr is the address of a Consul that is down: a loopback port
// nothing listens on.
func downConsulAddr(t *testing.T) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", closedPort(t, "127.0.0.1"))
}

// response is what a GET returned, whatever its status.
type response struct {
	status      int
	contentType string
	body        []byte
}

// get GETs path from p, with basic auth if creds is set.
func get(t *testing.T, p *process, path string, creds *credentials) response {
	t.Helper()
	r, err := tryGet(p, path, creds)
	if err != nil {
		t.Fatalf("%s: GET %s: %v", p.name, path, err)
	}
	return r
}

func tryGet(p *process, path string, creds *credentials) (response, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+p.addr+path, nil)
	if err != nil {
		return response{}, err
	}
	if creds != nil {
		req.SetBasicAuth(creds.user, creds.password)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	return response{status: resp.StatusCode, contentType: resp.Header.Get("Content-Type"), body: body}, nil
}

// getTargets GETs /targets as Prometheus's http_sd does.
func getTargets(t *testing.T, p *process, creds *credentials) response {
	t.Helper()
	return get(t, p, httpSDPath, creds)
}

// waitStatus waits until GET path answers want.
func waitStatus(t *testing.T, p *process, path string, creds *credentials, want int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s: GET %s to answer %d", p.name, path, want), func() (bool, string) {
		select {
		case <-p.done:
			t.Fatalf("%s exited", p.name)
		default:
		}
		r, err := tryGet(p, path, creds)
		if err != nil {
			return false, err.Error()
		}
		return r.status == want, fmt.Sprintf("%d %s", r.status, r.body)
	})
}

// checkJSONContentType accepts what Prometheus's http_sd accepts:
// application/json, in UTF-8 if a charset is given.
func checkJSONContentType(t *testing.T, ct string) {
	t.Helper()
	mediaType, params, err := mime.ParseMediaType(ct)
	if err != nil || mediaType != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
		return
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		t.Errorf("Content-Type %q, want UTF-8", ct)
	}
}

// decodeGroups decodes a /targets body as Prometheus's http_sd does.
func decodeGroups(t *testing.T, body []byte) []*targetgroup.Group {
	t.Helper()
	var groups []*targetgroup.Group
	if err := json.Unmarshal(body, &groups); err != nil {
		t.Fatalf("/targets does not decode as []*targetgroup.Group: %v\n%s", err, body)
	}
	return groups
}

// checkGroups asserts that groups hold exactly one target per instance,
// each with the labels of its own instance.
func checkGroups(t *testing.T, groups []*targetgroup.Group, want []consultest.Instance) {
	t.Helper()
	got := map[string]map[string]string{} // address -> labels
	for _, g := range groups {
		for _, tg := range g.Targets {
			labels := map[string]string{}
			for k, v := range g.Labels {
				labels[string(k)] = string(v)
			}
			for k, v := range tg {
				labels[string(k)] = string(v)
			}
			addr := labels["__address__"]
			if _, dup := got[addr]; dup {
				t.Errorf("/targets lists %s twice", addr)
			}
			got[addr] = labels
		}
	}
	if len(got) != len(want) {
		t.Errorf("/targets has %d targets, want %d: %v", len(got), len(want), slices.Sorted(maps.Keys(got)))
	}
	for _, inst := range want {
		labels, ok := got[address(inst)]
		if !ok {
			t.Errorf("%s (%s) missing from /targets", inst.ID, address(inst))
			continue
		}
		for name, value := range wantDiscovered(inst, "") {
			if name == "__meta_filepath" {
				continue
			}
			if labels[name] != value {
				t.Errorf("/targets: %s: %s=%q, want %q", inst.ID, name, labels[name], value)
			}
		}
	}
}

// startHTTPSDPrometheus runs Prometheus on the repository's prometheus.yml,
// with its file_sd_configs replaced by http_sd_configs fetching url (with
// basic auth if creds is set): the same job and relabeling, another source.
func startHTTPSDPrometheus(t *testing.T, url string, creds *credentials) *promTargets {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatalf("prometheus.yml: %v", err)
	}
	scrapeConfigs, _ := cfg["scrape_configs"].([]any)
	replaced := 0
	for _, sc := range scrapeConfigs {
		sc, _ := sc.(map[string]any)
		if _, ok := sc["file_sd_configs"]; !ok {
			continue
		}
		delete(sc, "file_sd_configs")
		httpSD := httpSDConfig(url)
		if creds != nil {
			httpSD["basic_auth"] = map[string]any{"username": creds.user, "password": creds.password}
		}
		sc["http_sd_configs"] = []any{httpSD}
		replaced++
	}
	if replaced != 1 {
		t.Fatalf("prometheus.yml has %d scrape configs with file_sd_configs, want 1", replaced)
	}
	return &promTargets{prom: startPrometheusWith(t, cfg), sourceLabel: "__meta_url", source: url}
}

// httpSDConfig is an http_sd_configs entry fetching url.
func httpSDConfig(url string) map[string]any {
	// Prometheus has no lower bound on refresh_interval; its default of
	// 60s would make the test wait minutes.
	return map[string]any{"url": url, "refresh_interval": "5s"}
}

// startPrometheusWith runs Prometheus on cfg, written as its prometheus.yml
// into a fresh directory.
func startPrometheusWith(t *testing.T, cfg map[string]any) *process {
	t.Helper()
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), out, 0o600); err != nil {
		t.Fatal(err)
	}
	return startPrometheus(t, dir)
}
