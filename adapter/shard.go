package adapter

import (
	"crypto/md5"
	"encoding/binary"
	"fmt"
	"net/url"
	"strconv"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// The query parameters of a sharded /targets: ?shards=N&shard=K.
const (
	shardsParam = "shards"
	shardParam  = "shard"
)

// Shard is one of several Prometheus servers splitting the targets with a
// hashmod relabel rule on __address__: shard Index of Count holds the
// targets that rule maps to Index. Serving a shard only its own targets
// spares it holding (and dropping on every refresh) everyone else's.
type Shard struct {
	Index, Count uint64
}

// ParseShard reads ?shards=N&shard=K. Without either it returns nil: all
// targets. Its errors are one line that names the parameter at fault, fit
// to answer a 400 with.
func ParseShard(q url.Values) (*Shard, error) {
	hasCount, hasIndex := q.Has(shardsParam), q.Has(shardParam)
	switch {
	case !hasCount && !hasIndex:
		return nil, nil
	case !hasCount:
		return nil, fmt.Errorf("%s: given without %s", shardParam, shardsParam)
	case !hasIndex:
		return nil, fmt.Errorf("%s: given without %s", shardsParam, shardParam)
	}
	count, err := intParam(q, shardsParam)
	if err != nil {
		return nil, err
	}
	if count < 1 {
		return nil, fmt.Errorf("%s: %d, want at least 1", shardsParam, count)
	}
	index, err := intParam(q, shardParam)
	if err != nil {
		return nil, err
	}
	if index < 0 || index >= count {
		return nil, fmt.Errorf("%s: %d, want 0 to %d for %s=%d", shardParam, index, count-1, shardsParam, count)
	}
	return &Shard{Index: uint64(index), Count: uint64(count)}, nil
}

// intParam reads a parameter given once as a decimal integer. A repeated
// parameter is an error rather than first-wins: two shard numbers in one
// URL are a mistake in the scrape config, and guessing would hide it.
func intParam(q url.Values, name string) (int64, error) {
	if vs := q[name]; len(vs) > 1 {
		return 0, fmt.Errorf("%s: given %d times, want once", name, len(vs))
	}
	v := q.Get(name)
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		// %q keeps the message on one line whatever the value holds.
		return 0, fmt.Errorf("%s: %q is not an integer", name, v)
	}
	return n, nil
}

// Holds reports whether the target at addr belongs to the shard, as
// Prometheus's hashmod decides it: the MD5 sum of the address, its last 8
// bytes read as a big-endian integer, modulo Count. The rule has a single
// source label, so there is no separator to join.
func (s Shard) Holds(addr string) bool {
	sum := md5.Sum([]byte(addr))
	return binary.BigEndian.Uint64(sum[len(sum)-8:])%s.Count == s.Index
}

// Filter returns the groups as the shard sees them. The groups passed in
// are shared with the discovery Manager and the file and are left as they
// are: a group whose targets all belong to the shard is returned itself, a
// group with only some of them as a new group sharing its labels and
// target label sets.
//
// Groups left without targets are dropped rather than kept empty: /targets
// writes one entry per target, so an empty group could never reach
// Prometheus anyway, and dropping it here saves the writer a pass over it.
// Prometheus's http_sd notices entries that went away from one answer to
// the next by itself.
func (s Shard) Filter(groups []*targetgroup.Group) []*targetgroup.Group {
	out := make([]*targetgroup.Group, 0, len(groups))
	for _, g := range groups {
		if g == nil {
			continue
		}
		kept := s.targets(g.Targets)
		switch {
		case len(kept) == 0:
		case len(kept) == len(g.Targets):
			out = append(out, g)
		default:
			out = append(out, &targetgroup.Group{Source: g.Source, Labels: g.Labels, Targets: kept})
		}
	}
	return out
}

// targets returns the targets of the shard, by each target's own
// __address__: the one the file and /targets give it (the converter
// ignores an address on a group, and consulsd never puts one there).
func (s Shard) targets(targets []model.LabelSet) []model.LabelSet {
	var kept []model.LabelSet
	for _, t := range targets {
		if s.Holds(string(t[model.AddressLabel])) {
			kept = append(kept, t)
		}
	}
	return kept
}
