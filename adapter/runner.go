package adapter

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/discovery"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// holdRecheck is how often held-back sets are looked at again.
const holdRecheck = time.Second

// holdLimit is the longest a set is held back for a discoverer that has
// not sent its first targets (a datacenter down at start): then the others'
// targets are written without it.
const holdLimit = time.Minute

// Runner runs one discovery.Manager for every output: each set of
// discovery configs is written by the output of the same name. Apply
// changes both while it runs (a reload); the Manager keeps the providers
// whose configs did not change, and their targets.
type Runner struct {
	mgr    *discovery.Manager
	logger log.Logger

	mu      sync.Mutex
	outputs map[string]*Adapter
	// sizes holds the number of discovery configs of each set, and
	// discoverers what the Runner knows of each one's first targets: until
	// every discoverer of a set has its first targets in the Manager's
	// update, writing the set would replace the file with fewer targets
	// than it holds.
	sizes       map[string]int
	discoverers map[discovererKey]*firstTargets
}

// discovererKey names a discovery config by its set and its place in it.
type discovererKey struct {
	set   string
	index int
}

// NewRunner starts a discovery Manager; it stops when ctx ends.
func NewRunner(ctx context.Context, mlogger *slog.Logger, logger log.Logger, reg prometheus.Registerer) (*Runner, error) {
	sdMetrics, err := discovery.CreateAndRegisterSDMetrics(reg)
	if err != nil {
		return nil, err
	}
	if mlogger == nil {
		mlogger = slog.New(slog.DiscardHandler)
	}
	mgr := discovery.NewManager(ctx, mlogger, reg, sdMetrics, discovery.Name("consul_sd_adapter"), discovery.Updatert(managerThrottle))
	if mgr == nil {
		return nil, errors.New("could not create the discovery manager")
	}
	go mgr.Run() //nolint:errcheck // it only returns ctx.Err()
	return &Runner{mgr: mgr, logger: logger, discoverers: map[discovererKey]*firstTargets{}}, nil
}

// Apply makes outputs and sets the ones to run. The outputs are swapped in
// first, so that the first targets of a new set find their output.
func (r *Runner) Apply(outputs map[string]*Adapter, sets map[string]discovery.Configs) {
	tracked := make(map[string]discovery.Configs, len(sets))
	sizes := make(map[string]int, len(sets))
	for name, cfgs := range sets {
		sizes[name] = len(cfgs)
		for i, c := range cfgs {
			tracked[name] = append(tracked[name], &trackedConfig{Config: c, key: discovererKey{name, i}, runner: r})
		}
	}
	r.mu.Lock()
	r.outputs, r.sizes = outputs, sizes
	r.mu.Unlock()
	r.mgr.ApplyConfig(tracked) //nolint:errcheck // it never fails; a discoverer that cannot start is logged and counted by the Manager
}

// firstTargets follows a discoverer from its start until its targets
// are in an update of the Manager. Every group it sends until then is
// recorded: the Manager stores the groups its providers send, so an
// update holding any of them holds the discoverer's targets, even when it
// has sent again since (a churning catalog replaces groups at once).
type firstTargets struct {
	started time.Time
	sent    map[*targetgroup.Group]struct{}
	in      bool // seen in an update, or sent none: nothing to wait for
}

// held reports whether a set waits for the first targets of one of its
// discoverers to reach the update in groups, for at most holdLimit. Called
// with r.mu held.
func (r *Runner) held(set string, groups []*targetgroup.Group, now time.Time) bool {
	held := false
	for i := range r.sizes[set] {
		f := r.discoverers[discovererKey{set, i}]
		if f == nil { // the Manager could not create it: logged there
			continue
		}
		for _, g := range groups {
			if f.in {
				break
			}
			_, f.in = f.sent[g]
		}
		if f.in {
			f.sent = nil
			continue
		}
		held = held || now.Sub(f.started) < holdLimit
	}
	return held
}

