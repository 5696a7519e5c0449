package main

import (
	"cmp"
	"encoding/base64"
	"fmt"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/faultproxy"
)

// Every connection option of a consul_sd_configs block, against real
// agents: each case is a block run with --once, and what must follow from
// it, the file or a failure that names its cause, and what reached Consul.
// Consul ignores most of what an HTTP client may add (basic auth, headers),
// so a fault proxy in front of the agent is where that is seen.

const (
	webAddr   = "10.0.0.1:80"
	dbAddr    = "10.0.0.2:5432"
	bothAddrs = webAddr + "," + dbAddr
	// optSecret is the password, client secret or header value of the
	// cases ($SECRET), and the content of $SECRET_FILE.
	optSecret = "s3cret"
	// unresolvable ($UNRESOLVABLE) is a Consul server name no resolver
	// knows (RFC 2606): a request to it reaches the agent only through a
	// proxy.
	unresolvable = "consul.invalid"
)

// optionCase is one block and what must be seen when --once runs it.
type optionCase struct {
	option string // the option under test, named in every failure
	// block is the consul_sd_configs block, in YAML flow style; $NAMEs
	// stand for the fixtures (see startOptionFixtures).
	block string
	env   []string // added to the adapter's environment, $NAMEs expanded
	drop  []string // query parameters the fault proxy drops once seen
	fail  string   // if set, --once exits 1, writes no file, and says this
	want  string   // else the file's addresses, sorted and comma-joined
	check check    // what else must have been seen; nil for nothing
}

// observed is what a case's run left to look at.
type observed struct {
	requests []faultproxy.Request         // what reached the fault proxy ($PROXY)
	forward  *forwardProxy                // the forward proxy ($FORWARD), if any
	targets  map[string]map[string]string // the file's targets by address, on success
}

// check returns what is wrong with what a case observed, or nil.
type check func(o observed) error

