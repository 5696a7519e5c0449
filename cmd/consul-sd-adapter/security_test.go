package main

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/adapterproc"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
)

// Security tests: ACL tokens (and that they never leak), TLS to Consul,
// basic auth on the web endpoints, and the permissions of the output file.

// managementToken is the agent's initial management token. It is a test
// fixture, not the secret under test: that one is created through the ACL API.
const managementToken = "0e1d7f8a-5b7c-4c1e-9a55-6d0c1b2a3f40"

// wrongToken looks like a token but Consul does not know it.
const wrongToken = "7b3c9e21-4f0a-4d2b-8c6e-1a2b3c4d5e6f"

// oneLine reports whether s, trimmed, is a single line.
func oneLine(s string) bool { return !strings.Contains(strings.TrimSpace(s), "\n") }

// writeSecret writes a token to a 0600 file, as an operator would.
func writeSecret(t *testing.T, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "consul-token")
	if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// readRules may read every service and node, the least a discovery needs.
const readRules = `service_prefix "" { policy = "read" } node_prefix "" { policy = "read" }`

// createToken creates a real ACL token with a policy of rules through the
// ACL API and returns its SecretID.
func createToken(t *testing.T, agent *consultest.Agent, name, rules string) string {
	t.Helper()
	policy, _, err := agent.Client.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
	if err != nil {
		t.Fatalf("creating the policy: %v", err)
	}
	token, _, err := agent.Client.ACL().TokenCreate(&api.ACLToken{
		Description: "consul-sd-adapter test",
		Policies:    []*api.ACLTokenPolicyLink{{ID: policy.ID}},
	}, nil)
	if err != nil {
		t.Fatalf("creating the token: %v", err)
	}
	if token.SecretID == "" {
		t.Fatal("Consul returned a token without a SecretID")
	}
	return token.SecretID
}

