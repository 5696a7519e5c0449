package consulsd

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/prometheus/discovery/targetgroup"
	"golang.org/x/sync/errgroup"
)

// The tables watch says that the catalog changed, not where. Querying every
// service to find out cost a full round per change: at 2,000 services over
// plain HTTP, about a thousand requests. Three bulk answers that Consul
// gives in one request each say where most changes are:
//
//   - the service list (/v1/catalog/services): services that came, went or
//     changed their tags;
//   - every health check (/v1/health/state/any) with its ModifyIndex and
//     service: instances registered or deregistered with checks, health,
//     maintenance;
//   - every node (/v1/catalog/nodes) with its ModifyIndex: node addresses
//     and meta, nodes that came or went.
//
// A round then queries only the services these point at: for a node, the
// services with an instance on it (with a filter on nodes, also those it
// left out, which the node's own list of services names). What none of them
// shows is a change to an instance that touches neither its checks, its
// tags nor its node: a new port, address or meta, or an instance without
// checks registered or removed. Such a change still moves the services
// table's index; when that move is all a round sees, it queries every
// service. When it coincides with a change the lists do show, the located
// round cannot tell, so after any located round that saw the services index
// move, a full round follows within one refresh interval.

// locator holds the bulk answers of the last round, to compare with the
// next one's.
type locator struct {
	// tags holds a hash of each listed service's tags.
	tags map[string]uint64
	// checks holds, for each service and each node with checks of its
	// own, a digest of its checks' identities and ModifyIndexes: a check
	// added, removed or modified changes its owner's digest. A digest per
	// owner rather than an entry per check: at 100,000 checks the
	// difference is ten megabytes held for good.
	checks map[checkOwner]uint64
	// nodes holds each node's ModifyIndex, by a hash of its identity.
	nodes map[uint64]nodeMark
}

// checkOwner is what a check belongs to: a service (by the hash of its
// name), or for a node's own check, the node.
type checkOwner struct {
	service uint64 // identity(name); 0 for a node's own check
	node    string // only for a node's own check
}

type nodeMark struct {
	modify uint64
	node   string
}

// compare calls changed with the key of every entry of next that is new
// or differs from prev's, and of every entry of prev that is gone.
func compare[K comparable, V comparable](prev, next map[K]V, changed func(K, V)) {
	for k, v := range next {
		if old, ok := prev[k]; !ok || old != v {
			changed(k, v)
		}
	}
	for k, old := range prev {
		if _, ok := next[k]; !ok {
			changed(k, old)
		}
	}
}

// checkEntry and nodeEntry are the fields of the bulk answers the locator
// reads, one element at a time (see readList): Consul sends every field of
// a check, and 100,000 of them decoded whole would take a hundred megabytes.
type checkEntry struct {
	Node, CheckID, ServiceName, Namespace, Partition string
	ModifyIndex                                      uint64
}

type nodeEntry struct {
	Node, Partition string
	ModifyIndex     uint64
}

var identitySeed = maphash.MakeSeed()

// identity hashes parts that name one thing; NUL cannot occur in Consul's
// names, so different parts never give the same string.
func identity(parts ...string) uint64 {
	var h maphash.Hash
	h.SetSeed(identitySeed)
	for _, p := range parts {
		h.WriteString(p)
		h.WriteByte(0)
	}
	return h.Sum64()
}

// tagHashes hashes each listed service's tags, in any order: Consul lists
// the union of its instances' tags in no fixed one. Every service counts,
// those not discovered too: a change to one (the agent re-registering its
// own "consul" service) moves the services index, and must explain the
// move rather than cost a full round. Only rounds that compare lists need
// the hashes, not quiet ones.
func tagHashes(services map[string][]string) map[string]uint64 {
	hashes := make(map[string]uint64, len(services))
	for name, tags := range services {
		sorted := slices.Clone(tags)
		slices.Sort(sorted)
		hashes[name] = identity(sorted...)
	}
	return hashes
}