// TestConfigOptions runs a block of each connection option with --once.
func TestConfigOptions(t *testing.T) {
	fx := startOptionFixtures(t)
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("prom:"+optSecret))
	oauth2 := "{client_id: prom, client_secret: '$SECRET', token_url: '$TOKEN_URL', scopes: [consul]}"
	cases := []optionCase{
		// ACL tokens, against an agent whose default policy denies.
		{option: "token", block: "{server: '$ACL', token: '$READ_TOKEN'}", want: bothAddrs},
		{option: "token unknown to Consul", block: "{server: '$ACL', token: '$WRONG_TOKEN'}", fail: "ACL not found"},
		{option: "no token", block: "{server: '$ACL'}", fail: "may read nothing"},
		{option: "token header", block: "{server: '$PROXY', token: '$WRONG_TOKEN'}", want: bothAddrs,
			check: header("X-Consul-Token", wrongToken)},

		// Authentication by the HTTP client: seen at the proxy, and for
		// bearer credentials also taken by Consul as the ACL token.
		{option: "basic_auth", block: "{server: '$PROXY', basic_auth: {username: prom, password: '$SECRET'}}", want: bothAddrs,
			check: header("Authorization", basic)},
		{option: "basic_auth password_file", block: "{server: '$PROXY', basic_auth: {username: prom, password_file: '$SECRET_FILE'}}", want: bothAddrs,
			check: header("Authorization", basic)},
		{option: "username and password", block: "{server: '$PROXY', username: prom, password: '$SECRET'}", want: bothAddrs,
			check: header("Authorization", basic)},
		// The consul CLI's basic auth variable must not override the block's.
		{option: "basic_auth with CONSUL_HTTP_AUTH set", block: "{server: '$PROXY', username: prom, password: '$SECRET'}",
			env: []string{"CONSUL_HTTP_AUTH=intruder:x"}, want: bothAddrs, check: header("Authorization", basic)},
		{option: "CONSUL_HTTP_AUTH ignored", block: "{server: '$PROXY'}", env: []string{"CONSUL_HTTP_AUTH=intruder:x"}, want: bothAddrs,
			check: header("Authorization", "")},
		{option: "authorization", block: "{server: '$PROXY', authorization: {type: Bearer, credentials: '$SECRET'}}", want: bothAddrs,
			check: header("Authorization", "Bearer "+optSecret)},
		{option: "authorization credentials_file", block: "{server: '$PROXY', authorization: {type: Token, credentials_file: '$SECRET_FILE'}}", want: bothAddrs,
			check: header("Authorization", "Token "+optSecret)},
		{option: "authorization as the ACL token", block: "{server: '$ACL', authorization: {credentials: '$READ_TOKEN'}}", want: bothAddrs},
		{option: "authorization unknown to Consul", block: "{server: '$ACL', authorization: {credentials: '$WRONG_TOKEN'}}", fail: "ACL not found"},
		{option: "oauth2", block: "{server: '$PROXY', oauth2: " + oauth2 + "}", want: bothAddrs,
			check: header("Authorization", "Bearer "+fx.vars["$READ_TOKEN"])},
		{option: "oauth2 as the ACL token", block: "{server: '$ACL', oauth2: " + oauth2 + "}", want: bothAddrs},
		{option: "oauth2 refused by the token endpoint", block: "{server: '$ACL', oauth2: {client_id: prom, client_secret: wrong, token_url: '$TOKEN_URL'}}", fail: "invalid_client"},
		{option: "http_headers", block: "{server: '$PROXY', http_headers: {X-Scope-OrgID: {values: [team-a, team-b]}, X-Api-Key: {secrets: ['$SECRET']}, X-From-File: {files: ['$SECRET_FILE']}}}", want: bothAddrs,
			check: all(header("X-Scope-OrgID", "team-a,team-b"), header("X-Api-Key", optSecret), header("X-From-File", optSecret))},

		// Consul Enterprise's namespaces and partitions. The OSS agent
		// answers 400 to any ns or partition parameter, even "default":
		// the proxy drops them once seen, and the cases after show that
		// they reach the agent.
		{option: "namespace", block: "{server: '$PROXY', namespace: team-a}", drop: []string{"ns"}, want: bothAddrs,
			check: param("ns", "team-a", onEvery)},
		{option: "partition", block: "{server: '$PROXY', partition: part-a}", drop: []string{"partition"}, want: bothAddrs,
			check: param("partition", "part-a", onEvery)},
		{option: "namespace reaches the OSS agent", block: "{server: '$AGENT', namespace: team-a}", fail: "Namespaces are a Consul Enterprise feature"},
		{option: "partition reaches the OSS agent", block: "{server: '$AGENT', partition: part-a}", fail: "Partitions are a Consul Enterprise feature"},

		// Where Consul is.
		{option: "unix socket", block: "{server: 'unix://$SOCKET'}", want: bothAddrs},
		{option: "path_prefix", block: "{server: '$PREFIXED', path_prefix: /consul}", want: bothAddrs},
		{option: "no path_prefix behind a prefix", block: "{server: '$PREFIXED'}", fail: "404"},

		// TLS.
		{option: "scheme https, ca_file", block: "{server: '$HTTPS', scheme: https, tls_config: {ca_file: '$CA'}}", want: bothAddrs},
		{option: "ca_file of another CA", block: "{server: '$HTTPS', scheme: https, tls_config: {ca_file: '$OTHER_CA'}}", fail: "certificate signed by unknown authority"},
		{option: "no ca_file", block: "{server: '$HTTPS', scheme: https}", fail: "certificate signed by unknown authority"},
		{option: "scheme http to HTTPS", block: "{server: '$HTTPS'}", fail: "HTTP request to an HTTPS server"},
		{option: "insecure_skip_verify", block: "{server: '$HTTPS', scheme: https, tls_config: {insecure_skip_verify: true}}", want: bothAddrs},
		{option: "server_name", block: "{server: '$HTTPS', scheme: https, tls_config: {ca_file: '$CA', server_name: server.dc1.consul}}", want: bothAddrs},
		{option: "server_name not in the certificate", block: "{server: '$HTTPS', scheme: https, tls_config: {ca_file: '$CA', server_name: other.example}}", fail: "not other.example"},
		// TLS 1.2 for both: over 1.3 the server refuses a missing
		// certificate after the client's handshake, and the client may see
		// that as a failed write (broken pipe) rather than the alert.
		{option: "cert_file and key_file", block: "{server: '$MTLS', scheme: https, tls_config: {ca_file: '$CA', cert_file: '$CERT', key_file: '$KEY', max_version: TLS12}}", want: bothAddrs},
		{option: "no client certificate", block: "{server: '$MTLS', scheme: https, tls_config: {ca_file: '$CA', max_version: TLS12}}", fail: "tls: handshake failure"},
		{option: "enable_http2", block: "{server: '$H2PROXY', scheme: https, tls_config: {insecure_skip_verify: true}}", want: bothAddrs,
			check: protocol("HTTP/2.0")},
		{option: "enable_http2 false", block: "{server: '$H2PROXY', scheme: https, enable_http2: false, tls_config: {insecure_skip_verify: true}}", want: bothAddrs,
			check: protocol("HTTP/1.1")},

		// Proxies: the server's name resolves nowhere, only the forward
		// proxy reaches the agent.
		{option: "proxy_url", block: "{server: '$UNRESOLVABLE:8500', proxy_url: 'http://$FORWARD'}", want: bothAddrs,
			check: forwarded(unresolvable + ":8500")},
		{option: "proxy_from_environment", block: "{server: '$UNRESOLVABLE:8500', proxy_from_environment: true}",
			env: []string{"HTTP_PROXY=http://$FORWARD"}, want: bothAddrs, check: forwarded(unresolvable + ":8500")},
		{option: "no_proxy", block: "{server: '$UNRESOLVABLE:8500', proxy_url: 'http://$FORWARD', no_proxy: '$UNRESOLVABLE'}",
			fail: "no such host", check: notForwarded},
		// HTTPS through a CONNECT tunnel to the agent's HTTPS port; its
		// certificate does not name the unresolvable server.
		{option: "proxy_connect_header", block: "{server: '$UNRESOLVABLE:8501', scheme: https, tls_config: {ca_file: '$CA', server_name: localhost}, proxy_url: 'http://$FORWARD', proxy_connect_header: {X-Proxy-Key: ['$SECRET']}}",
			want: bothAddrs, check: connectHeader("X-Proxy-Key", optSecret)},

		// $REDIRECT answers every request with a 307 to the agent.
		{option: "follow_redirects", block: "{server: '$REDIRECT'}", want: bothAddrs},
		{option: "follow_redirects false", block: "{server: '$REDIRECT', follow_redirects: false}", fail: "307"},

		// What is asked of Consul.
		{option: "datacenter", block: "{server: '$PROXY', datacenter: dc1}", want: bothAddrs, check: param("dc", "dc1", onEvery)},
		{option: "datacenter that does not exist", block: "{server: '$AGENT', datacenter: nope}", fail: "No path to datacenter"},
		{option: "allow_stale by default", block: "{server: '$PROXY'}", want: bothAddrs, check: param("stale", "", onEvery)},
		{option: "allow_stale false", block: "{server: '$PROXY', allow_stale: false}", want: bothAddrs, check: param("stale", "", onNone)},
		{option: "tag_separator", block: "{server: '$AGENT', services: [web], tag_separator: ';'}", want: webAddr,
			check: label(webAddr, "__meta_consul_tags", ";prod;blue;")},
		{option: "services", block: "{server: '$PROXY', services: [db]}", want: dbAddr},
		{option: "tags", block: "{server: '$PROXY', tags: [blue]}", want: webAddr, check: param("tag", "blue", onInstances)},
		{option: "node_meta", block: "{server: '$PROXY', node_meta: {rack: r1}}", want: webAddr,
			check: param("node-meta", "rack:r1", func(path string) bool { return onServiceList(path) || onInstances(path) })},
		{option: "filter", block: `{server: '$PROXY', filter: 'ServiceTags contains "blue"'}`, want: webAddr,
			check: param("filter", `ServiceTags contains "blue"`, onServiceList)},
		{option: "health_filter", block: `{server: '$PROXY', health_filter: 'Node.Node == "n2"'}`, want: dbAddr,
			check: param("filter", `Node.Node == "n2"`, onInstances)},
	}
	for _, tc := range cases {
		t.Run(tc.option, func(t *testing.T) { fx.run(t, tc) })
	}
}

