package consulsd

import (
	"net"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unique"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	"github.com/prometheus/prometheus/util/strutil"
)

// Label names, identical to those of Prometheus's built-in consul_sd_configs so
// that relabel rules written for one work unchanged with the other.
const (
	// addressLabel is the node's address.
	addressLabel = model.MetaLabelPrefix + "consul_address"
	// nodeLabel is the node's name.
	nodeLabel = model.MetaLabelPrefix + "consul_node"
	// nodeMetaLabelPrefix prefixes one label per node meta key.
	nodeMetaLabelPrefix = model.MetaLabelPrefix + "consul_metadata_"
	// serviceMetaLabelPrefix prefixes one label per service meta key.
	serviceMetaLabelPrefix = model.MetaLabelPrefix + "consul_service_metadata_"
	// taggedAddressLabelPrefix prefixes one label per node tagged address.
	taggedAddressLabelPrefix = model.MetaLabelPrefix + "consul_tagged_address_"
	// tagsLabel holds the instance's tags, wrapped in the separator.
	tagsLabel = model.MetaLabelPrefix + "consul_tags"
	// serviceLabel is the service's name.
	serviceLabel = model.MetaLabelPrefix + "consul_service"
	// serviceIDLabel is the instance's service ID.
	serviceIDLabel = model.MetaLabelPrefix + "consul_service_id"
	// serviceAddressLabel is the instance's own address; empty when it uses the node's.
	serviceAddressLabel = model.MetaLabelPrefix + "consul_service_address"
	// servicePortLabel is the instance's port.
	servicePortLabel = model.MetaLabelPrefix + "consul_service_port"
	// healthLabel is the aggregated status of the instance's checks.
	healthLabel = model.MetaLabelPrefix + "consul_health"
	// datacenterLabel is the datacenter the instance was found in.
	datacenterLabel = model.MetaLabelPrefix + "consul_dc"
	// namespaceLabel is the instance's namespace (Consul Enterprise only).
	namespaceLabel = model.MetaLabelPrefix + "consul_namespace"
	// partitionLabel is the instance's admin partition (Consul Enterprise only).
	partitionLabel = model.MetaLabelPrefix + "consul_partition"
)

// labelPair is one label of an instance, before it goes into a map.
type labelPair struct {
	name  model.LabelName
	value model.LabelValue
	// fromNode marks the node's values, which every instance on the node
	// repeats: a group stores them interned.
	fromNode bool
}

// targetLabels returns all labels of one service instance, as Prometheus's
// Consul SD sets them (empty ones included).
func targetLabels(e *api.ServiceEntry, tagSeparator string) model.LabelSet {
	pairs := appendInstanceLabels(nil, e, tagSeparator)
	labels := make(model.LabelSet, len(pairs))
	for _, p := range pairs {
		labels[p.name] = p.value
	}
	return labels
}

// appendInstanceLabels appends the labels of one service instance to dst,
// always in the same order for the same names. Everything comes from the
// entry itself: each instance carries its own node, meta and health.
func appendInstanceLabels(dst []labelPair, e *api.ServiceEntry, tagSeparator string) []labelPair {
	node, svc := e.Node, e.Service
	port := strconv.Itoa(svc.Port)

	// A service address, when set, wins over the node's: the service may be
	// registered on one node on behalf of another host (as Prometheus does).
	host := svc.Address
	if host == "" {
		host = node.Address
	}

	dst = append(dst,
		labelPair{name: model.AddressLabel, value: model.LabelValue(net.JoinHostPort(host, port))},
		labelPair{name: addressLabel, value: model.LabelValue(node.Address), fromNode: true},
		labelPair{name: nodeLabel, value: model.LabelValue(node.Node), fromNode: true},
		labelPair{name: serviceLabel, value: model.LabelValue(svc.Service)},
		labelPair{name: serviceIDLabel, value: model.LabelValue(svc.ID)},
		labelPair{name: serviceAddressLabel, value: model.LabelValue(svc.Address)},
		labelPair{name: servicePortLabel, value: model.LabelValue(port)},
		// Wrapping the list in the separator lets a relabel regex match
		// ",tag," without caring where the tag sits.
		labelPair{name: tagsLabel, value: model.LabelValue(tagSeparator + strings.Join(svc.Tags, tagSeparator) + tagSeparator)},
		labelPair{name: healthLabel, value: model.LabelValue(e.Checks.AggregatedStatus())},
		labelPair{name: datacenterLabel, value: model.LabelValue(node.Datacenter), fromNode: true},
	)
	if svc.Namespace != "" {
		dst = append(dst, labelPair{name: namespaceLabel, value: model.LabelValue(svc.Namespace)})
	}
	if svc.Partition != "" {
		dst = append(dst, labelPair{name: partitionLabel, value: model.LabelValue(svc.Partition)})
	}
	dst = appendPrefixed(dst, nodeMetaLabelPrefix, node.Meta, true)
	dst = appendPrefixed(dst, serviceMetaLabelPrefix, svc.Meta, false)
	return appendPrefixed(dst, taggedAddressLabelPrefix, node.TaggedAddresses, true)
}

// stored returns the value to keep in a group's map. A node's values are
// interned, one copy shared by every instance on the node: each instance's
// answer from Consul decodes into strings of its own, and a node typically
// runs many instances. The handle of each interned value is appended to
// handles, which the group keeps alive (see groupOf): the unique package
// forgets a value at the first garbage collection after its last handle
// goes, and the next service on the node would get a copy of its own.
// Interning only what is stored keeps the check of an unchanged service
// (holds) free of it.
func (p labelPair) stored(handles *[]unique.Handle[string]) model.LabelValue {
	if p.fromNode {
		h := unique.Make(string(p.value))
		*handles = append(*handles, h)
		return model.LabelValue(h.Value())
	}
	return p.value
}

