package consulsd

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/go-kit/log/level"
	"github.com/hashicorp/consul/api"
	"golang.org/x/time/rate"
)

// matchNothing is a filter no entry satisfies. Consul computes a query's
// X-Consul-Index before filtering, so a filtered query is a cheap way to read
// the index of a whole table without transferring the table.
const matchNothing = `Node == "consul-sd-adapter/no-such-node"`

// watchWait is the longest a blocking query waits for a change.
const watchWait = 5 * time.Minute

// watchedTables is how many blocking queries the watch keeps open.
const watchedTables = 3

// catalogState holds the Raft indexes of the three tables that a service's
// health entries are built from. While none of them moves, no instance,
// label or health status can have changed, so a round can skip the
// per-service queries.
type catalogState struct {
	services uint64 // registrations, deregistrations, tags, meta, addresses
	nodes    uint64 // node addresses, node meta, tagged addresses
	checks   uint64 // health
}

// highest is the highest of the indexes: a server whose answer is below it
// has not applied every write the state shows.
func (s catalogState) highest() uint64 {
	return max(s.services, s.nodes, s.checks)
}

// before reports whether any index of s is lower than in t.
func (s catalogState) before(t catalogState) bool {
	return s.services < t.services || s.nodes < t.nodes || s.checks < t.checks
}

// indexRead is a read whose answer we ignore: only the index in its
// QueryMeta matters.
type indexRead func(*api.QueryOptions) (*api.QueryMeta, error)

// indexQuery is a blocking-capable indexRead of one table.
type indexQuery struct {
	name  string
	query indexRead
}

func indexQueries(c *api.Client) []indexQuery {
	return []indexQuery{
		{"services", func(o *api.QueryOptions) (*api.QueryMeta, error) {
			_, meta, err := c.Catalog().Services(o)
			return meta, err
		}},
		{"nodes", nodesIndex(c)},
		{"checks", func(o *api.QueryOptions) (*api.QueryMeta, error) {
			o.Filter = matchNothing
			_, meta, err := c.Health().State(api.HealthAny, o)
			return meta, err
		}},
	}
}

// nodesIndex reads the nodes table's index. Nodes are few, so the filter
// pass over them is cheap.
func nodesIndex(c *api.Client) indexRead {
	return func(o *api.QueryOptions) (*api.QueryMeta, error) {
		o.Filter = matchNothing
		_, meta, err := c.Catalog().Nodes(o)
		return meta, err
	}
}

// noSuchService is a service name nobody registers. Consul answers a
// service's checks with the index of the whole checks table, so asking for
// this one's reads that index without the filter pass over every check that
// the watch's query costs (7 ms of the agent's CPU at 10,000 checks, 78 ms
// at 50,000; make bench measures both).
const noSuchService = "consul-sd-adapter-no-such-service"

// checksIndex reads the checks table's index, as a plain read only: a
// blocking query on noSuchService would wait on that name's checks, not
// the table's.
func checksIndex(c *api.Client) indexRead {
	return func(o *api.QueryOptions) (*api.QueryMeta, error) {
		_, meta, err := c.Health().Checks(noSuchService, o)
		return meta, err
	}
}

// readState reads the nodes and checks indexes; the services index comes
// from the round's own service listing.
func (d *Discovery) readState(ctx context.Context, servicesIndex uint64, stale bool) (catalogState, error) {
	var indexes [2]uint64
	for i, read := range [...]indexRead{nodesIndex(d.client), checksIndex(d.client)} {
		rctx, cancel := context.WithTimeout(ctx, d.cfg.RequestTimeout)
		opts := d.queryOptions(rctx)
		d.readAs(opts, stale)
		meta, err := read(opts)
		cancel()
		if err != nil {
			return catalogState{}, err
		}
		indexes[i] = meta.LastIndex
	}
	return catalogState{services: servicesIndex, nodes: indexes[0], checks: indexes[1]}, nil
}

// watch runs one blocking query per table and signals wake whenever an index
// moves, so a change reaches the file without waiting for the next tick. It
// returns a function that stops them.
func (d *Discovery) watch(ctx context.Context, wake chan<- struct{}) (stop func()) {
	ctx, stop = context.WithCancel(ctx)
	for _, q := range indexQueries(d.watchClient) {
		go d.watchIndex(ctx, q, wake)
	}
	return stop
}

// watchedIndexes holds the index each table's blocking query last
// returned, 0 after it failed or went backwards: a wake whose indexes the
// last round already read needs no round (see sawEverything).
type watchedIndexes struct{ services, nodes, checks atomic.Uint64 }

func (w *watchedIndexes) of(table string) *atomic.Uint64 {
	switch table {
	case "services":
		return &w.services
	case "nodes":
		return &w.nodes
	}
	return &w.checks
}

// sawEverything reports whether the last round read every index the watch
// has seen: a registration moves two or three tables at once, their
// blocking queries return one after the other, and each wakes the loop.
// Only Run's goroutine may call it.
func (d *Discovery) sawEverything() bool {
	if d.resync.Load() || d.unsettled || d.snapshot == nil {
		return false
	}
	w := catalogState{d.watched.services.Load(), d.watched.nodes.Load(), d.watched.checks.Load()}
	return w.services != 0 && w.nodes != 0 && w.checks != 0 && !d.state.before(w)
}

// watchIndex follows Consul's rules for blocking queries: the index never
// goes below 1, is reset when it goes backwards (a restored snapshot,
// another server) or after an error, and the client waits longer than the
// server may hold the request (wait plus up to wait/16 of jitter).
func (d *Discovery) watchIndex(ctx context.Context, q indexQuery, wake chan<- struct{}) {
	var index uint64
	failures := 0
	// A blocking query that keeps returning at once (an index stuck below
	// the server's, a proxy that rewrites it) must not become a hot loop.
	limiter := rate.NewLimiter(rate.Every(d.cfg.MinRoundInterval), 1)
	for limiter.Wait(ctx) == nil {
		rctx, cancel := context.WithTimeout(ctx, watchWait+watchWait/16+d.cfg.RequestTimeout)
		opts := d.queryOptions(rctx)
		opts.WaitIndex, opts.WaitTime = index, watchWait
		meta, err := q.query(opts)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// Consul may come back with less state than before (a restart,
			// an older snapshot): an old index would then block until the
			// wait ends instead of noticing the change.
			index = 0
			d.watched.of(q.name).Store(0)
			d.resync.Store(true)
			failures++
			delay := retryDelay(failures, d.cfg.RefreshInterval)
			level.Debug(d.logger).Log("msg", "Watch failed, retrying", "table", q.name, "err", err, "retry_in", delay)
			if !sleep(ctx, delay) {
				return
			}
			continue
		}
		if failures > 0 {
			signal(wake) // back after an outage: what changed meanwhile is unknown
		}
		failures = 0
		// An index below 1 would make the next query return at once.
		next := max(meta.LastIndex, 1)
		if next < index {
			d.watched.of(q.name).Store(0) // a round must look
		} else {
			d.watched.of(q.name).Store(next)
		}
		if index != 0 && next != index {
			// Moved on, or went backwards (a restored snapshot, another
			// server): either way refresh, and follow the server's index
			// from here on rather than wait for it to pass the old one.
			signal(wake)
		}
		index = next
	}
}

// signal wakes the round without blocking; one pending wake is enough.
func signal(wake chan<- struct{}) {
	select {
	case wake <- struct{}{}:
	default:
	}
}

// sleep waits for d or until ctx ends, and reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
