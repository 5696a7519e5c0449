// Package consulsd discovers Prometheus targets in Consul. It implements
// Prometheus's discovery.Discoverer: every refresh round lists the services,
// queries each one's instances, and sends a full snapshot only when every
// query of the round succeeded, so a fault never deletes targets. Consul's
// indexes let a round skip the per-service queries when nothing changed, or
// when only health checks did; otherwise, in the tables watch, Consul's node
// dump says which services to query (locate.go).
package consulsd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"
)

// consulService is Consul's own service, left out unless asked for by name,
// as the upstream custom-sd example does.
const consulService = "consul"

// ErrAddress is returned by New for an address no request could go to.
var ErrAddress = errors.New("invalid Consul address")

// ErrTokenFile is returned by New for a token file that cannot be read.
var ErrTokenFile = errors.New("ACL token file")

// errFilterRejected is returned when Consul refuses the filter expression.
var errFilterRejected = errors.New("the filter expression was rejected by Consul")

// errNoLeader is returned for an answer from a server that knew of no
// leader (X-Consul-KnownLeader: false).
var errNoLeader = errors.New("the Consul server that answered knows of no leader, so its answer may be arbitrarily old; keeping the targets")

// errBehind is returned for a round read with stale reads in which a server
// answered with an older state than the targets already hold: one that was
// restarted and is replaying its log, or cut off and catching up. Taken at
// face value, it would take back instances that never changed.
var errBehind = errors.New("a Consul server answered with an older state than the targets already hold")

// errACLFiltered is returned when Consul hid every result from our ACL
// token. Consul answers such reads with 200 and an empty list; taken at face
// value that would delete every target, so it fails the round instead.
var errACLFiltered = errors.New("the ACL token may read nothing in the catalog (Consul hides what a token may not read): check the token and its service:read and node:read permissions")

// Config says where Consul is and what to discover. The zero value of a
// connection field means "as the Consul environment variables say"
// (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT, ...).
type Config struct {
	// Address is the Consul HTTP API, host:port or a URL with a scheme.
	Address string
	// Scheme is http or https.
	Scheme string
	// Datacenter to query; empty means the agent's own.
	Datacenter string
	// TokenFile holds the ACL token. The token itself is never a flag, so it
	// cannot leak through the process list or --help.
	TokenFile string
	// CAFile, CertFile, KeyFile and ServerName configure TLS to Consul.
	CAFile, CertFile, KeyFile, ServerName string
	// InsecureSkipVerify turns off verification of Consul's certificate.
	InsecureSkipVerify bool

	// AllowStale lets any server answer; much cheaper on large clusters.
	AllowStale bool
	// Services is an allow-list of service names; empty means all but "consul".
	Services []string
	// Tags keeps only instances that have every one of these tags.
	Tags []string
	// Filter is a Consul filter expression applied to each service's
	// /v1/health/service query (for example `Service.Meta.env == "prod"`).
	Filter string
	// CatalogFilter is a Consul filter expression applied to the service
	// list (/v1/catalog/services): a service with at least one matching
	// instance is discovered, with all its instances. Prometheus's
	// `filter`; Filter is its `health_filter`.
	CatalogFilter string
	// FilterName and CatalogFilterName name what set Filter and
	// CatalogFilter, for the error when Consul rejects one: by default
	// "--consul.filter" and "filter".
	FilterName, CatalogFilterName string
	// NodeMeta keeps only instances on nodes with every one of these meta
	// pairs; Consul applies it to the service list and each service's query.
	NodeMeta map[string]string
	// TagSeparator joins an instance's tags in __meta_consul_tags.
	TagSeparator string

	// Token is the ACL token, from a configuration file; flags take only
	// TokenFile.
	Token string
	// PathPrefix, Namespace and Partition are as in Consul's API client;
	// namespaces and partitions need Consul Enterprise.
	PathPrefix, Namespace, Partition string
	// InFlight, when set, bounds the requests in flight (blocking queries
	// left out) over every Discovery that shares it; nil gives each its
	// own, of MaxConcurrency.
	InFlight InFlight
	// Dumps, when set, shares the node dump that locates changes between
	// the Discoveries that read the same catalog with the same
	// credentials; nil reads each its own.
	Dumps *Dumps
	// PrometheusEnvironment reads Consul's environment variables as
	// Prometheus's Consul SD does, for a block of a configuration file:
	// only a token ($CONSUL_HTTP_TOKEN, $CONSUL_HTTP_TOKEN_FILE), a
	// namespace or a partition the block leaves unset comes from there.
	// Otherwise every variable of the consul CLI applies under the flags.
	PrometheusEnvironment bool
	// Transport and WatchTransport, when set, carry every request, and the
	// TLS fields above are ignored: they come from a configuration file's
	// HTTP client settings (TLS, authorization, proxy, headers), shared by
	// every block with the same settings. WatchTransport must not keep
	// connections alive (see New).
	Transport, WatchTransport http.RoundTripper
	// NoRedirects makes a redirect an error instead of following it: a
	// configuration file's follow_redirects: false. The transports cannot
	// say it; only the http.Client follows redirects.
	NoRedirects bool

	// RefreshInterval is the period of the full refresh round.
	RefreshInterval time.Duration
	// RequestTimeout bounds every single request to Consul.
	RequestTimeout time.Duration
	// MaxConcurrency bounds the requests in flight to Consul at once.
	MaxConcurrency int
	// Watch keeps blocking queries open on the catalog so that a change
	// starts a round at once instead of at the next tick.
	Watch bool
	// WatchMode says what the watch holds blocking queries on: WatchAuto,
	// WatchServices or WatchTables.
	WatchMode string
	// ServiceWait is the longest wait of a per-service blocking query.
	// Consul caps it at its max_query_time; raising both lowers the cost of
	// a quiet catalog, one request per service per wait.
	ServiceWait time.Duration
	// MinRoundInterval is the least time between two rounds woken by the
	// watch: a cluster in constant churn cannot make the adapter spin.
	MinRoundInterval time.Duration
}