// TestConfigOptionsDaemon shows what --once cannot: refresh_interval sets
// the period of the rounds, and the watch's blocking queries, which go
// through transports of their own, carry a block's settings as the rounds
// do. One entry watches the catalog's tables over plain HTTP, behind a
// path prefix; the other every service, over HTTPS with HTTP/2.
func TestConfigOptionsDaemon(t *testing.T) {
	agent := consultest.Start(t)
	agent.RegisterInstance(t, consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", Port: 80})
	tables, services := faultproxy.Start(t, agent.Addr), faultproxy.StartTLS(t, agent.Addr)
	proxies := map[string]*faultproxy.Proxy{"tables": tables, "services": services}
	prefixed := underPrefix(t, tables.Addr)
	settings := "namespace: team-a, http_headers: {X-Scope-OrgID: {values: [team-a]}}"
	cfg := writeConfig(t, t.TempDir(), fmt.Sprintf(`discovery_configs:
  - name: tables
    file: tables.json
    consul_sd_configs: [{server: '%s', path_prefix: /consul, refresh_interval: 100ms, %s}]
  - name: services
    file: services.json
    consul_sd_configs: [{server: '%s', scheme: https, tls_config: {insecure_skip_verify: true}, %s}]
`, prefixed, settings, services.Addr, settings))
	for _, p := range proxies {
		p.Set("/*", faultproxy.DropQuery("ns"))
	}
	d := startDaemon(t, nil, "--config.file="+cfg)

	// A round lists the services without an index, and so does the
	// watch's first query; the default refresh_interval, 30s, would make
	// at most two rounds before eventually gives up.
	var rounds int
	var blocking map[string][]string
	defer func() {
		if t.Failed() {
			t.Logf("seen: %d service lists without an index; blocking queries %v", rounds, blocking)
		}
	}()
	eventually(t, "rounds every 100ms (refresh_interval) and the watches' blocking queries", func() bool {
		rounds, blocking = 0, map[string][]string{}
		for name, p := range proxies {
			for _, r := range p.Seen() {
				switch {
				case r.Query.Has("index"):
					blocking[name] = append(blocking[name], r.Path)
				case name == "tables" && r.Path == "/v1/catalog/services":
					rounds++
				}
			}
		}
		return rounds >= 5 && slices.Contains(blocking["tables"], "/v1/catalog/nodes") &&
			slices.Contains(blocking["services"], "/v1/catalog/services") && slices.Contains(blocking["services"], "/v1/health/service/web")
	})
	settingsSeen := all(param("ns", "team-a", onEvery), header("X-Scope-OrgID", "team-a"))
	for name, p := range proxies {
		if err := settingsSeen(observed{requests: p.Seen()}); err != nil {
			t.Errorf("entry %s, the block's namespace and http_headers: %v", name, err)
		}
	}
	// The metrics name the API's endpoints, without the path prefix and
	// the service's name: one series per endpoint, whatever the catalog.
	series := `consul_sd_adapter_consul_request_duration_seconds_count{block="0",code="200",endpoint="/v1/health/service",entry="tables"}`
	if v := d.metric(series); v < 1 {
		_, body := d.get("/metrics")
		t.Errorf("path_prefix: no %s on /metrics (%v); the request series:\n%s", series, v, grepLines(body, "consul_sd_adapter_consul_request_duration_seconds_count"))
	}
}

// grepLines returns the lines of text that contain s.
func grepLines(text, s string) string {
	var lines []string
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, s) {
			lines = append(lines, line)
		}
	}
	return strings.Join(lines, "\n")
}