// readChecks reads every check, and its index; with stale reads it fails
// with errBehind on a list older than the one the targets hold.
func (d *Discovery) readChecks(ctx context.Context, stale bool) (map[checkOwner]uint64, uint64, error) {
	checks := map[checkOwner]uint64{}
	index, err := readList(ctx, d, "/v1/health/state/any", "health checks", d.state.checks, stale, func(c checkEntry) {
		owner := checkOwner{node: c.Node}
		if c.ServiceName != "" {
			owner = checkOwner{service: identity(c.ServiceName)}
		}
		// A sum, so that the order of the list does not matter.
		checks[owner] += identity(c.Partition, c.Namespace, c.Node, c.CheckID, strconv.FormatUint(c.ModifyIndex, 10))
	})
	return checks, index, err
}

// readNodes reads every node, and its index, as readChecks does checks.
func (d *Discovery) readNodes(ctx context.Context, stale bool) (map[uint64]nodeMark, uint64, error) {
	nodes := map[uint64]nodeMark{}
	index, err := readList(ctx, d, "/v1/catalog/nodes", "nodes", d.state.nodes, stale, func(n nodeEntry) {
		nodes[identity(n.Partition, n.Node)] = nodeMark{modify: n.ModifyIndex, node: n.Node}
	})
	return nodes, index, err
}

// readList reads a list from Consul, handing each element to each as it
// arrives, and returns the list's index; with stale reads, a list below
// floor fails with errBehind. At 100,000 checks the list is 40 MB of JSON:
// decoded whole, as Consul's client does, it would double the adapter's
// memory for a moment on every change.
func readList[T any](ctx context.Context, d *Discovery, path, what string, floor uint64, stale bool, each func(T)) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.RequestTimeout)
	defer cancel()
	opts := d.queryOptions(context.WithValue(ctx, bodySinkKey{}, bodySink(func(r io.Reader) error {
		return eachElement(r, func(dec *json.Decoder) error {
			var v T
			if err := dec.Decode(&v); err != nil {
				return err
			}
			each(v)
			return nil
		})
	})))
	d.readAs(opts, stale)
	var none []struct{}
	meta, err := d.client.Raw().Query(path, &none, opts)
	if err == nil && stale && meta.LastIndex < floor {
		err = fmt.Errorf("at index %d, below %d: %w", meta.LastIndex, floor, errBehind)
	}
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", what, err)
	}
	return meta.LastIndex, nil
}

// eachElement calls each for every element of the JSON array in r, with
// the decoder positioned at it.
func eachElement(r io.Reader, each func(*json.Decoder) error) error {
	dec := json.NewDecoder(r)
	if tok, err := dec.Token(); err != nil {
		return err
	} else if tok != json.Delim('[') {
		return &json.UnmarshalTypeError{Value: fmt.Sprint(tok), Type: reflect.TypeFor[[]any]()}
	}
	for dec.More() {
		if err := each(dec); err != nil {
			return err
		}
	}
	_, err := dec.Token() // the closing bracket
	return err
}

// bodySink, set on a request's context, consumes the body of a successful
// answer as it arrives. Consul's client takes the rest of the answer (its
// status, its index and other headers) as it is, and an empty list for
// body.
type bodySink func(io.Reader) error

type bodySinkKey struct{}

// sinkTransport hands the bodies of requests with a bodySink to it.
type sinkTransport struct{ next http.RoundTripper }