// DefaultConfig holds the defaults of the command-line flags.
var DefaultConfig = Config{
	AllowStale:      true,
	TagSeparator:    ",",
	RefreshInterval: 30 * time.Second,
	RequestTimeout:  10 * time.Second,
	// Enough that a round against a Consul a few milliseconds away is not
	// bound by round trips (2,000 services at 5 ms: 0.3 s of waiting), far
	// below Consul's default limit of 200 connections per client.
	MaxConcurrency: 32,
	Watch:          true,
	WatchMode:      WatchAuto,
	ServiceWait:    DefaultServiceWait,
	// Short enough that a change reaches the file well within a second.
	MinRoundInterval: 200 * time.Millisecond,
}

// Discovery is a discovery.Discoverer for Consul services.
type Discovery struct {
	client      *api.Client // the round's
	watchClient *api.Client // the watch's blocking queries on tables and the service list
	// serviceWatchClient holds the per-service watch's blocking queries,
	// multiplexed over HTTP/2; nil in the tables watch mode.
	serviceWatchClient *api.Client
	cfg                Config
	logger             log.Logger
	metrics            *metrics

	// What the last successful round saw, so that the next one can tell
	// whether anything changed and which services have gone. Only Refresh
	// touches these.
	state catalogState
	// serviceIndexes holds the X-Consul-Index of each service's answer
	// in the snapshot: an answer below it comes from a server behind.
	serviceIndexes map[string]uint64
	wentBackwards  bool // in the last round, the leader's indexes were below the ones before
	confirming     bool // the round reads again from the leader an answer that was behind
	// watched holds what the watch's blocking queries last returned.
	watched watchedIndexes
	// resync makes the next round query every service, whatever the
	// indexes say. It is set when Consul may have lost or replaced its
	// state (a failed round, a failed watch): a restarted agent can come
	// back with indexes that happen to equal, or just exceed, the old ones.
	resync atomic.Bool
	// unsettled says that the snapshot was read with stale reads since
	// the indexes last moved: the next quiet round reads it again from
	// the leader.
	unsettled bool
	// settleOnly, when not nil, holds the only services read with stale
	// reads since (by located and health rounds): the settling round
	// reads just these. Nil while unsettled means every service.
	settleOnly map[string]bool
	// digests holds a digest of each service from the last node dump, when
	// rounds are located (see locate.go); nil until a full round read one.
	digests map[string]uint64
	// noDump says that Consul does not serve the node dump: rounds are
	// not located.
	noDump bool
	// dump is the node dump shared through Config.Dumps, once read.
	dump     *sharedDump
	snapshot []*targetgroup.Group
	sent     map[string]struct{}
	targets  int

	status statusRecorder
	// warned holds the allow-listed names Consul lacks that were warned
	// about; only the goroutine that lists services touches it.
	warned map[string]bool
}