// optionFixtures are what the cases' blocks name.
type optionFixtures struct {
	plain *consultest.Agent
	// vars holds the $NAMEs of the blocks: the agents' addresses ($AGENT
	// plain, $HTTPS the same agent's HTTPS, $SOCKET its Unix socket, $ACL
	// with ACLs, $MTLS requiring client certificates), $PREFIXED (the
	// plain agent under /consul), $REDIRECT (redirects to it), $TOKEN_URL
	// (issues $READ_TOKEN, which may read everything), TLS files ($CA,
	// $CERT, $KEY, $OTHER_CA), secrets ($SECRET, $SECRET_FILE,
	// $WRONG_TOKEN) and $UNRESOLVABLE.
	vars map[string]string
}

func startOptionFixtures(t *testing.T) *optionFixtures {
	t.Helper()
	ca, cert, key := consultest.GenerateCerts(t)
	otherCA, _, _ := consultest.GenerateCerts(t)
	socket := filepath.Join(t.TempDir(), "consul.sock")
	fx := &optionFixtures{plain: consultest.Start(t, consultest.WithHTTPS(ca, cert, key), consultest.WithHCL(`addresses { http = "127.0.0.1 unix://`+socket+`" }`))}
	acl := consultest.Start(t, consultest.WithACL(managementToken))
	// Client certificates on HTTPS only: the helpers use plain HTTP.
	mtls := consultest.Start(t, consultest.WithHTTPS(ca, cert, key), consultest.WithHCL(`tls { https { verify_incoming = true } }`))
	for _, a := range []*consultest.Agent{fx.plain, acl, mtls} {
		a.RegisterInstance(t, consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", NodeMeta: map[string]string{"rack": "r1"},
			Service: "web", Port: 80, Tags: []string{"prod", "blue"}})
		a.RegisterInstance(t, consultest.Instance{Node: "n2", NodeAddress: "10.0.0.2", NodeMeta: map[string]string{"rack": "r2"},
			Service: "db", Port: 5432, Tags: []string{"prod"}})
	}
	readToken := createToken(t, acl, "read-all", readRules)
	fx.vars = map[string]string{
		"$AGENT": fx.plain.Addr, "$ACL": acl.Addr, "$HTTPS": fx.plain.HTTPSAddr, "$MTLS": mtls.HTTPSAddr,
		"$PREFIXED": underPrefix(t, fx.plain.Addr),
		"$REDIRECT": serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://"+fx.plain.Addr+r.URL.RequestURI(), http.StatusTemporaryRedirect)
		})),
		"$TOKEN_URL":  "http://" + serve(t, tokenEndpoint(readToken)) + "/token",
		"$READ_TOKEN": readToken, "$WRONG_TOKEN": wrongToken, "$SOCKET": socket,
		"$CA": ca, "$CERT": cert, "$KEY": key, "$OTHER_CA": otherCA,
		"$SECRET": optSecret, "$SECRET_FILE": writeSecret(t, optSecret), "$UNRESOLVABLE": unresolvable,
	}
	return fx
}