func (t *sinkTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(r)
	sink, ok := r.Context().Value(bodySinkKey{}).(bodySink)
	if err != nil || !ok || resp.StatusCode != http.StatusOK {
		return resp, err
	}
	err = sink(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body, resp.ContentLength = io.NopCloser(strings.NewReader("[]")), 2
	return resp, nil
}

// located is what a located round found.
type located struct {
	next  locator
	state catalogState
	dirty map[string]bool
}

// locate compares the bulk answers that moved since the last round with
// the ones held, and returns the services whose instances may have
// changed. listed holds the tags hash of every service listed now; only
// the discovered ones among the services marked are queried.
func (d *Discovery) locate(ctx context.Context, listed map[string]uint64, state catalogState, stale bool) (*located, error) {
	l := &located{next: *d.loc, state: state, dirty: map[string]bool{}}
	l.next.tags = listed
	for name, tags := range listed {
		if old, ok := d.loc.tags[name]; !ok || old != tags {
			l.dirty[name] = true
		}
	}
	for name := range d.loc.tags {
		if _, ok := listed[name]; !ok {
			l.dirty[name] = true // gone: nothing to query, but it explains the move
		}
	}
	dirtyNodes := map[string]bool{}
	if state.checks != d.state.checks {
		checks, index, err := d.readChecks(ctx, stale)
		if err != nil {
			return nil, err
		}
		dirtyServices := map[uint64]bool{}
		compare(d.loc.checks, checks, func(o checkOwner, _ uint64) {
			if o.service != 0 {
				dirtyServices[o.service] = true
			} else {
				dirtyNodes[o.node] = true
			}
		})
		if len(dirtyServices) > 0 {
			for name := range listed {
				if dirtyServices[identity(name)] {
					l.dirty[name] = true
				}
			}
		}
		l.next.checks, l.state.checks = checks, index
	}
	if state.nodes != d.state.nodes {
		nodes, index, err := d.readNodes(ctx, stale)
		if err != nil {
			return nil, err
		}
		compare(d.loc.nodes, nodes, func(_ uint64, n nodeMark) { dirtyNodes[n.node] = true })
		l.next.nodes, l.state.nodes = nodes, index
	}
	if len(dirtyNodes) > 0 {
		for _, g := range d.snapshot {
			if onNodes(g, dirtyNodes) {
				l.dirty[g.Source] = true
			}
		}
		if d.cfg.Filter != "" || len(d.cfg.NodeMeta) > 0 {
			// A filter on nodes may have left out an instance that a
			// node's change lets in: it is in no group, so ask each
			// node what it runs.
			if err := d.servicesOnNodes(ctx, dirtyNodes, stale, l.dirty); err != nil {
				return nil, err
			}
		}
	}
	return l, nil
}

// servicesOnNodes adds the services registered on nodes to dirty.
func (d *Discovery) servicesOnNodes(ctx context.Context, nodes map[string]bool, stale bool, dirty map[string]bool) error {
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(d.cfg.MaxConcurrency)
	for node := range nodes {
		g.Go(func() error {
			rctx, cancel := context.WithTimeout(gctx, d.cfg.RequestTimeout)
			defer cancel()
			opts := d.queryOptions(rctx)
			d.readAs(opts, stale)
			list, _, err := d.client.Catalog().NodeServiceList(node, opts)
			if err != nil {
				return fmt.Errorf("reading the services of node %q: %w", node, err)
			}
			if list == nil {
				return nil // the node is gone
			}
			mu.Lock()
			defer mu.Unlock()
			for _, svc := range list.Services {
				dirty[svc.Service] = true
			}
			return nil
		})
	}
	return g.Wait()
}

// onNodes reports whether any target of g is on one of nodes.
func onNodes(g *targetgroup.Group, nodes map[string]bool) bool {
	if node, ok := g.Labels[nodeLabel]; ok {
		return nodes[string(node)]
	}
	for _, t := range g.Targets {
		if nodes[string(t[nodeLabel])] {
			return true
		}
	}
	return false
}

// baseline reads the bulk answers a full round leaves for the next round
// to compare with. They are read before the services are queried, so that
// a change during the round shows in the next comparison.
func (d *Discovery) baseline(ctx context.Context, listed map[string]uint64, state catalogState, stale bool) (*locator, catalogState, error) {
	checks, checksIndex, err := d.readChecks(ctx, stale)
	if err != nil {
		return nil, state, err
	}
	nodes, nodesIndex, err := d.readNodes(ctx, stale)
	if err != nil {
		return nil, state, err
	}
	state.checks, state.nodes = checksIndex, nodesIndex
	return &locator{tags: listed, checks: checks, nodes: nodes}, state, nil
}

// verifyDue reports whether a full round is owed: a located round saw the
// services index move a refresh interval ago or more.
func (d *Discovery) verifyDue(now time.Time) bool {
	return !d.verifyBy.IsZero() && !now.Before(d.verifyBy)
}