func TestACL(t *testing.T) {
	agent := consultest.Start(t, consultest.WithACL(managementToken))
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", Port: 80})
	agent.RegisterInstance(t, consultest.Instance{Node: "n2", NodeAddress: "10.0.0.2", Service: "db", Port: 5432})
	secret := createToken(t, agent, "consul-sd-adapter-read", readRules)
	tokenFile := writeSecret(t, secret)
	wrongFile := writeSecret(t, wrongToken)

	wantBoth := func(t *testing.T, r result, out string) {
		t.Helper()
		targets := onceTargets(t, r, out)
		if len(targets) != 2 || targets["10.0.0.1:80"]["__meta_consul_service"] != "web" || targets["10.0.0.2:5432"]["__meta_consul_service"] != "db" {
			t.Errorf("targets %v, want web on n1 and db on n2", targets)
		}
	}

	t.Run("token file", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "custom_sd.json")
		r := runBinary(t, nil, "--once", "--listen.address="+agent.Addr, "--consul.token-file="+tokenFile, "--output.file="+out)
		wantBoth(t, r, out)
	})

	t.Run("CONSUL_HTTP_TOKEN", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "custom_sd.json")
		r := runBinary(t, []string{"CONSUL_HTTP_TOKEN=" + secret}, "--once", "--listen.address="+agent.Addr, "--output.file="+out)
		wantBoth(t, r, out)
	})

	t.Run("CONSUL_HTTP_TOKEN_FILE", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "custom_sd.json")
		r := runBinary(t, []string{"CONSUL_HTTP_TOKEN_FILE=" + tokenFile}, "--once", "--listen.address="+agent.Addr, "--output.file="+out)
		wantBoth(t, r, out)
	})

	t.Run("token file flag wins over the environment", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "custom_sd.json")
		r := runBinary(t, []string{"CONSUL_HTTP_TOKEN=" + wrongToken}, "--once", "--listen.address="+agent.Addr, "--consul.token-file="+tokenFile, "--output.file="+out)
		wantBoth(t, r, out)
	})

	// Consul answers an unknown token with 403 "ACL not found". The
	// refresh fails, the file is not written, the one error line says why.
	t.Run("unknown token", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "custom_sd.json")
		r := runBinary(t, nil, "--once", "--listen.address="+agent.Addr, "--consul.token-file="+wrongFile, "--output.file="+out)
		if r.code != 1 {
			t.Errorf("exit %d, want 1", r.code)
		}
		t.Logf("stderr: %s", r.stderr)
		if !oneLine(r.stderr) || !strings.Contains(r.stderr, "403") {
			t.Errorf("stderr, want one line naming the 403:\n%s", r.stderr)
		}
		if _, err := os.Stat(out); err == nil {
			t.Error("output file written although the refresh failed")
		}
	})

	// Without a token, default_policy "deny" applies to the anonymous
	// token. Consul does not answer list endpoints with 403 for that: it
	// answers 200 with everything the token may not read filtered out (for
	// the anonymous token without even the X-Consul-Results-Filtered-By-ACLs
	// header). An adapter that took that answer at face value would write
	// "[]" and delete every target.
	blind := func(t *testing.T, env []string, args ...string) {
		t.Helper()
		out := filepath.Join(t.TempDir(), "custom_sd.json")
		r := runBinary(t, env, append(args, "--once", "--listen.address="+agent.Addr, "--output.file="+out)...)
		if r.code != 1 {
			data, _ := os.ReadFile(out)
			t.Errorf("exit %d, want 1; output file:\n%s\nstderr:\n%s", r.code, data, r.stderr)
		}
		t.Logf("stderr: %s", r.stderr)
		lower := strings.ToLower(r.stderr)
		if !oneLine(r.stderr) || !(strings.Contains(lower, "403") || strings.Contains(lower, "permission") || strings.Contains(lower, "acl")) {
			t.Errorf("stderr, want one line naming a 403/permission problem:\n%s", r.stderr)
		}
		if _, err := os.Stat(out); err == nil {
			t.Error("output file written although the refresh failed")
		}
	}
	t.Run("no token", func(t *testing.T) { blind(t, nil) })
	// A real token that may read services but no node: Consul hides
	// everything from it just the same.
	t.Run("token without node read", func(t *testing.T) {
		blind(t, nil, "--consul.token-file="+writeSecret(t, createToken(t, agent, "services-only", `service_prefix "" { policy = "read" }`)))
	})

	// The secret, right or wrong, never shows: not in a debug log, not on
	// /metrics or the landing page, not in --help.
	t.Run("secret never shown", func(t *testing.T) {
		var shown []string // everything the program showed, by where
		show := func(where, what string) { shown = append(shown, where+":\n"+what) }

		for _, tc := range []struct {
			name, file string
			ready      bool
		}{{"right token", tokenFile, true}, {"wrong token", wrongFile, false}} {
			out := filepath.Join(t.TempDir(), "custom_sd.json")
			// startDaemon adds --log.level=debug.
			d := startDaemon(t, nil, "--listen.address="+agent.Addr, "--consul.token-file="+tc.file,
				"--output.file="+out, "--refresh.interval=100ms")
			if tc.ready {
				eventually(t, tc.name+": /-/ready", func() bool { code, _ := d.get("/-/ready"); return code == 200 })
				if len(readTargets(t, out)) != 2 {
					t.Errorf("%s: targets %v, want 2", tc.name, readTargets(t, out))
				}
			} else {
				eventually(t, tc.name+": two failed rounds", func() bool {
					return d.metric(`consul_sd_adapter_refreshes_total{result="failure"}`) >= 2
				})
			}
			for _, path := range []string{"/metrics", "/", "/targets", "/-/ready", "/-/healthy", "/debug/pprof/cmdline"} {
				_, body := d.get(path)
				show(tc.name+" "+path, body)
			}
			if tc.name == "wrong token" && !strings.Contains(d.stderr.String(), "403") {
				t.Errorf("the log does not name the 403 of the wrong token:\n%s", d.stderr)
			}
			d.cmd.Process.Kill()
			<-d.done
			show(tc.name+" log", d.stderr.String())
		}

		// The token in every place it can be given, then --help and --version.
		env := []string{"CONSUL_HTTP_TOKEN=" + secret, "CONSUL_HTTP_TOKEN_FILE=" + tokenFile}
		for _, args := range [][]string{
			{"--help"},
			{"--help", "--consul.token-file=" + tokenFile},
			{"--version"},
			{"--consul.token-file=" + tokenFile, "--no-such-flag"},
		} {
			r := runBinary(t, env, args...)
			show(strings.Join(args, " "), r.stdout+r.stderr)
		}
		r := runBinary(t, []string{"CONSUL_HTTP_TOKEN=" + wrongToken}, "--once", "--listen.address="+agent.Addr, "--log.level=debug",
			"--output.file="+filepath.Join(t.TempDir(), "custom_sd.json"))
		show("--once with a wrong CONSUL_HTTP_TOKEN", r.stdout+r.stderr)

		for _, s := range shown {
			for _, token := range []string{secret, wrongToken, managementToken} {
				if strings.Contains(s, token) {
					t.Errorf("token %s… shown in %s", token[:4], s)
				}
			}
		}
	})
}