// Unregister takes the Discovery's metrics out of the registry it was
// given, when a reload removes its block.
func (d *Discovery) Unregister() { d.metrics.registered.Unregister() }

// Status returns how the latest rounds went. Safe for concurrent use.
func (d *Discovery) Status() Status { return d.status.get() }

// New returns a Discovery for cfg. Its metrics are registered with reg.
func New(cfg Config, logger log.Logger, reg prometheus.Registerer) (*Discovery, error) {
	if cfg.RefreshInterval <= 0 {
		return nil, errors.New("refresh interval must be positive")
	}
	if cfg.RequestTimeout <= 0 {
		return nil, errors.New("request timeout must be positive")
	}
	if cfg.MaxConcurrency < 1 {
		return nil, errors.New("max concurrency must be at least 1")
	}
	if cfg.ServiceWait <= 0 {
		return nil, errors.New("service wait must be positive")
	}
	if cfg.Watch && cfg.MinRoundInterval <= 0 {
		return nil, errors.New("minimum round interval must be positive")
	}
	conf := clientConfig(cfg)
	if err := checkAddress(conf); err != nil {
		return nil, err
	}
	if cfg.InFlight == nil {
		cfg.InFlight = NewInFlight(cfg.MaxConcurrency)
	}
	https := usesHTTPS(conf)
	switch cfg.WatchMode {
	case "", WatchAuto:
		cfg.WatchMode = WatchTables
		if https {
			cfg.WatchMode = WatchServices
		}
	case WatchServices:
		if !https {
			return nil, ErrNeedsHTTPS
		}
	case WatchTables:
	default:
		return nil, fmt.Errorf("unknown watch mode %q", cfg.WatchMode)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	var tokens *tokenFile
	if conf.TokenFile != "" {
		if tokens, err = readTokenFile(conf.TokenFile); err != nil {
			return nil, err
		}
	}
	// One request per slot of the round, each connection kept for the next.
	client, err := newClient(cfg, m, tokens, cfg.MaxConcurrency, true)
	if err != nil {
		return nil, err
	}
	// The watch's blocking queries get their own connections, so they never
	// take the round's, and a fresh one each: Go retries a request whose
	// reused connection dies before an answer, and when the agent restarts on
	// the same port that retry would block on the old, now too high, index
	// instead of failing and starting over.
	watchClient, err := newClient(cfg, m, tokens, watchedTables, false)
	if err != nil {
		return nil, err
	}
	d := &Discovery{client: client, watchClient: watchClient, cfg: cfg, logger: logger, metrics: m, sent: map[string]struct{}{}, warned: map[string]bool{}}
	if cfg.Watch && cfg.WatchMode == WatchServices {
		// Kept alive: HTTP/2 carries every service's query on a few
		// connections. After an agent restart the list watch, on its
		// own fresh connections, notices and starts every query over.
		if d.serviceWatchClient, err = newClient(cfg, m, tokens, serviceWatchConns, true); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// Datacenters lists the datacenters the agent knows of
// (/v1/catalog/datacenters), through cfg's transport when it has one.
func Datacenters(cfg Config) ([]string, error) {
	conf := clientConfig(cfg)
	httpClient := &http.Client{Transport: cfg.Transport}
	if cfg.Transport == nil {
		var err error
		if httpClient, err = api.NewHttpClient(conf.Transport, conf.TLSConfig); err != nil {
			return nil, err
		}
	}
	// The call takes no context: the client's timeout bounds it.
	httpClient.Timeout = cfg.RequestTimeout
	conf.HttpClient = httpClient
	client, err := api.NewClient(conf)
	if err != nil {
		return nil, err
	}
	return client.Catalog().Datacenters()
}

// clientConfig returns the Consul client configuration: the environment
// first, the flags on top.
func clientConfig(cfg Config) *api.Config {
	conf := api.DefaultConfig()
	if cfg.PrometheusEnvironment {
		// Built as Prometheus builds it: api.NewClient then fills in the
		// token, namespace and partition from the environment, and
		// nothing else. $CONSUL_HTTP_AUTH above all would set an
		// Authorization header first, which a block's basic_auth and
		// authorization then leave alone.
		conf = &api.Config{Address: "localhost:8500", Scheme: "http", Transport: conf.Transport}
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&conf.Address, cfg.Address)
	set(&conf.Scheme, cfg.Scheme)
	set(&conf.Datacenter, cfg.Datacenter)
	set(&conf.TokenFile, cfg.TokenFile)
	set(&conf.Token, cfg.Token)
	set(&conf.PathPrefix, cfg.PathPrefix)
	set(&conf.Namespace, cfg.Namespace)
	set(&conf.Partition, cfg.Partition)
	set(&conf.TLSConfig.CAFile, cfg.CAFile)
	set(&conf.TLSConfig.CertFile, cfg.CertFile)
	set(&conf.TLSConfig.KeyFile, cfg.KeyFile)
	set(&conf.TLSConfig.Address, cfg.ServerName)
	if cfg.InsecureSkipVerify {
		conf.TLSConfig.InsecureSkipVerify = true
	}
	return conf
}

// usesHTTPS reports whether the client talks HTTPS to Consul. As
// api.NewClient reads it, a scheme in the address wins over the setting.
func usesHTTPS(conf *api.Config) bool {
	if scheme, _, ok := strings.Cut(conf.Address, "://"); ok {
		return scheme == "https"
	}
	return conf.Scheme == "https"
}

// checkAddress refuses an address no request could be made to, at start
// rather than with a failed round every few seconds forever.
func checkAddress(conf *api.Config) error {
	addr := conf.Address
	if !strings.Contains(addr, "://") {
		addr = conf.Scheme + "://" + addr
	}
	u, err := url.Parse(addr)
	if err == nil && u.Host == "" && u.Scheme != "unix" {
		err = errors.New("no host")
	}
	if err == nil && u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "unix" {
		err = fmt.Errorf("scheme %q is none of http, https, unix", u.Scheme)
	}
	if err != nil {
		return fmt.Errorf("%w %q: %v", ErrAddress, conf.Address, err)
	}
	return nil
}

// newClient builds a Consul client, from the environment first and flags on
// top, with at most conns connections. With a token file, the token is set
// on each request from the file's latest version.
func newClient(cfg Config, m *metrics, tokens *tokenFile, conns int, keepAlive bool) (*api.Client, error) {
	conf := clientConfig(cfg)
	if path, ok := strings.CutPrefix(conf.Address, "unix://"); ok {
		// consul/api would swap in an HTTP client of its own for a
		// socket, without our limits and instrumentation: dial the socket
		// from ours instead.
		conf.Address, conf.Scheme = "consul.sock", "http"
		conf.Transport.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}
	}

	conf.Transport.MaxIdleConnsPerHost = conns
	conf.Transport.MaxConnsPerHost = conns
	conf.Transport.DisableKeepAlives = !keepAlive
	// Gzip made a round at 200 services a fifth slower, in Consul's CPU
	// and ours, and the adapter normally runs next to a Consul agent.
	conf.Transport.DisableCompression = true
	httpClient := &http.Client{Transport: cfg.WatchTransport}
	if keepAlive {
		httpClient.Transport = cfg.Transport
	}
	if httpClient.Transport == nil {
		var err error
		if httpClient, err = api.NewHttpClient(conf.Transport, conf.TLSConfig); err != nil {
			return nil, fmt.Errorf("consul TLS configuration: %w", err)
		}
	}
	if cfg.NoRedirects {
		// The 3xx answer comes back as it is, and fails as Consul's
		// client takes any status but 200.
		httpClient.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	}
	if tokens != nil {
		conf.TokenFile, conf.Token = "", ""
		httpClient.Transport = &tokenTransport{next: httpClient.Transport, tokens: tokens}
	}
	httpClient.Transport = &sinkTransport{next: &instrumentedTransport{next: &limitTransport{next: httpClient.Transport, slots: cfg.InFlight}, metrics: m, prefix: conf.PathPrefix}}
	conf.HttpClient = httpClient

	client, err := api.NewClient(conf)
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	return client, nil
}

// Run refreshes on every tick, and early when the watch sees Consul change,
// until ctx ends, sending each successful snapshot on ch. After a failure it
// retries sooner, with backoff and jitter.
func (d *Discovery) Run(ctx context.Context, ch chan<- []*targetgroup.Group) {
	if d.serviceWatchClient != nil {
		d.runServices(ctx, ch)
		return
	}
	wake := make(chan struct{}, 1)
	stopWatch := func() {}
	if d.cfg.Watch {
		stopWatch = d.watch(ctx, wake)
	}
	defer func() { stopWatch() }()
	// A token bucket rather than a fixed pause: a single change is handled
	// at once, a storm of changes at most once per MinRoundInterval.
	limiter := rate.NewLimiter(rate.Every(d.cfg.MinRoundInterval), 1)
	timer := time.NewTimer(0)
	defer timer.Stop()
	failures := 0
	sentOnce := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-wake:
			if d.sawEverything() {
				continue // the last round read this move already
			}
			if limiter.Wait(ctx) != nil {
				return
			}
		}

		next := d.cfg.RefreshInterval
		groups, changed, err := d.refreshRound(ctx)
		if d.cfg.Watch && d.wentBackwards {
			// Consul lost state behind the watch's back (restarted faster
			// than a query could fail, a snapshot restore): its blocking
			// queries now wait for an index that may be minutes away.
			level.Info(d.logger).Log("msg", "Consul's index went backwards, restarting the watch")
			stopWatch()
			stopWatch = d.watch(ctx, wake)
		}
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			failures++
			next = retryDelay(failures, d.cfg.RefreshInterval)
			level.Error(d.logger).Log("msg", "Refresh failed, keeping the previous targets", "err", err, "retry_in", next)
		case !changed && sentOnce:
			// Nothing moved in Consul: the Manager and the file already
			// hold this snapshot, and re-rendering it would be wasted work.
			failures = 0
		default:
			failures = 0
			select {
			case ch <- groups:
				sentOnce = true
			case <-ctx.Done():
				return
			}
		}
		timer.Reset(next)
	}
}

