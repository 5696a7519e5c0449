package consulsd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strings"

	"github.com/go-kit/log/level"
	"github.com/hashicorp/consul/api"
)

// The tables watch says that the catalog changed, not where, and querying
// every service to find out cost a round of one request per service for
// every change: at 2,000 services, thousands of requests a change. One
// bulk answer says where: the node dump that Consul's web UI reads
// (/v1/internal/ui/nodes). It holds every node with its address and meta,
// every service instance on it with its ModifyIndex, and every check with
// its own; Consul moves an instance's ModifyIndex on any change to it (a
// port, an address, meta, tags), and a check's on any change to the check.
// So everything a /v1/health/service answer shows is in it: a round
// compares a digest per service with the last round's, and queries only
// the services whose digest moved. No kind of change is left for a full
// round to catch. The same digest of a service's answer, read with stale
// reads, tells whether the server that answered was behind the dump.
//
// The dump is one request, but it grows with the catalog (about 600 bytes
// an instance with one check) and Consul spends CPU in proportion, so it
// is read only when the services or nodes table moved; a move of the
// checks table alone takes the cheaper health round (health.go). The
// endpoint is internal to Consul: where it is not served (a proxy that
// allows only public paths, a future Consul), rounds fall back to querying
// every service.

// dumpPath is the node dump's endpoint.
const dumpPath = "/v1/internal/ui/nodes"

// dumpNode holds the fields of a node dump's element that the digests read
// (see readDigests): Consul sends every field of each instance and check.
type dumpNode struct {
	ID, Node, Address     string
	TaggedAddresses, Meta map[string]string
	Services              []dumpService
	Checks                []dumpCheck
}

type dumpService struct {
	ID, Service string
	ModifyIndex uint64
}

type dumpCheck struct {
	CheckID, ServiceID, ServiceName string
	ModifyIndex                     uint64
}

// located is what a located round found: the digests it read, and the
// services whose digest moved.
type located struct {
	digests map[string]uint64
	dirty   map[string]bool
}

// locate reads the node dump and returns the services whose digest differs
// from the last round's, or nil when Consul does not serve the dump. floor
// is the highest index the round read: with stale reads, a dump from a
// server behind it fails with errBehind, as it may miss the change.
func (d *Discovery) locate(ctx context.Context, floor uint64, stale bool) (*located, error) {
	digests, err := d.readDigests(ctx, floor, stale)
	if digests == nil || err != nil {
		return nil, err
	}
	return &located{digests: digests, dirty: moved(d.digests, digests)}, nil
}

// readDigests reads the node dump into a digest per service name of
// everything its instances' targets show (see answerDigest). It returns nil
// digests, and turns locating off, when Consul does not serve the dump.
func (d *Discovery) readDigests(ctx context.Context, floor uint64, stale bool) (map[string]uint64, error) {
	if d.cfg.Dumps == nil || d.confirming {
		digests, _, err := d.readDigestsOnce(ctx, floor, stale)
		return digests, err
	}
	// A dump another block read is as good as a new one if it is as new
	// as this round's indexes.
	if d.dump == nil {
		d.dump = d.cfg.Dumps.get(d.cfg)
	}
	shared := d.dump
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.digests != nil && shared.index >= floor {
		return shared.digests, nil
	}
	digests, index, err := d.readDigestsOnce(ctx, floor, stale)
	if digests != nil && index >= shared.index {
		shared.digests, shared.index = digests, index
	}
	return digests, err
}

