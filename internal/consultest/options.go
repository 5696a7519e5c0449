package consultest

import "fmt"

// Option configures an agent started by Start.
type Option func(*config)

type config struct {
	aclToken string // initial management token; empty means ACLs off
	tls      *tlsFiles
	httpsToo bool // serve HTTPS next to plain HTTP rather than instead
	// role is "" for a dev agent, else "server" or "client" of a cluster;
	// join lists the serf LAN addresses of the cluster's servers, joinWAN
	// the serf WAN addresses of other datacenters' servers.
	role    string
	join    []string
	joinWAN []string
	extra   []string // more -hcl fragments
	// servers is how many servers a "server" waits for before the first
	// election (-bootstrap-expect): its datacenter's size.
	servers int
}

type tlsFiles struct {
	ca, cert, key string
}

// WithACL enables ACLs with default policy "deny" and token as the initial
// management token. The token is also the agent's own token (so the agent
// can keep its node registered) and the token of Agent.Client, so helpers
// keep working; build another client to test what other tokens may do.
func WithACL(token string) Option {
	return func(c *config) { c.aclToken = token }
}

// WithTLS serves the HTTP API over HTTPS only (plain HTTP is disabled),
// using the given PEM files. Client certificates are not required.
// Agent.Client trusts caFile. GenerateCerts creates suitable files.
func WithTLS(caFile, certFile, keyFile string) Option {
	return func(c *config) { c.tls = &tlsFiles{ca: caFile, cert: certFile, key: keyFile} }
}

// WithHTTPS serves the HTTP API over HTTPS (with HTTP/2, as every Consul
// HTTPS listener) at Agent.HTTPSAddr, next to plain HTTP at Agent.Addr, so
// that clients of both kinds can be measured against one catalog.
// Agent.Client stays on plain HTTP.
func WithHTTPS(caFile, certFile, keyFile string) Option {
	return func(c *config) {
		c.tls = &tlsFiles{ca: caFile, cert: certFile, key: keyFile}
		c.httpsToo = true
	}
}

// AsServer starts a single server as deployed instead of a dev agent: raft
// on disk, and answers not indented (a dev agent indents every JSON answer,
// which costs it CPU in proportion to the answer's size).
func AsServer() Option {
	return func(c *config) { c.role, c.servers = "server", 1 }
}

// WithHCL adds a fragment of agent configuration, passed with -hcl, for
// example `limits { http_max_conns_per_client = 8192 }`.
func WithHCL(fragment string) Option {
	return func(c *config) { c.extra = append(c.extra, fragment) }
}

// hcl returns the configuration fragment for the options, passed with -hcl.
// %q quoting is valid HCL for the paths and tokens used here.
func (c *config) hcl() []string {
	var out []string
	if c.aclToken != "" {
		out = append(out, fmt.Sprintf(
			`acl { enabled = true default_policy = "deny" tokens { initial_management = %q agent = %q } }`,
			c.aclToken, c.aclToken))
	}
	if c.tls != nil {
		out = append(out, fmt.Sprintf(
			`tls { defaults { ca_file = %q cert_file = %q key_file = %q verify_incoming = false verify_outgoing = false } }`,
			c.tls.ca, c.tls.cert, c.tls.key))
	}
	return append(out, c.extra...)
}