// retryDelay doubles from one second per consecutive failure, capped at the
// refresh interval, with up to 20% jitter so that many adapters restarted
// together do not hit a recovering Consul in step.
func retryDelay(failures int, limit time.Duration) time.Duration {
	d := limit
	if failures < 30 {
		d = min(time.Second<<(failures-1), limit)
	}
	return d - time.Duration(rand.Int64N(int64(d)/5+1))
}

// Refresh runs one round and returns the full snapshot: one group per
// service, plus an empty group for each service of the previous snapshot that
// is gone. On any error it returns nothing and the next round starts from the
// same previous snapshot. Not safe for concurrent use.
func (d *Discovery) Refresh(ctx context.Context) ([]*targetgroup.Group, error) {
	groups, _, err := d.refreshRound(ctx)
	return groups, err
}

// refreshRound is Refresh, also saying whether the snapshot differs from
// the previous round's.
func (d *Discovery) refreshRound(ctx context.Context) ([]*targetgroup.Group, bool, error) {
	start := time.Now()
	groups, changed, err := d.refresh(ctx)
	d.metrics.refreshDuration.Observe(time.Since(start).Seconds())
	d.metrics.flushStaleness()
	if err != nil {
		d.resync.Store(true)
		d.metrics.refreshes.WithLabelValues("failure").Inc()
		if ctx.Err() == nil {
			d.metrics.failures.WithLabelValues(failureReason(err)).Inc()
			d.status.record(err, 0, 0)
		}
		return nil, false, err
	}
	d.metrics.refreshes.WithLabelValues("success").Inc()
	d.metrics.lastSuccess.SetToCurrentTime()
	level.Debug(d.logger).Log("msg", "Refresh done", "services", len(d.sent), "targets", d.targets, "duration", time.Since(start))
	d.status.record(nil, len(d.sent), d.targets)
	return groups, changed, nil
}