// readDigestsOnce reads the dump's digests, and its index.
func (d *Discovery) readDigestsOnce(ctx context.Context, floor uint64, stale bool) (map[string]uint64, uint64, error) {
	digests := map[string]uint64{}
	var h digester
	index, err := d.readDump(ctx, floor, stale, func(n *dumpNode) { h.add(digests, n) })
	if notServed(err) {
		level.Warn(d.logger).Log("msg", "Consul does not serve its node dump; every change now costs a query of every service", "path", dumpPath, "err", err)
		d.noDump = true
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	return digests, index, nil
}

// notServed reports whether err says that Consul, or a proxy in front of
// it, does not serve the node dump at all: 404, or a 403 that is not
// about the token.
func notServed(err error) bool {
	var status api.StatusError
	if !errors.As(err, &status) {
		return false
	}
	return status.Code == http.StatusNotFound ||
		status.Code == http.StatusForbidden && !strings.Contains(status.Body, "ACL not found")
}

// moved returns the services whose digest differs between prev and next,
// those gone from next too.
func moved(prev, next map[string]uint64) map[string]bool {
	dirty := map[string]bool{}
	for name, digest := range next {
		if old, ok := prev[name]; !ok || old != digest {
			dirty[name] = true
		}
	}
	for name := range prev {
		if _, ok := next[name]; !ok {
			dirty[name] = true
		}
	}
	return dirty
}

// answerDigest is the digest of a service from its answer, as the dump's
// is made (each entry is one node with one instance): the two agree when
// both hold the same instances, checks and nodes. One difference remains:
// the dump adds a consul-version key to the meta of a node at a cluster
// member's address whose meta lacks it (registered by hand there, or by an
// older Consul; the leader records it for the members it registers); such
// a node's services never agree, and are read again from the leader
// whenever read.
func answerDigest(name string, entries []*api.ServiceEntry) uint64 {
	var h digester
	digests := map[string]uint64{}
	for _, e := range entries {
		n := dumpNode{ID: e.Node.ID, Node: e.Node.Node, Address: e.Node.Address, TaggedAddresses: e.Node.TaggedAddresses, Meta: e.Node.Meta}
		n.Services = append(n.Services, dumpService{ID: e.Service.ID, Service: e.Service.Service, ModifyIndex: e.Service.ModifyIndex})
		for _, c := range e.Checks {
			n.Checks = append(n.Checks, dumpCheck{CheckID: c.CheckID, ServiceID: c.ServiceID, ServiceName: c.ServiceName, ModifyIndex: c.ModifyIndex})
		}
		h.add(digests, &n)
	}
	return digests[name]
}

var digestSeed = maphash.MakeSeed()

// digester hashes the parts of a digest. NUL cannot occur in Consul's
// names, so different parts never give the same input.
type digester struct{ maphash.Hash }

// add adds what a node holds to the digests of its services: each
// instance, with its node (address, meta, the node's own checks), and each
// check of an instance. Sums, so that the order of nodes, instances and
// checks does not matter.
func (h *digester) add(digests map[string]uint64, n *dumpNode) {
	var nodeChecks uint64
	for _, c := range n.Checks {
		if c.ServiceID == "" {
			nodeChecks += h.check(n.Node, "", c.CheckID, c.ModifyIndex)
		}
	}
	node := h.node(n.ID, n.Node, n.Address, n.TaggedAddresses, n.Meta, nodeChecks)
	for _, s := range n.Services {
		digests[s.Service] += h.instance(node, s.ID, s.ModifyIndex)
	}
	for _, c := range n.Checks {
		if c.ServiceID != "" {
			digests[c.ServiceName] += h.check(n.Node, c.ServiceID, c.CheckID, c.ModifyIndex)
		}
	}
}

// node hashes what a node shows on its instances' targets; checks is the
// sum of its own checks' digests.
func (h *digester) node(id, node, address string, tagged, meta map[string]string, checks uint64) uint64 {
	h.SetSeed(digestSeed)
	h.str(id, node, address)
	for _, m := range []map[string]string{tagged, meta} {
		h.num(uint64(len(m)))
		for _, k := range slices.Sorted(maps.Keys(m)) {
			h.str(k, m[k])
		}
	}
	h.num(checks)
	return h.Sum64()
}

// instance hashes a service instance on a node: Consul moves its
// ModifyIndex on any change to it.
func (h *digester) instance(node uint64, id string, modify uint64) uint64 {
	h.SetSeed(digestSeed)
	h.num(node)
	h.str(id)
	h.num(modify)
	return h.Sum64()
}

// check hashes a check, a node's own for an empty serviceID.
func (h *digester) check(node, serviceID, checkID string, modify uint64) uint64 {
	h.SetSeed(digestSeed)
	h.str(node, serviceID, checkID)
	h.num(modify)
	return h.Sum64()
}

func (h *digester) str(parts ...string) {
	for _, p := range parts {
		h.WriteString(p)
		h.WriteByte(0)
	}
}

func (h *digester) num(n uint64) {
	maphash.WriteComparable(&h.Hash, n)
}

// readDump reads the node dump, handing each node to each as it arrives;
// with stale reads, a dump below floor fails with errBehind. At 100,000
// instances the dump is about 100 MB of JSON: decoded whole, as Consul's
// client does, it would double the adapter's memory for a moment on every
// change.
func (d *Discovery) readDump(ctx context.Context, floor uint64, stale bool, each func(*dumpNode)) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.RequestTimeout)
	defer cancel()
	opts := d.queryOptions(context.WithValue(ctx, bodySinkKey{}, bodySink(func(r io.Reader) error {
		return eachElement(r, func(dec *json.Decoder) error {
			var n dumpNode
			if err := dec.Decode(&n); err != nil {
				return err
			}
			each(&n)
			return nil
		})
	})))
	d.readAs(opts, stale)
	var none []struct{}
	meta, err := d.client.Raw().Query(dumpPath, &none, opts)
	if err == nil && stale && meta.LastIndex < floor {
		err = fmt.Errorf("at index %d, below %d: %w", meta.LastIndex, floor, errBehind)
	}
	if err != nil {
		return 0, fmt.Errorf("reading the node dump: %w", err)
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
