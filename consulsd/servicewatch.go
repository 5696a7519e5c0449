package consulsd

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/go-kit/log/level"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	"golang.org/x/time/rate"
)

// Watch modes, the values of Config.WatchMode.
const (
	// WatchAuto watches every service where Consul multiplexes the queries
	// (HTTPS, which Consul serves over HTTP/2), and the catalog's tables
	// otherwise.
	WatchAuto = "auto"
	// WatchServices holds one blocking query per service: a change costs
	// one request, for the service that changed, at any catalog size.
	WatchServices = "services"
	// WatchTables holds one blocking query per catalog table; a change wakes
	// a round.
	WatchTables = "tables"
)

// gatherWindow is how long a first change waits for others before it goes
// out: one write to a node wakes the query of every service on it, and their
// answers arrive within milliseconds of each other. Sent together they cost
// one update; the first alone would hold the rest back a MinRoundInterval.
const gatherWindow = 25 * time.Millisecond

// DefaultServiceWait is Consul's own cap on a blocking query's wait
// (max_query_time, 10 minutes by default).
const DefaultServiceWait = 10 * time.Minute

// serviceWatchConns bounds the connections of the per-service watch. Over
// HTTP/2 Consul takes 250 queries on one connection, so this holds 32,000
// services, well below Consul's limit of 200 connections per client.
const serviceWatchConns = 128

// ErrNeedsHTTPS is returned by New when the per-service watch is asked for
// over plain HTTP, where every parked query would hold its own connection.
var ErrNeedsHTTPS = errors.New("the per-service watch needs HTTPS (HTTP/2): over plain HTTP every service would hold a connection of its own, and Consul refuses a client past 200; use the tables watch mode or HTTPS")

// serviceAnswer is one service's answer, as its watch sends it to the loop.
type serviceAnswer struct {
	name  string
	gen   uint64             // the watch that sent it; stale ones are dropped
	group *targetgroup.Group // nil with err
	err   error
}

// serviceList is one answer of the service list watch.
type serviceList struct {
	names []string
	// restart asks for every service watch to start over: Consul's index
	// went backwards (a restart with less state, a restored snapshot), and
	// parked queries may wait for indexes it no longer has. A mere error
	// needs no restart: a query that fails starts over by itself.
	restart bool
}

// watchedService is a service the loop keeps a blocking query on.
type watchedService struct {
	gen   uint64
	stop  context.CancelFunc
	group *targetgroup.Group // nil until its first successful answer
}