func (d *Discovery) refresh(ctx context.Context) ([]*targetgroup.Group, bool, error) {
	resync := d.resync.Swap(false)
	d.wentBackwards = false
	groups, changed, err := d.round(ctx, d.cfg.AllowStale, resync)
	if errors.Is(err, errBehind) {
		// Only the leader holds every write that any server has confirmed.
		// If it is behind too, Consul lost state (a restore, a restarted
		// dev agent), and that is the truth now.
		d.metrics.behindAnswers.Inc()
		level.Debug(d.logger).Log("msg", "A lagging server answered; reading the round again from the leader", "err", err)
		// Consistent reads (see readAs), and a dump of its own: the
		// shared one may be the lagging server's.
		d.confirming = true
		groups, changed, err = d.round(ctx, false, resync)
		d.confirming = false
	}
	return groups, changed, err
}

// round reads the catalog once: with stale reads (any server answers) it
// fails with errBehind rather than take back what a round before applied.
func (d *Discovery) round(ctx context.Context, stale, resync bool) ([]*targetgroup.Group, bool, error) {
	names, servicesIndex, err := d.listServices(ctx, stale)
	if err != nil {
		return nil, false, fmt.Errorf("listing services: %w", err)
	}
	// Read before the per-service queries: a change during the round then
	// shows as a moved index in the next one.
	state, err := d.readState(ctx, servicesIndex, stale)
	if err != nil {
		return nil, false, fmt.Errorf("reading catalog indexes: %w", err)
	}
	if state.before(d.state) {
		if stale {
			return nil, false, fmt.Errorf("catalog indexes %+v below %+v: %w", state, d.state, errBehind)
		}
		d.wentBackwards = true
	}
	settle := false
	var loc *located
	if !resync && !d.wentBackwards {
		quiet := d.snapshot != nil && state == d.state
		switch {
		case quiet && !d.unsettled:
			d.metrics.rounds.WithLabelValues(roundQuiet).Inc()
			return d.snapshot, false, nil // nothing changed: a round of three requests
		case quiet:
			// The catalog went quiet after a change read with stale
			// reads. The server that answered the services may have lagged
			// the one that gave the indexes, and then no index would move
			// again to show it: read those services once from the leader.
			// (The node dump is checked against the round's indexes.)
			settle = true
			if d.settleOnly != nil && d.digests != nil {
				loc = &located{digests: d.digests, dirty: d.settleOnly}
			}
		case d.healthOnly(state):
			before := d.snapshot
			groups, changed, err := d.healthRound(ctx, state, stale)
			if err == nil {
				var touched []string
				for i, g := range groups {
					if g != before[i] {
						touched = append(touched, g.Source)
					}
				}
				d.noteRead(touched, stale, false)
				d.metrics.rounds.WithLabelValues(roundHealth).Inc()
			}
			return groups, changed, err
		case d.digests != nil && d.locates():
			if loc, err = d.locate(ctx, state.highest(), stale); err != nil {
				return nil, false, err
			}
		}
	}
	// The tables watch's first round reads from the leader: read with
	// stale reads, its answers would all be read again by a settling
	// round. Stale reads guard nothing yet: there are no targets to take
	// back. (A one-off refresh settles nothing, and keeps them.)
	stale = stale && !settle && !(d.snapshot == nil && d.locates())

	// A full round reads the dump for the next round to compare with,
	// before the services: a change during the round then shows there.
	var digests map[string]uint64
	if loc == nil && d.locates() {
		if digests, err = d.readDigests(ctx, state.highest(), stale); err != nil {
			return nil, false, err
		}
	}

	// With stale reads, a service's answer may come from a server behind
	// the round's indexes. Where answers hold every instance (no per-service
	// filter), one whose digest differs from the dump's, which is as new as
	// those indexes, is read again from the leader at once; no settling
	// round is owed for it.
	want := digests
	if loc != nil {
		want = loc.digests
	}
	verify := stale && want != nil && d.cfg.Filter == "" && len(d.cfg.Tags) == 0 && len(d.cfg.NodeMeta) == 0

	groups := make([]*targetgroup.Group, len(names), len(names)+len(d.sent))
	indexes := make([]uint64, len(names))
	g, gctx := errgroup.WithContext(ctx) // the first failure cancels the rest of the round
	g.SetLimit(d.cfg.MaxConcurrency)
	var queried []string
	for i, name := range names {
		if loc != nil && !loc.dirty[name] {
			if prev := d.previousGroup(name); prev != nil {
				groups[i], indexes[i] = prev, d.serviceIndexes[name]
				continue
			}
		}
		queried = append(queried, name)
		g.Go(func() error {
			entries, index, err := d.serviceInstances(gctx, name, stale)
			if err != nil {
				return fmt.Errorf("querying service %q: %w", name, err)
			}
			if seen := d.serviceIndexes[name]; stale && index < seen {
				return fmt.Errorf("service %q at index %d, below %d: %w", name, index, seen, errBehind)
			}
			if verify && answerDigest(name, entries) != want[name] {
				if entries, index, err = d.serviceInstances(gctx, name, false); err != nil {
					return fmt.Errorf("querying service %q from the leader: %w", name, err)
				}
			}
			groups[i], indexes[i] = d.roundGroup(name, entries), index
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, false, err
	}

	current := make(map[string]struct{}, len(names))
	serviceIndexes := make(map[string]uint64, len(names))
	targets := 0
	changed := d.snapshot == nil || len(names) != len(d.snapshot)
	for i, name := range names {
		current[name] = struct{}{}
		serviceIndexes[name] = indexes[i]
		targets += len(groups[i].Targets)
		changed = changed || groups[i] != d.snapshot[i]
	}
	if loc != nil {
		d.digests = loc.digests
		d.metrics.rounds.WithLabelValues(roundLocated).Inc()
	} else {
		d.digests = digests
		d.metrics.rounds.WithLabelValues(roundFull).Inc()
	}
	d.state, d.snapshot, d.serviceIndexes = state, groups[:len(names):len(names)], serviceIndexes
	// The Manager keeps a group until it gets an empty one with its source.
	for name := range d.sent {
		if _, ok := current[name]; !ok {
			groups = append(groups, &targetgroup.Group{Source: name})
			changed = true
		}
	}
	d.sent = current
	d.targets = targets
	d.noteRead(queried, stale && !verify, loc == nil)
	d.metrics.services.Set(float64(len(names)))
	d.metrics.targets.Set(float64(targets))
	return groups, changed, nil
}

// noteRead records which services a round read, and how, for the settling
// round: a full round read every service, a located or health round only
// those given.
func (d *Discovery) noteRead(services []string, stale, full bool) {
	switch {
	case full:
		d.unsettled, d.settleOnly = stale, nil
	case stale:
		if !d.unsettled {
			d.unsettled, d.settleOnly = true, map[string]bool{}
		}
		if d.settleOnly != nil {
			for _, name := range services {
				d.settleOnly[name] = true
			}
		}
	case d.unsettled && d.settleOnly != nil:
		// Read again from the leader: settled.
		for _, name := range services {
			delete(d.settleOnly, name)
		}
		if len(d.settleOnly) == 0 {
			d.unsettled, d.settleOnly = false, nil
		}
	}
}

// locates reports whether rounds compare Consul's node dump to query only
// the services that changed: in the tables watch, where Consul serves the
// dump. The per-service watch knows that already, and a one-off refresh
// has nothing to compare.
func (d *Discovery) locates() bool {
	return d.cfg.Watch && d.serviceWatchClient == nil && !d.noDump
}

// previousGroup returns the snapshot's group of a service, or nil.
func (d *Discovery) previousGroup(name string) *targetgroup.Group {
	i, found := slices.BinarySearchFunc(d.snapshot, name, func(g *targetgroup.Group, name string) int {
		return strings.Compare(g.Source, name)
	})
	if !found {
		return nil
	}
	return d.snapshot[i]
}

// listServices returns the sorted names of the services to query, and the
// index of the services table.
func (d *Discovery) listServices(ctx context.Context, stale bool) ([]string, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.RequestTimeout)
	defer cancel()
	opts := d.listOptions(ctx)
	d.readAs(opts, stale)
	services, meta, err := d.client.Catalog().Services(opts)
	if err != nil {
		return nil, 0, d.catalogFilterRejected(err)
	}
	// An empty list means the token may read none of it, or that a server
	// answered which has not yet replayed its log.
	if d.emptyMeansACL(services, meta) {
		if stale && meta.LastIndex < d.state.services {
			return nil, 0, fmt.Errorf("an empty service list at index %d, below %d: %w", meta.LastIndex, d.state.services, errBehind)
		}
		return nil, 0, errACLFiltered
	}
	names := d.wantedNames(services)
	sort.Strings(names)
	return names, meta.LastIndex, nil
}

// emptyMeansACL reports whether a service list is empty because Consul hid
// it from the token. Every datacenter lists at least its servers' own
// "consul" service, unless a filter or node meta chose none.
func (d *Discovery) emptyMeansACL(services map[string][]string, meta *api.QueryMeta) bool {
	return len(services) == 0 && (meta.ResultsFilteredByACLs || d.cfg.CatalogFilter == "" && len(d.cfg.NodeMeta) == 0)
}

// wantedNames returns the services to discover from Consul's list, and
// warns once about each allow-listed name that Consul does not have: the
// file then lists nothing for it, which would otherwise look like a service
// without instances.
func (d *Discovery) wantedNames(services map[string][]string) []string {
	names := make([]string, 0, len(services))
	for name, tags := range services {
		if d.wanted(name, tags) {
			names = append(names, name)
		}
	}
	missing := 0
	for _, name := range d.cfg.Services {
		if _, ok := services[name]; ok {
			delete(d.warned, name)
			continue
		}
		missing++
		if !d.warned[name] {
			d.warned[name] = true
			level.Warn(d.logger).Log("msg", "Consul has no service of this name; it is discovered once registered", "service", name)
		}
	}
	d.metrics.servicesNotFound.Set(float64(missing))
	return names
}

// wanted applies the allow-list, and skips services whose catalog tags (the
// union over their instances) cannot satisfy the tag filter.
func (d *Discovery) wanted(name string, tags []string) bool {
	if len(d.cfg.Services) > 0 {
		if !slices.Contains(d.cfg.Services, name) {
			return false
		}
	} else if name == consulService {
		return false
	}
	for _, t := range d.cfg.Tags {
		if !slices.Contains(tags, t) {
			return false
		}
	}
	return true
}

// serviceInstances queries one service's instances, and returns them with
// the service's index; with stale false the leader answers.
func (d *Discovery) serviceInstances(ctx context.Context, name string, stale bool) ([]*api.ServiceEntry, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.RequestTimeout)
	defer cancel()
	opts := d.serviceOptions(ctx)
	d.readAs(opts, stale)
	entries, meta, err := d.client.Health().ServiceMultipleTags(name, d.cfg.Tags, false, opts)
	if err != nil {
		return nil, 0, d.filterRejected(err)
	}
	if len(entries) == 0 && meta.ResultsFilteredByACLs {
		return nil, 0, errACLFiltered
	}
	return registeredAs(name, entries), meta.LastIndex, nil
}

