package consulsd

import (
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/common/model"
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

// targetLabels returns the labels of one service instance. Everything comes
// from the entry itself: each instance carries its own node, meta and health.
func targetLabels(e *api.ServiceEntry, tagSeparator string) model.LabelSet {
	node, svc := e.Node, e.Service
	port := strconv.Itoa(svc.Port)

	// A service address, when set, wins over the node's: the service may be
	// registered on one node on behalf of another host (as Prometheus does).
	host := svc.Address
	if host == "" {
		host = node.Address
	}

	// Sized up front: growing a map of this size reallocates it, and a
	// catalog holds one per instance.
	labels := make(model.LabelSet, 12+len(node.Meta)+len(svc.Meta)+len(node.TaggedAddresses))
	labels[model.AddressLabel] = model.LabelValue(net.JoinHostPort(host, port))
	labels[addressLabel] = model.LabelValue(node.Address)
	labels[nodeLabel] = model.LabelValue(node.Node)
	labels[serviceLabel] = model.LabelValue(svc.Service)
	labels[serviceIDLabel] = model.LabelValue(svc.ID)
	labels[serviceAddressLabel] = model.LabelValue(svc.Address)
	labels[servicePortLabel] = model.LabelValue(port)
	// Wrapping the list in the separator lets a relabel regex match ",tag,"
	// without caring where the tag sits.
	labels[tagsLabel] = model.LabelValue(tagSeparator + strings.Join(svc.Tags, tagSeparator) + tagSeparator)
	labels[healthLabel] = model.LabelValue(e.Checks.AggregatedStatus())
	labels[datacenterLabel] = model.LabelValue(node.Datacenter)
	if svc.Namespace != "" {
		labels[namespaceLabel] = model.LabelValue(svc.Namespace)
	}
	if svc.Partition != "" {
		labels[partitionLabel] = model.LabelValue(svc.Partition)
	}
	addPrefixed(labels, nodeMetaLabelPrefix, node.Meta)
	addPrefixed(labels, serviceMetaLabelPrefix, svc.Meta)
	addPrefixed(labels, taggedAddressLabelPrefix, node.TaggedAddresses)
	return labels
}

// addPrefixed adds one label per map entry, its key made a valid label name.
// Keys that sanitise to the same name ("env-name", "env_name") collide; the
// first in sorted order wins, so the same entry always gives the same labels.
func addPrefixed(labels model.LabelSet, prefix string, m map[string]string) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		name := labelName(prefix, k)
		if _, taken := labels[name]; !taken {
			labels[name] = model.LabelValue(m[k])
		}
	}
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