// appendPrefixed appends one label per map entry, its key made a valid
// label name. Keys that sanitise to the same name ("env-name", "env_name")
// collide; the first in sorted order wins, so the same entry always gives
// the same labels.
func appendPrefixed(dst []labelPair, prefix string, m map[string]string, fromNode bool) []labelPair {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	start := len(dst)
	for _, k := range keys {
		name := labelName(prefix, k)
		if !slices.ContainsFunc(dst[start:], func(p labelPair) bool { return p.name == name }) {
			dst = append(dst, labelPair{name: name, value: model.LabelValue(m[k]), fromNode: fromNode})
		}
	}
	return dst
}

// instanceLabels returns the labels of each instance.
func instanceLabels(entries []*api.ServiceEntry, tagSeparator string) [][]labelPair {
	instances := make([][]labelPair, len(entries))
	var all []labelPair // one allocation for every instance's labels
	for i, e := range entries {
		start := len(all)
		all = appendInstanceLabels(all, e, tagSeparator)
		instances[i] = all[start:len(all):len(all)]
	}
	return instances
}

// holds reports whether g is a group of exactly these instances' labels,
// target by target, however its labels are shared out. It allocates
// nothing, so checking a service that did not change costs no memory.
func holds(g *targetgroup.Group, instances [][]labelPair) bool {
	if len(g.Targets) != len(instances) {
		return false
	}
	for i, own := range instances {
		target, n := g.Targets[i], 0
		for _, p := range own {
			if p.value == "" {
				continue // left out of groups
			}
			n++
			v, ok := target[p.name]
			if !ok {
				v, ok = g.Labels[p.name]
			}
			if !ok || v != p.value {
				return false
			}
		}
		// Group and target labels are disjoint, so equal counts mean no
		// label of the group is missing from the instance.
		if n != len(target)+len(g.Labels) {
			return false
		}
	}
	return true
}

// groupOf builds the target group of one service from each instance's
// labels. Labels that every instance has, with the same value, go on the
// group once; each target keeps only its own. The Manager and the file see
// the same thing either way (a target's labels are merged over its
// group's), but the per-target maps are most of the adapter's memory, and a
// Go map of up to 8 entries takes about a quarter of one of 17. Empty
// labels are left out: Prometheus treats them as absent.
func groupOf(name string, instances [][]labelPair) *targetgroup.Group {
	g := &targetgroup.Group{Source: name, Targets: make([]model.LabelSet, 0, len(instances))}
	var handles []unique.Handle[string]
	var shared []labelPair
	if len(instances) > 1 {
		for j, p := range instances[0] {
			if p.name != model.AddressLabel && p.value != "" && inEvery(p, j, instances[1:]) {
				shared = append(shared, p)
			}
		}
	}
	isShared := func(name model.LabelName) bool {
		return slices.ContainsFunc(shared, func(p labelPair) bool { return p.name == name })
	}
	if len(shared) > 0 {
		g.Labels = make(model.LabelSet, len(shared))
		for _, p := range shared {
			g.Labels[p.name] = p.stored(&handles)
		}
	}
	for _, own := range instances {
		n := 0
		for _, p := range own {
			if p.value != "" && !isShared(p.name) {
				n++
			}
		}
		// Sized exactly: growing a map reallocates it, and a catalog
		// holds one per instance.
		labels := make(model.LabelSet, n)
		for _, p := range own {
			if p.value != "" && !isShared(p.name) {
				labels[p.name] = p.stored(&handles)
			}
		}
		g.Targets = append(g.Targets, labels)
	}
	if len(handles) > 0 {
		// The runtime holds a cleanup's argument until the group is
		// unreachable: the group's node values stay interned exactly as
		// long as the group lives.
		runtime.AddCleanup(g, func([]unique.Handle[string]) {}, handles)
	}
	return g
}

// inEvery reports whether every instance in others has label p, found at
// index j in the first. Instances with the same label names usually list
// them in the same order, so the same index is looked at first.
func inEvery(p labelPair, j int, others [][]labelPair) bool {
	for _, ls := range others {
		if j < len(ls) && ls[j].name == p.name {
			if ls[j].value != p.value {
				return false
			}
			continue
		}
		k := slices.IndexFunc(ls, func(q labelPair) bool { return q.name == p.name })
		if k < 0 || ls[k].value != p.value {
			return false
		}
	}
	return true
}

// labelNames caches prefixed, sanitised label names by prefix and key. A
// catalog has few distinct meta keys; without the cache, each of 100,000
// targets would carry its own copies of the same names.
var labelNames = map[string]*nameCache{
	nodeMetaLabelPrefix:      {},
	serviceMetaLabelPrefix:   {},
	taggedAddressLabelPrefix: {},
}

// maxCachedNames bounds each cache, in case keys never repeat.
const maxCachedNames = 10000

type nameCache struct {
	mu    sync.RWMutex
	names map[string]model.LabelName
}

func labelName(prefix, key string) model.LabelName {
	c := labelNames[prefix]
	c.mu.RLock()
	name, ok := c.names[key]
	c.mu.RUnlock()
	if ok {
		return name
	}
	name = model.LabelName(prefix + strutil.SanitizeLabelName(key))
	c.mu.Lock()
	if c.names == nil {
		c.names = map[string]model.LabelName{}
	}
	if len(c.names) < maxCachedNames {
		c.names[key] = name
	}
	c.mu.Unlock()
	return name
}