func TestTLSToConsul(t *testing.T) {
	ca, cert, key := consultest.GenerateCerts(t)
	otherCA, _, _ := consultest.GenerateCerts(t)
	agent := consultest.Start(t, consultest.WithTLS(ca, cert, key))
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", Port: 80})
	url := "https://" + agent.Addr

	ok := func(t *testing.T, env []string, args ...string) {
		t.Helper()
		out := filepath.Join(t.TempDir(), "custom_sd.json")
		r := runBinary(t, env, append(args, "--once", "--output.file="+out)...)
		if _, found := onceTargets(t, r, out)["10.0.0.1:80"]; !found {
			t.Errorf("web on n1 missing from %v", readTargets(t, out))
		}
	}
	refused := func(t *testing.T, env []string, args ...string) {
		t.Helper()
		out := filepath.Join(t.TempDir(), "custom_sd.json")
		r := runBinary(t, env, append(args, "--once", "--output.file="+out)...)
		if r.code != 1 {
			t.Errorf("exit %d, want 1", r.code)
		}
		t.Logf("stderr: %s", r.stderr)
		if !oneLine(r.stderr) || !strings.Contains(r.stderr, "x509") || !strings.Contains(r.stderr, "unknown authority") {
			t.Errorf("stderr, want one line naming the x509 unknown authority:\n%s", r.stderr)
		}
		if _, err := os.Stat(out); err == nil {
			t.Error("output file written although the refresh failed")
		}
	}

	t.Run("CA flag", func(t *testing.T) { ok(t, nil, "--listen.address="+url, "--consul.ca-file="+ca) })
	t.Run("scheme flag", func(t *testing.T) {
		ok(t, nil, "--listen.address="+agent.Addr, "--consul.scheme=https", "--consul.ca-file="+ca)
	})
	t.Run("CONSUL_CACERT", func(t *testing.T) { ok(t, []string{"CONSUL_CACERT=" + ca}, "--listen.address="+url) })
	t.Run("all from the environment", func(t *testing.T) {
		ok(t, []string{"CONSUL_HTTP_ADDR=" + url, "CONSUL_CACERT=" + ca})
	})
	t.Run("CA flag wins over CONSUL_CACERT", func(t *testing.T) {
		ok(t, []string{"CONSUL_CACERT=" + otherCA}, "--listen.address="+url, "--consul.ca-file="+ca)
	})
	t.Run("other CA", func(t *testing.T) { refused(t, nil, "--listen.address="+url, "--consul.ca-file="+otherCA) })
	t.Run("other CA from CONSUL_CACERT", func(t *testing.T) {
		refused(t, []string{"CONSUL_CACERT=" + otherCA}, "--listen.address="+url)
	})
	// The system roots do not know the test CA either.
	t.Run("no CA", func(t *testing.T) { refused(t, nil, "--listen.address="+url) })
}