// serve serves h on loopback until the test ends, and returns its address.
func serve(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// underPrefix serves the Consul API at target under /consul until the test
// ends, and returns its address.
func underPrefix(t *testing.T, target string) string {
	t.Helper()
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	rp.ErrorLog = log.New(io.Discard, "", 0) // requests cut short when the adapter stops
	return serve(t, http.StripPrefix("/consul", rp))
}

// tokenEndpoint is an OAuth2 token endpoint for the client credentials
// grant: it issues token to client prom with secret optSecret asking for
// scope consul, and refuses anyone else.
func tokenEndpoint(token string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, secret, ok := r.BasicAuth()
		if !ok {
			id, secret = r.PostFormValue("client_id"), r.PostFormValue("client_secret")
		}
		w.Header().Set("Content-Type", "application/json")
		if r.PostFormValue("grant_type") != "client_credentials" || id != "prom" || secret != optSecret || r.PostFormValue("scope") != "consul" {
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":"invalid_client"}`)
			return
		}
		fmt.Fprintf(w, `{"access_token":%q,"token_type":"Bearer","expires_in":3600}`, token)
	})
}

// run runs a case's block with --once, each case with a fault proxy of its
// own in front of the plain agent ($PROXY, or $H2PROXY serving HTTPS with
// HTTP/2), and a forward proxy to it if the case names $FORWARD.
func (fx *optionFixtures) run(t *testing.T, tc optionCase) {
	uses := func(name string) bool {
		return strings.Contains(tc.block, name) || slices.ContainsFunc(tc.env, func(kv string) bool { return strings.Contains(kv, name) })
	}
	start := faultproxy.Start
	if uses("$H2PROXY") {
		start = faultproxy.StartTLS
	}
	p := start(t, fx.plain.Addr)
	if tc.drop != nil {
		p.Set("/*", faultproxy.DropQuery(tc.drop...))
	}
	vars := maps.Clone(fx.vars)
	vars["$PROXY"], vars["$H2PROXY"] = p.Addr, p.Addr
	o := observed{}
	file := filepath.Join(t.TempDir(), "opts.json")
	if uses("$FORWARD") {
		// CONNECTs go to the HTTPS agent, plain requests to the fault proxy.
		o.forward = startForwardProxy(t, p.Addr, fx.plain.HTTPSAddr)
		vars["$FORWARD"] = o.forward.addr
	}
	expand := expander(vars)
	env := make([]string, len(tc.env))
	for i, kv := range tc.env {
		env[i] = expand(kv)
	}
	block := expand(tc.block)
	cfg := writeConfig(t, filepath.Dir(file), "discovery_configs:\n  - name: opts\n    file: opts.json\n    consul_sd_configs:\n      - "+block+"\n")

	r := runBinary(t, env, "--once", "--config.file="+cfg)
	if tc.fail != "" {
		if r.code != 1 || !strings.Contains(r.stderr, tc.fail) {
			t.Errorf("%s: exit %d, want 1 with an error naming %q; block %s\nstderr: %s", tc.option, r.code, tc.fail, block, r.stderr)
		}
		if _, err := os.Stat(file); err == nil {
			t.Errorf("%s: the file was written although the round failed", tc.option)
		}
	} else if got := addresses(t, file); r.code != 0 || got != tc.want {
		t.Errorf("%s: exit %d and the file holds %q, want 0 and %q; block %s\nstderr: %s", tc.option, r.code, got, tc.want, block, r.stderr)
	} else {
		o.targets = readTargets(t, file)
	}
	o.requests = p.Seen()
	if tc.check != nil {
		if err := tc.check(o); err != nil {
			t.Errorf("%s: %v; block %s", tc.option, err, block)
		}
	}
}