// runServices is Run in the per-service watch mode. The loop alone owns the
// groups; watches send it answers. The first snapshot goes out once every
// listed service has answered; after that each change sends the groups that
// changed. A failing service keeps its last group, and a new service joins
// only with a successful answer, so a fault never deletes targets.
func (d *Discovery) runServices(ctx context.Context, ch chan<- []*targetgroup.Group) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lists := make(chan serviceList)
	answers := make(chan serviceAnswer)
	go d.watchServiceList(ctx, lists)

	// Bounds the queries that answer at once (the first of each service,
	// and those after an error); parked ones do not hold a slot.
	slots := make(chan struct{}, d.cfg.MaxConcurrency)
	watched := map[string]*watchedService{}
	unanswered := 0 // watched services without a group yet
	var gen uint64
	// start starts watching name, or starts its watch over; a service
	// keeps its group until the new watch answers.
	start := func(name string) {
		old := watched[name]
		if old != nil {
			old.stop()
		}
		wctx, stop := context.WithCancel(ctx)
		gen++
		w := &watchedService{gen: gen, stop: stop}
		if old != nil {
			w.group = old.group
		} else {
			unanswered++
		}
		watched[name] = w
		go d.watchService(wctx, name, gen, slots, answers)
	}

	// A token bucket, as in Run: one change goes out at once, a storm of
	// them at most once per MinRoundInterval, batched.
	limiter := rate.NewLimiter(rate.Every(d.cfg.MinRoundInterval), 1)
	send := time.NewTimer(time.Hour)
	send.Stop()
	pending := map[string]*targetgroup.Group{} // changed since the last send
	listed, sentOnce, waiting, due := false, false, false, false
	for {
		select {
		case <-ctx.Done():
			return
		case l := <-lists:
			listed = true
			current := make(map[string]struct{}, len(l.names))
			for _, name := range l.names {
				current[name] = struct{}{}
				if watched[name] == nil || l.restart {
					start(name)
				}
			}
			for name, w := range watched {
				if _, ok := current[name]; ok {
					continue
				}
				w.stop()
				delete(watched, name)
				if w.group == nil {
					unanswered--
				} else {
					// The Manager keeps a group until it gets an empty one.
					pending[name] = &targetgroup.Group{Source: name}
				}
			}
		case a := <-answers:
			w := watched[a.name]
			if w == nil || w.gen != a.gen {
				continue // from a watch stopped since
			}
			if a.err != nil {
				d.metrics.refreshes.WithLabelValues("failure").Inc()
				d.metrics.failures.WithLabelValues(failureReason(a.err)).Inc()
				d.status.record(a.err, 0, 0)
				level.Warn(d.logger).Log("msg", "Querying a service failed, keeping its targets", "service", a.name, "err", a.err)
				continue
			}
			if w.group == nil {
				unanswered--
			}
			w.group = a.group
			pending[a.name] = a.group
		case <-send.C:
			waiting, due = false, true
		}

		// Nothing goes out before every listed service has answered once:
		// the same all or nothing as a round's. After that a new service
		// joins with its first answer, and one whose query keeps failing
		// holds up no other.
		ready := listed && (sentOnce || unanswered == 0)
		if !ready || (sentOnce && len(pending) == 0) {
			due = false
			continue
		}
		if !due {
			if !waiting {
				waiting = true
				send.Reset(max(limiter.Reserve().Delay(), gatherWindow))
			}
			continue
		}
		due = false
		groups := make([]*targetgroup.Group, 0, len(pending))
		if !sentOnce {
			for _, w := range watched {
				groups = append(groups, w.group)
			}
		}
		for name, g := range pending {
			if sentOnce || watched[name] == nil {
				groups = append(groups, g)
			}
		}
		select {
		case ch <- groups:
		case <-ctx.Done():
			return
		}
		sentOnce = true
		clear(pending)
		d.recordWatched(watched)
	}
}

// recordWatched updates the metrics and status after a send.
func (d *Discovery) recordWatched(watched map[string]*watchedService) {
	targets := 0
	for _, w := range watched {
		if w.group != nil {
			targets += len(w.group.Targets)
		}
	}
	d.metrics.refreshes.WithLabelValues("success").Inc()
	d.metrics.lastSuccess.SetToCurrentTime()
	d.metrics.flushStaleness()
	d.metrics.services.Set(float64(len(watched)))
	d.metrics.targets.Set(float64(targets))
	d.status.record(nil, len(watched), targets)
}

// watchServiceList follows the list of services with a blocking query and
// sends the wanted names whenever the list's index moves.
func (d *Discovery) watchServiceList(ctx context.Context, lists chan<- serviceList) {
	// index is the one to wait on, 0 after an error (Consul may be back
	// with less state); seen is that of the last list applied.
	var index, seen uint64
	failures := 0
	limiter := rate.NewLimiter(rate.Every(d.cfg.MinRoundInterval), 1)
	for limiter.Wait(ctx) == nil {
		rctx, cancel := context.WithTimeout(ctx, watchWait+watchWait/16+d.cfg.RequestTimeout)
		opts := d.listOptions(rctx)
		opts.WaitIndex, opts.WaitTime = index, watchWait
		services, meta, err := d.watchClient.Catalog().Services(opts)
		cancel()
		err = d.catalogFilterRejected(err)
		if err == nil && d.emptyMeansACL(services, meta) {
			err = errACLFiltered
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			index = 0
			failures++
			delay := retryDelay(failures, d.cfg.RefreshInterval)
			d.metrics.failures.WithLabelValues(failureReason(err)).Inc()
			d.status.record(err, 0, 0)
			level.Warn(d.logger).Log("msg", "Listing services failed, keeping the targets", "err", err, "retry_in", delay)
			if !sleep(ctx, delay) {
				return
			}
			continue
		}
		failures = 0
		next := max(meta.LastIndex, 1)
		restart := false
		switch {
		case next == seen:
			index = next
			continue // nothing new
		case next < seen:
			// A server behind the one that answered before (just
			// restarted, not caught up: whole services may be missing), or
			// Consul lost state. Only the leader can tell which.
			d.metrics.behindAnswers.Inc()
			if !d.lostState(ctx, seen) {
				index = seen
				continue
			}
			restart = true
		}
		names := d.wantedNames(services)
		select {
		case lists <- serviceList{names: names, restart: restart}:
		case <-ctx.Done():
			return
		}
		index, seen = next, next
	}
}