func TestWebBasicAuth(t *testing.T) {
	const user, password = "prometheus", "correct horse battery staple"
	webConfig := adapterproc.BasicAuthWebConfig(t, user, password)
	agent := consultest.Start(t)
	out := filepath.Join(t.TempDir(), "custom_sd.json")
	d := startDaemon(t, nil, "--listen.address="+agent.Addr, "--output.file="+out, "--web.config.file="+webConfig)

	get := func(path string, auth func(*http.Request)) (int, string) {
		req, err := http.NewRequest(http.MethodGet, "http://"+d.web+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		auth(req)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	none := func(*http.Request) {}
	right := func(r *http.Request) { r.SetBasicAuth(user, password) }
	wrong := func(r *http.Request) { r.SetBasicAuth(user, "wrong") }
	stranger := func(r *http.Request) { r.SetBasicAuth("admin", password) }

	eventually(t, "the web server", func() bool { code, _ := get("/metrics", none); return code != 0 })
	if code, _ := get("/metrics", none); code != http.StatusUnauthorized {
		t.Errorf("/metrics without credentials: %d, want 401", code)
	}
	if code, _ := get("/metrics", wrong); code != http.StatusUnauthorized {
		t.Errorf("/metrics with a wrong password: %d, want 401", code)
	}
	if code, _ := get("/metrics", stranger); code != http.StatusUnauthorized {
		t.Errorf("/metrics as an unknown user: %d, want 401", code)
	}
	code, body := get("/metrics", right)
	if code != http.StatusOK || !strings.Contains(body, "consul_sd_adapter_") {
		t.Errorf("/metrics with credentials: %d, want 200 with the adapter's metrics:\n%.300s", code, body)
	}
	if code, _ := get("/-/ready", none); code != http.StatusUnauthorized {
		t.Errorf("/-/ready without credentials: %d, want 401", code)
	}
	// Profiles tell a lot about the process: they are behind the same auth.
	if code, _ := get("/debug/pprof/", none); code != http.StatusUnauthorized {
		t.Errorf("/debug/pprof/ without credentials: %d, want 401", code)
	}
	if code, body := get("/debug/pprof/", right); code != http.StatusOK || !strings.Contains(body, "heap") {
		t.Errorf("/debug/pprof/ with credentials: %d, want 200 with the list of profiles:\n%.300s", code, body)
	}
	if strings.Contains(d.stderr.String(), password) {
		t.Error("the password appears in the log")
	}
}

func TestOutputFileMode(t *testing.T) {
	agent := consultest.Start(t)
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", Port: 80})
	for _, tc := range []struct {
		args []string
		want os.FileMode
	}{
		{nil, 0o644},
		{[]string{"--output.file-mode=0640"}, 0o640},
		{[]string{"--output.file-mode=600"}, 0o600},
	} {
		for _, name := range []string{"custom_sd.json", "custom_sd.yml"} {
			out := filepath.Join(t.TempDir(), name)
			r := runBinary(t, nil, append(tc.args, "--once", "--listen.address="+agent.Addr, "--output.file="+out)...)
			if r.code != 0 {
				t.Fatalf("%v: exit %d: %s", tc.args, r.code, r.stderr)
			}
			st, err := os.Stat(out)
			if err != nil {
				t.Fatal(err)
			}
			if got := st.Mode(); got != tc.want {
				t.Errorf("%s with %v: mode %v, want %v", name, tc.args, got, tc.want)
			}
		}
	}

	// A file that exists with other permissions gets the configured ones
	// when it is replaced.
	out := filepath.Join(t.TempDir(), "custom_sd.json")
	if err := os.WriteFile(out, []byte("[]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := runBinary(t, nil, "--once", "--listen.address="+agent.Addr, "--output.file="+out); r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if st, err := os.Stat(out); err != nil {
		t.Fatal(err)
	} else if st.Mode() != 0o644 {
		t.Errorf("replaced file: mode %v, want 0644", st.Mode())
	}
}

// TestTokenRotation rotates the ACL token under a running daemon as Vault
// does: a new token is written to the token file, then the old one is
// deleted in Consul. The daemon goes on with the new token, unrestarted.
func TestTokenRotation(t *testing.T) {
	agent := consultest.Start(t, consultest.WithACL(managementToken))
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", Port: 80})
	old := createToken(t, agent, "rotation-old", readRules)
	tokenFile := writeSecret(t, old)
	out := filepath.Join(t.TempDir(), "custom_sd.json")
	d := startDaemon(t, nil, "--listen.address="+agent.Addr, "--consul.token-file="+tokenFile,
		"--refresh.interval=1s", "--output.file="+out)
	waitForTruth(t, agent, out)

	// Written beside the file and renamed over it, as Vault's agent does.
	next := createToken(t, agent, "rotation-new", readRules)
	tmp := tokenFile + ".new"
	if err := os.WriteFile(tmp, []byte(next+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, tokenFile); err != nil {
		t.Fatal(err)
	}
	self, _, err := agent.Client.ACL().TokenReadSelf(&api.QueryOptions{Token: old})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.Client.ACL().TokenDelete(self.AccessorID, nil); err != nil {
		t.Fatal(err)
	}
	agent.RegisterInstance(t, consultest.Instance{Node: "n2", NodeAddress: "10.0.0.2", Service: "web", Port: 80})
	waitForTruth(t, agent, out)
	if acl := d.failures("acl") + d.failures("http_status"); acl != 0 {
		t.Errorf("%v rounds failed on the token after the rotation, want none: the new token was read at once", acl)
	}
}