// filterRejected names the filter expression when Consul refused it. Consul
// answers 500 with "Failed to create boolean expression evaluator" (400 in
// some versions) to a query whose filter does not parse or names no field.
func (d *Discovery) filterRejected(err error) error {
	return filterRejected(err, d.cfg.Filter, cmp.Or(d.cfg.FilterName, "--consul.filter"))
}

// catalogFilterRejected is filterRejected for the service list's filter.
func (d *Discovery) catalogFilterRejected(err error) error {
	return filterRejected(err, d.cfg.CatalogFilter, cmp.Or(d.cfg.CatalogFilterName, "filter"))
}

func filterRejected(err error, filter, name string) error {
	var status api.StatusError
	if filter != "" && errors.As(err, &status) && strings.Contains(status.Body, "boolean expression") {
		return fmt.Errorf("%w %q (%s): %w", errFilterRejected, filter, name, err)
	}
	return err
}

// registeredAs keeps the entries registered under exactly name. Consul looks
// service names up case-insensitively: with "api" and "API" registered, the
// query for each returns both, and every instance would be listed twice.
func registeredAs(name string, entries []*api.ServiceEntry) []*api.ServiceEntry {
	return slices.DeleteFunc(entries, func(e *api.ServiceEntry) bool { return e.Service.Service != name })
}

