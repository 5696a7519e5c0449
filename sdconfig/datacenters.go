package sdconfig

import (
	"context"
	"slices"
	"time"

	"github.com/go-kit/log/level"
	"github.com/prometheus/prometheus/discovery/consul"
	"github.com/prometheus/prometheus/discovery/targetgroup"

	"github.com/consul-sd-adapter/consul-sd-adapter/consulsd"
)

// firstWait bounds how long a block of every datacenter holds back its
// first targets for a datacenter that has not answered.
const firstWait = time.Minute

// datacenters discovers every datacenter the agent knows, each with a
// Discovery of its own that fails and recovers on its own: a datacenter
// that cannot be reached keeps its last targets, the others go on. The
// list is read again every refresh interval, as datacenters come and go.
type datacenters struct {
	env   *Env
	key   BlockKey
	block *consul.SDConfig
}

// dcUpdate is what one datacenter's Discovery sent.
type dcUpdate struct {
	child  *dcChild
	groups []*targetgroup.Group
}

// dcChild is a running datacenter.
type dcChild struct {
	name    string
	d       *consulsd.Discovery
	cancel  context.CancelFunc
	sources map[string]bool // sent, so that they can be emptied when it goes
}

func (m *datacenters) Run(ctx context.Context, up chan<- []*targetgroup.Group) {
	updates := make(chan dcUpdate)
	children := map[string]*dcChild{}
	defer func() {
		for _, c := range children {
			c.cancel()
			m.env.forget(runKey{m.key, c.name}, c.d)
		}
	}()
	// Until every datacenter of the first list has answered (or firstWait
	// has passed), targets are gathered, not sent: the entry's file would
	// otherwise lose the others' targets for a moment.
	var waiting map[string]bool
	first := map[string]*targetgroup.Group{}
	firstDeadline := time.After(firstWait)

	start := func(dc string) {
		d, err := m.env.start(runKey{m.key, dc}, m.block)
		if err != nil {
			level.Error(m.env.Logger).Log("msg", "Cannot discover datacenter", "entry", m.key.Entry, "block", m.key.Index, "datacenter", dc, "err", err)
			return
		}
		cctx, cancel := context.WithCancel(ctx)
		c := &dcChild{name: dc, d: d, cancel: cancel, sources: map[string]bool{}}
		children[dc] = c
		ch := make(chan []*targetgroup.Group)
		go d.Run(cctx, ch)
		go func() {
			for {
				select {
				case <-cctx.Done():
					return
				case groups := <-ch:
					select {
					case updates <- dcUpdate{c, groups}:
					case <-cctx.Done():
						return
					}
				}
			}
		}()
	}
	// list starts new datacenters and stops gone ones, returning the
	// empty groups that take the gone ones' targets back.
	list := func() []*targetgroup.Group {
		dcs, err := m.env.datacenters(m.key, m.block)
		if err != nil {
			level.Error(m.env.Logger).Log("msg", "Listing datacenters failed, keeping those known", "err", err)
			return nil
		}
		if waiting == nil {
			waiting = map[string]bool{}
			for _, dc := range dcs {
				waiting[dc] = true
			}
		}
		var gone []*targetgroup.Group
		for dc, c := range children {
			if !slices.Contains(dcs, dc) {
				c.cancel()
				m.env.drop(runKey{m.key, dc}, c.d)
				delete(children, dc)
				delete(waiting, dc)
				for source := range c.sources {
					gone = append(gone, &targetgroup.Group{Source: source})
				}
			}
		}
		for _, dc := range dcs {
			if children[dc] == nil {
				start(dc)
			}
		}
		return gone
	}

	ticker := time.NewTicker(time.Duration(m.block.RefreshInterval))
	defer ticker.Stop()
	out := list()
	for {
		if first != nil && (waiting != nil && len(waiting) == 0 || firstDeadline == nil) {
			for _, g := range first {
				out = append(out, g)
			}
			first = nil
		}
		if len(out) > 0 && first == nil {
			select {
			case up <- out:
			case <-ctx.Done():
				return
			}
		}
		out = nil
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			out = list()
		case <-firstDeadline:
			firstDeadline = nil
		case u := <-updates:
			if children[u.child.name] != u.child {
				continue // stopped since
			}
			groups := withDatacenter(u.child.name, u.groups)
			for _, g := range groups {
				u.child.sources[g.Source] = true
			}
			if first == nil {
				out = groups
				continue
			}
			delete(waiting, u.child.name)
			for _, g := range groups {
				first[g.Source] = g
			}
		}
	}
}

// withDatacenter gives each group a source of its datacenter: the
// discovery Manager keeps one group per source of a discoverer, and every
// datacenter has its own "web".
func withDatacenter(dc string, groups []*targetgroup.Group) []*targetgroup.Group {
	if dc == "" {
		return groups
	}
	out := make([]*targetgroup.Group, len(groups))
	for i, g := range groups {
		out[i] = &targetgroup.Group{Source: dc + "/" + g.Source, Labels: g.Labels, Targets: g.Targets}
	}
	return out
}

// inDatacenter says which datacenter an error is of, if any.
func inDatacenter(dc string) string {
	if dc == "" {
		return ""
	}
	return " datacenter " + dc
}