// expander replaces every $NAME of vars in a string, longer names first so
// that none is taken for a prefix of another.
func expander(vars map[string]string) func(string) string {
	names := slices.SortedFunc(maps.Keys(vars), func(a, b string) int { return cmp.Compare(len(b), len(a)) })
	var pairs []string
	for _, n := range names {
		pairs = append(pairs, n, vars[n])
	}
	return strings.NewReplacer(pairs...).Replace
}

// all returns a check that passes when each of checks does.
func all(checks ...check) check {
	return func(o observed) error {
		for _, c := range checks {
			if err := c(o); err != nil {
				return err
			}
		}
		return nil
	}
}

// eachRequest returns a check that test passes for every request the fault
// proxy saw, and that it saw a round (see sawRound).
func eachRequest(test func(r faultproxy.Request) error) check {
	return func(o observed) error {
		for _, r := range o.requests {
			if err := test(r); err != nil {
				return fmt.Errorf("%s %s: %w", r.Method, r.URI, err)
			}
		}
		return sawRound(o.requests)
	}
}

// sawRound fails unless requests hold a round: the service list and a
// service's instances. A check of every request then cannot pass on none.
func sawRound(requests []faultproxy.Request) error {
	var list, instances bool
	var seen []string
	for _, r := range requests {
		list = list || r.Path == "/v1/catalog/services"
		instances = instances || strings.HasPrefix(r.Path, "/v1/health/service/")
		seen = append(seen, r.URI)
	}
	if !list || !instances {
		return fmt.Errorf("Consul's proxy saw no round, only %q", seen)
	}
	return nil
}

// every returns a check that what got reads from each request is want.
func every(what string, got func(r faultproxy.Request) string, want string) check {
	return eachRequest(func(r faultproxy.Request) error {
		if g := got(r); g != want {
			return fmt.Errorf("%s %q, want %q", what, g, want)
		}
		return nil
	})
}

// header returns a check that each request carried the header name with
// the values want, comma-joined.
func header(name, want string) check {
	return every("header "+name, func(r faultproxy.Request) string { return strings.Join(r.Header.Values(name), ",") }, want)
}

// protocol returns a check that each request came over want.
func protocol(want string) check {
	return every("protocol", func(r faultproxy.Request) string { return r.Proto }, want)
}

// Path selectors for param.
func onEvery(string) bool            { return true }
func onNone(string) bool             { return false }
func onServiceList(path string) bool { return path == "/v1/catalog/services" }
func onInstances(path string) bool   { return strings.HasPrefix(path, "/v1/health/service/") }