// lostState asks the leader whether the service list's index is below seen:
// then Consul lost state (a restart with less, a restored snapshot), and an
// answer below seen is its truth rather than a lagging server's.
func (d *Discovery) lostState(ctx context.Context, seen uint64) bool {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.RequestTimeout)
	defer cancel()
	opts := d.queryOptions(ctx)
	// Consistent: a leader just elected, its log not yet applied, answers
	// other reads with an old state, and refuses these until it has.
	opts.AllowStale, opts.RequireConsistent = false, true
	_, meta, err := d.watchClient.Catalog().Services(opts)
	return err == nil && meta.LastIndex < seen
}

// watchService keeps a blocking query on one service's instances, the same
// query a round makes, and sends the service's group whenever Consul's
// index for the service moves: registrations, deregistrations, health, tags,
// meta and the service's nodes all move it, other services' changes do not.
func (d *Discovery) watchService(ctx context.Context, name string, gen uint64, slots chan struct{}, answers chan<- serviceAnswer) {
	var (
		index    uint64 // to wait on; 0 after an error
		seen     uint64 // of the last answer applied
		last     *targetgroup.Group
		failures int
	)
	// A query that keeps returning at once (an index stuck below the
	// server's) must not become a hot loop.
	limiter := rate.NewLimiter(rate.Every(d.cfg.MinRoundInterval), 1)
	// A query that times out is issued again: on a quiet catalog each
	// service costs one request per wait. Waits are spread over the last
	// quarter below the longest, so that queries started together do not
	// time out together.
	wait := d.cfg.ServiceWait - rand.N(d.cfg.ServiceWait/4+1)
	for limiter.Wait(ctx) == nil {
		if index == 0 {
			// An answer at once: take a slot of the bounded concurrency.
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return
			}
		}
		// Consul answers at once without an index: then the request
		// timeout applies, as in a round.
		timeout := d.cfg.RequestTimeout
		if index != 0 {
			timeout += wait + wait/16
		}
		rctx, cancel := context.WithTimeout(ctx, timeout)
		opts := d.serviceOptions(rctx)
		opts.WaitIndex, opts.WaitTime = index, wait
		entries, meta, err := d.serviceWatchClient.Health().ServiceMultipleTags(name, d.cfg.Tags, false, opts)
		cancel()
		if index == 0 {
			<-slots
		}
		if err == nil && len(entries) == 0 && meta.ResultsFilteredByACLs {
			err = errACLFiltered
		}
		entries, err = registeredAs(name, entries), d.filterRejected(err)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			select {
			case answers <- serviceAnswer{name: name, gen: gen, err: err}:
			case <-ctx.Done():
				return
			}
			index = 0
			failures++
			if !sleep(ctx, retryDelay(failures, d.cfg.RefreshInterval)) {
				return
			}
			continue
		}
		failures = 0
		next := max(meta.LastIndex, 1)
		if next < seen {
			d.metrics.behindAnswers.Inc()
		}
		if next <= seen {
			// Nothing new; or older than what was applied: a server that
			// lags (just restarted, not caught up), whose answer could
			// drop instances. Wait on the index already applied: a lagging
			// server answers once it has caught up. Consul losing state
			// is told by the list, which then starts this watch afresh.
			index = seen
			continue
		}
		index, seen = next, next
		instances := instanceLabels(entries, d.cfg.TagSeparator)
		if last != nil && holds(last, instances) {
			continue // the index moved, the labels did not (a check's output)
		}
		last = groupOf(name, instances)
		select {
		case answers <- serviceAnswer{name: name, gen: gen, group: last}:
		case <-ctx.Done():
			return
		}
	}
}
