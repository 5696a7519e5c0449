package consulsd

import (
	"maps"
	"net/http"
	"sync"
	"weak"
)

// Dumps shares Consul's node dump between the Discoveries that read the
// same catalog with the same credentials: the blocks of a configuration
// file. A change wakes every block, and the dump, the cost of a located
// round, would otherwise be read once per block. Safe for concurrent use.
//
// The Discoveries that read a dump hold it; Dumps only points at it
// weakly, so that once no Discovery does (a reload gave their blocks
// another address or token), the dump and its digests, about 1 MB at
// 20,000 services, are collected.
type Dumps struct {
	mu     sync.Mutex
	shared map[dumpKey]weak.Pointer[sharedDump]
}

// NewDumps returns an empty Dumps.
func NewDumps() *Dumps { return &Dumps{shared: map[dumpKey]weak.Pointer[sharedDump]{}} }

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

// get returns the dump of cfg's catalog as cfg's credentials see it. The
// caller keeps it for as long as it reads that dump.
func (s *Dumps) get(cfg Config) *sharedDump {
	k := dumpKey{cfg.Address, cfg.Scheme, cfg.PathPrefix, cfg.Datacenter, cfg.Token, cfg.TokenFile, cfg.Namespace, cfg.Partition, cfg.Transport}
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := s.shared[k].Value(); d != nil {
		return d
	}
	// New settings, so maybe a reload: forget the dumps nobody reads.
	maps.DeleteFunc(s.shared, func(_ dumpKey, p weak.Pointer[sharedDump]) bool { return p.Value() == nil })
	d := &sharedDump{}
	s.shared[k] = weak.Make(d)
	return d
}