// param returns a check that the requests for the paths on selects carry
// the query parameter name=value, and the others do not; value "" means
// the parameter without a value (?stale).
func param(name, value string, on func(path string) bool) check {
	return eachRequest(func(r faultproxy.Request) error {
		if has := r.Query.Has(name) && r.Query.Get(name) == value; has != on(r.Path) {
			return fmt.Errorf("carries %s=%q: %v, want %v (query %v)", name, value, has, !has, r.Query)
		}
		return nil
	})
}

// label returns a check that the file's target at addr has label name = want.
func label(addr, name, want string) check {
	return func(o observed) error {
		if got := o.targets[addr][name]; got != want {
			return fmt.Errorf("target %s has %s=%q, want %q", addr, name, got, want)
		}
		return nil
	}
}

// forwarded returns a check that every request reached Consul through the
// forward proxy, in proxy form (an absolute URL) naming host.
func forwarded(host string) check {
	return func(o observed) error {
		uris, _ := o.forward.seen()
		if len(uris) != len(o.requests) {
			return fmt.Errorf("the forward proxy forwarded %d requests, Consul's proxy got %d", len(uris), len(o.requests))
		}
		for _, u := range uris {
			if !strings.HasPrefix(u, "http://"+host+"/") {
				return fmt.Errorf("the forward proxy got %q, want a URL of http://%s", u, host)
			}
		}
		return sawRound(o.requests)
	}
}

// notForwarded checks that nothing went through the forward proxy.
func notForwarded(o observed) error {
	if uris, connects := o.forward.seen(); len(uris)+len(connects) > 0 {
		return fmt.Errorf("the forward proxy got %q and %d CONNECTs", uris, len(connects))
	}
	return nil
}

// connectHeader returns a check that the forward proxy got CONNECTs, each
// with the header name: want.
func connectHeader(name, want string) check {
	return func(o observed) error {
		_, connects := o.forward.seen()
		if len(connects) == 0 {
			return fmt.Errorf("the forward proxy got no CONNECT")
		}
		for _, h := range connects {
			if got := h.Get(name); got != want {
				return fmt.Errorf("a CONNECT carried %s %q, want %q", name, got, want)
			}
		}
		return nil
	}
}

// forwardProxy is an HTTP forward proxy for proxy_url: it takes requests in
// proxy form only (an absolute URL, or CONNECT), and sends them to fixed
// places whatever host they name. A block can so name a Consul server that
// does not resolve: what reaches the agent went through the proxy.
type forwardProxy struct {
	addr     string
	mu       sync.Mutex
	uris     []string      // of the requests forwarded, as sent
	connects []http.Header // of the CONNECTs
}

// startForwardProxy starts a forward proxy that sends plain requests to
// httpTarget and tunnels CONNECTs to tunnelTarget, each a host:port.
func startForwardProxy(t *testing.T, httpTarget, tunnelTarget string) *forwardProxy {
	t.Helper()
	f := &forwardProxy{}
	rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(&url.URL{Scheme: "http", Host: httpTarget}) }}
	f.addr = serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodConnect:
			f.mu.Lock()
			f.connects = append(f.connects, r.Header.Clone())
			f.mu.Unlock()
			tunnel(w, tunnelTarget)
		case r.URL.IsAbs():
			f.mu.Lock()
			f.uris = append(f.uris, r.RequestURI)
			f.mu.Unlock()
			rp.ServeHTTP(w, r)
		default:
			http.Error(w, "not a proxy request: "+r.RequestURI, http.StatusBadRequest)
		}
	}))
	return f
}

// seen returns what the proxy got: the request targets it forwarded, and
// the headers of the CONNECTs.
func (f *forwardProxy) seen() ([]string, []http.Header) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.uris), slices.Clone(f.connects)
}

// tunnel answers a CONNECT: it joins the client's connection to a new one
// to target, until either side closes.
func tunnel(w http.ResponseWriter, target string) {
	up, err := net.Dial("tcp", target)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		up.Close()
		return
	}
	rw.WriteString("HTTP/1.1 200 Connection established\r\n\r\n")
	rw.Flush()
	go func() { io.Copy(up, rw.Reader); up.Close() }() // rw.Reader holds what the client already sent
	go func() { io.Copy(conn, up); conn.Close() }()
}
