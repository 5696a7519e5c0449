package sdconfig

import (
	"context"
	"net"
	"net/http"
	"reflect"
	"sync"

	"github.com/prometheus/common/config"
)

// Transports builds the HTTP transports of blocks from Prometheus's HTTP
// client settings (TLS, authorization, basic auth, OAuth2, proxy, headers),
// once per distinct setting: blocks on the same agent with the same
// settings share their connections, and a block left unchanged by a reload
// keeps its transports. Safe for concurrent use.
type Transports struct {
	mu   sync.Mutex
	made []madeTransports
}

type madeTransports struct {
	cfg         config.HTTPClientConfig
	socket      string
	keep, fresh http.RoundTripper
}

// get returns a transport that keeps connections alive, and one that opens
// a fresh connection per request (for blocking queries on the tables, see
// consulsd.New). With socket set they dial that Unix socket, whatever the
// request's host: the Consul client is then given a placeholder host (see
// consulsd's newClient), which a transport of TCP connections would try to
// resolve. Consul's own client swaps its HTTP client for one of its own on
// a socket, without the block's settings; these keep them.
func (t *Transports) get(cfg config.HTTPClientConfig, socket string) (keep, fresh http.RoundTripper, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range t.made {
		if m.socket == socket && reflect.DeepEqual(m.cfg, cfg) {
			return m.keep, m.fresh, nil
		}
	}
	var opts []config.HTTPClientOption
	if socket != "" {
		opts = append(opts, config.WithDialContextFunc(func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		}))
	}
	if keep, err = config.NewRoundTripperFromConfig(cfg, "consul_sd_adapter", opts...); err != nil {
		return nil, nil, err
	}
	if fresh, err = config.NewRoundTripperFromConfig(cfg, "consul_sd_adapter", append(opts, config.WithKeepAlivesDisabled())...); err != nil {
		return nil, nil, err
	}
	t.made = append(t.made, madeTransports{cfg: cfg, socket: socket, keep: keep, fresh: fresh})
	return keep, fresh, nil
}