// Run writes every update until ctx ends. A failed write is retried until
// it succeeds or a newer update replaces it; a set whose groups are the
// ones already written is not rendered again.
func (r *Runner) Run(ctx context.Context) error {
	pending := map[string][]*targetgroup.Group{}
	// written is what each output last wrote: a reload that gives an
	// entry another file gives it another output, which must write.
	written := map[*Adapter][]*targetgroup.Group{}
	retry := time.NewTimer(0)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case sets, ok := <-r.mgr.SyncCh():
			if !ok {
				return nil
			}
			maps.Copy(pending, sets)
		case <-retry.C:
		}
		r.mu.Lock()
		outputs := r.outputs
		held := map[string]bool{}
		for name, groups := range pending {
			held[name] = r.held(name, groups, time.Now())
		}
		r.mu.Unlock()
		next := time.Duration(0)
		for name, groups := range pending {
			a := outputs[name]
			switch {
			case a == nil: // removed by a reload
				delete(pending, name)
			case samePointers(written[a], groups):
				delete(pending, name)
			case held[name]:
				next = holdRecheck
			default:
				if err := a.Update(groups); err != nil {
					level.Error(r.logger).Log("msg", "Writing the output file failed, keeping the old one", "file", a.path, "err", err, "retry_in", writeRetryInterval)
					next = writeRetryInterval
					continue
				}
				written[a] = groups
				delete(pending, name)
			}
		}
		if next > 0 {
			retry.Reset(next)
		}
	}
}

// samePointers reports whether two updates hold the same groups, in any
// order. The Manager passes on the groups its providers sent, so an entry
// whose discoverers sent nothing new has the same ones.
func samePointers(a, b []*targetgroup.Group) bool {
	if len(a) != len(b) || a == nil {
		return false
	}
	seen := make(map[*targetgroup.Group]struct{}, len(a))
	for _, g := range a {
		seen[g] = struct{}{}
	}
	for _, g := range b {
		if _, ok := seen[g]; !ok {
			return false
		}
	}
	return true
}

// trackedConfig makes its discoverer tell the Runner when it first sends.
// Equal configs at the same place in a set are deeply equal, so the Manager
// keeps their discoverer through a reload.
type trackedConfig struct {
	discovery.Config
	key    discovererKey
	runner *Runner
}

func (c *trackedConfig) NewDiscoverer(opts discovery.DiscovererOptions) (discovery.Discoverer, error) {
	d, err := c.Config.NewDiscoverer(opts)
	if err != nil {
		return nil, err
	}
	f := &firstTargets{started: time.Now(), sent: map[*targetgroup.Group]struct{}{}}
	c.runner.mu.Lock()
	c.runner.discoverers[c.key] = f
	c.runner.mu.Unlock()
	return &trackedDiscoverer{d: d, sent: func(groups []*targetgroup.Group) {
		c.runner.mu.Lock()
		defer c.runner.mu.Unlock()
		if f.in {
			return
		}
		if len(groups) == 0 {
			f.in = true
		}
		for _, g := range groups {
			f.sent[g] = struct{}{}
		}
	}}, nil
}

type trackedDiscoverer struct {
	d    discovery.Discoverer
	sent func([]*targetgroup.Group)
}

func (t *trackedDiscoverer) Run(ctx context.Context, up chan<- []*targetgroup.Group) {
	in := make(chan []*targetgroup.Group)
	go t.d.Run(ctx, in)
	for {
		select {
		case <-ctx.Done():
			return
		case groups := <-in:
			t.sent(groups)
			select {
			case up <- groups:
			case <-ctx.Done():
				return
			}
		}
	}
}

// Discoverer makes a Discoverer built elsewhere a discovery config, for a
// set of its own.
func Discoverer(d discovery.Discoverer) discovery.Config { return &prebuilt{d: d} }

type prebuilt struct{ d discovery.Discoverer }

func (*prebuilt) Name() string { return providerName }

func (p *prebuilt) NewDiscoverer(discovery.DiscovererOptions) (discovery.Discoverer, error) {
	return p.d, nil
}

func (*prebuilt) NewDiscovererMetrics(prometheus.Registerer, discovery.RefreshMetricsInstantiator) discovery.DiscovererMetrics {
	return NoMetrics{}
}

// NoMetrics is the discovery Manager's metrics of a discoverer that
// registers its own.
type NoMetrics struct{}

// Register does nothing.
func (NoMetrics) Register() error { return nil }

// Unregister does nothing.
func (NoMetrics) Unregister() {}
