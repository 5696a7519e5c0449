package sdconfig

import (
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
	keep, fresh http.RoundTripper
}

// get returns a transport that keeps connections alive, and one that opens
// a fresh connection per request (for blocking queries on the tables, see
// consulsd.New).
func (t *Transports) get(cfg config.HTTPClientConfig) (keep, fresh http.RoundTripper, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range t.made {
		if reflect.DeepEqual(m.cfg, cfg) {
			return m.keep, m.fresh, nil
		}
	}
	if keep, err = config.NewRoundTripperFromConfig(cfg, "consul_sd_adapter"); err != nil {
		return nil, nil, err
	}
	if fresh, err = config.NewRoundTripperFromConfig(cfg, "consul_sd_adapter", config.WithKeepAlivesDisabled()); err != nil {
		return nil, nil, err
	}
	t.made = append(t.made, madeTransports{cfg: cfg, keep: keep, fresh: fresh})
	return keep, fresh, nil
}
