package consulsd

import (
	"net/http"
	"sync"
)

// Dumps shares Consul's node dump between the Discoveries that read the
// same catalog with the same credentials: the blocks of a configuration
// file. A change wakes every block, and the dump, the cost of a located
// round, would otherwise be read once per block. Safe for concurrent use.
type Dumps struct {
	mu     sync.Mutex
	shared map[dumpKey]*sharedDump
}

// NewDumps returns an empty Dumps.
func NewDumps() *Dumps { return &Dumps{shared: map[dumpKey]*sharedDump{}} }

// dumpKey is what makes two dumps the same: where they come from, and
// what the token may see of it.
type dumpKey struct {
	address, scheme, pathPrefix, datacenter string
	token, tokenFile, namespace, partition  string
	transport                               http.RoundTripper
}

// sharedDump holds the latest digests read of one dump. Its lock is held
// while one is read, so that the blocks a change woke together wait for
// one read instead of each making its own.
type sharedDump struct {
	mu      sync.Mutex
	index   uint64
	digests map[string]uint64 // never changed once read: Discoveries keep it
}

func (s *Dumps) get(cfg Config) *sharedDump {
	k := dumpKey{cfg.Address, cfg.Scheme, cfg.PathPrefix, cfg.Datacenter, cfg.Token, cfg.TokenFile, cfg.Namespace, cfg.Partition, cfg.Transport}
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.shared[k]
	if d == nil {
		d = &sharedDump{}
		s.shared[k] = d
	}
	return d
}
