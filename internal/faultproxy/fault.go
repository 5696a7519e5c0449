package faultproxy

import (
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Fault is what the proxy does to a request instead of, or on top of,
// forwarding it. The zero Fault forwards unchanged. Faults are values: use
// the predefined ones or Delay.
type Fault struct {
	kind   kind
	status int           // for kindStatus
	body   string        // for kindStatus
	delay  time.Duration // for kindDelay
	params []string      // for kindDropQuery
}

type kind int

const (
	kindNone kind = iota
	kindStatus
	kindHang
	kindReset
	kindTruncate
	kindBadJSON
	kindIndexBackwards
	kindDelay
	kindLagging
	kindDropQuery
	kindNewLeader
)

// The bodies mimic Consul's, which are plain text that clients such as
// github.com/hashicorp/consul/api put into their error messages.
var (
	// Status500 answers 500 as a server without a leader does.
	Status500 = statusFault(http.StatusInternalServerError, "No cluster leader")
	// Status403 answers 403 as for a valid token that lacks a permission.
	Status403 = statusFault(http.StatusForbidden, "Permission denied: token with AccessorID 'faultproxy' lacks permission 'service:read'")
	// ACLNotFound answers 403 as for a token Consul does not know (deleted
	// or mistyped).
	ACLNotFound = statusFault(http.StatusForbidden, "ACL not found")
	// Status429 answers 429 as Consul does when a client holds too many
	// connections (limits.http_max_conns_per_client).
	Status429 = statusFault(http.StatusTooManyRequests, "Your IP is issuing too many concurrent connections, please rate limit your calls")
	// Status503 answers 503 as Consul's request rate limiter does.
	Status503 = statusFault(http.StatusServiceUnavailable, "rate limit exceeded, try again later or against a different server")

	// Hang holds the request, answering nothing, until the client gives up
	// or the proxy is closed.
	Hang = Fault{kind: kindHang}
	// Reset closes the connection with a TCP RST before answering, as a
	// crashed agent or a firewall does.
	Reset = Fault{kind: kindReset}
	// Truncate forwards the request, sends the agent's status and headers
	// with a Content-Length for the full body, but only half the body, then
	// closes the connection.
	Truncate = Fault{kind: kindTruncate}
	// BadJSON answers 200 with the body `{not json`.
	BadJSON = Fault{kind: kindBadJSON}
	// IndexBackwards forwards the request and rewrites the X-Consul-Index
	// response header to 1, as seen when an agent's raft index goes back
	// (a restored snapshot, a replaced server).
	IndexBackwards = Fault{kind: kindIndexBackwards}
	// Lagging answers stale reads (requests with ?stale) as a follower
	// that stopped applying the leader's writes would: the first one for a
	// path is forwarded and its answer kept, and every later one for that
	// path gets the kept answer, whatever its query and index. Reads
	// without ?stale, which the leader answers, pass through.
	Lagging = Fault{kind: kindLagging}
	// NewLeader answers as a server just elected leader that has not yet
	// applied its log: every read without ?consistent, stale or not, gets
	// the answer kept for the path (see Proxy.Keep; else the first such
	// read's), and consistent reads get 500 "Not ready to serve consistent
	// reads", as Consul refuses them until the leader has caught up.
	NewLeader = Fault{kind: kindNewLeader}
)

// Answer answers with code and body instead of the agent, as a server
// that says something else would: a list of datacenters without one.
func Answer(code int, body string) Fault { return statusFault(code, body) }

func statusFault(code int, body string) Fault {
	return Fault{kind: kindStatus, status: code, body: body}
}

// Delay forwards the request after d, or drops it if the client gives up or
// the proxy closes first.
func Delay(d time.Duration) Fault {
	return Fault{kind: kindDelay, delay: d}
}

// DropQuery forwards the request without the named query parameters, which
// Seen still shows as sent. It lets a client's parameters that the agent
// would refuse reach the proxy: the OSS agent answers any ns or partition
// with 400, as namespaces and partitions are Consul Enterprise's.
func DropQuery(params ...string) Fault {
	return Fault{kind: kindDropQuery, params: params}
}

// String names the fault, for test names and failure messages.
func (f Fault) String() string {
	switch f.kind {
	case kindNone:
		return "None"
	case kindStatus:
		if f.body == ACLNotFound.body {
			return "ACLNotFound"
		}
		return fmt.Sprintf("Status%d", f.status)
	case kindHang:
		return "Hang"
	case kindReset:
		return "Reset"
	case kindTruncate:
		return "Truncate"
	case kindBadJSON:
		return "BadJSON"
	case kindIndexBackwards:
		return "IndexBackwards"
	case kindDelay:
		return fmt.Sprintf("Delay(%s)", f.delay)
	case kindLagging:
		return "Lagging"
	case kindDropQuery:
		return fmt.Sprintf("DropQuery(%s)", strings.Join(f.params, ","))
	case kindNewLeader:
		return "NewLeader"
	}
	return fmt.Sprintf("Fault(%d)", f.kind)
}