// readAs makes opts a round's read: from any server with stale reads,
// else from the leader. Where stale reads are allowed, a read sent to the
// leader is there to confirm something (an answer that was behind, one
// that disagrees with the node dump, a settling read, the first round's),
// and it is a consistent read: a leader just elected answers other reads
// from what it has applied, which can be far behind its log until its
// first commit, and it refuses consistent reads until then. With
// --no-consul.allow-stale the user chose Consul's default mode; no answer
// is then found behind, so none is confirmed.
func (d *Discovery) readAs(opts *api.QueryOptions, stale bool) {
	opts.AllowStale = stale
	opts.RequireConsistent = !stale && d.cfg.AllowStale
}

func (d *Discovery) queryOptions(ctx context.Context) *api.QueryOptions {
	return (&api.QueryOptions{AllowStale: d.cfg.AllowStale}).WithContext(ctx)
}

// listOptions are those of the service list: the catalog filter and the
// node meta select which services are discovered.
func (d *Discovery) listOptions(ctx context.Context) *api.QueryOptions {
	opts := d.queryOptions(ctx)
	opts.Filter, opts.NodeMeta = d.cfg.CatalogFilter, d.cfg.NodeMeta
	return opts
}

// serviceOptions are those of a service's instances query.
func (d *Discovery) serviceOptions(ctx context.Context) *api.QueryOptions {
	opts := d.queryOptions(ctx)
	opts.Filter, opts.NodeMeta = d.cfg.Filter, d.cfg.NodeMeta
	return opts
}

// roundGroup returns the group of a service's instances: the previous
// snapshot's group if it holds exactly these labels, else a new one. The
// Manager keeps the groups it was sent until the next ones arrive: without
// this, each round would build a second copy of every target, although on
// most rounds few services change. Called concurrently during a round,
// when the snapshot is only read.
func (d *Discovery) roundGroup(name string, entries []*api.ServiceEntry) *targetgroup.Group {
	instances := instanceLabels(entries, d.cfg.TagSeparator)
	if prev := d.previousGroup(name); prev != nil && holds(prev, instances) {
		return prev
	}
	return groupOf(name, instances)
}
