package consulsd

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/promreg"
)

// namespace prefixes every metric of this program.
const namespace = "consul_sd_adapter"

// Failure reasons, the values of the "reason" label.
const (
	reasonTimeout    = "timeout"     // a request ran past --consul.request-timeout
	reasonHTTPStatus = "http_status" // Consul answered with a non-2xx status
	reasonDecode     = "decode"      // the answer could not be decoded
	reasonConnection = "connection"  // anything else: refused, reset, TLS, DNS
	reasonACL        = "acl"         // Consul hid every result from our token
	reasonFilter     = "filter"      // Consul rejected the filter expression
	reasonNoLeader   = "no_leader"   // the server that answered knew of no leader
)

// Round kinds, the values of the "kind" label of rounds_total.
const (
	roundQuiet   = "quiet"
	roundHealth  = "health"
	roundLocated = "located"
	roundFull    = "full"
)

type metrics struct {
	refreshDuration  prometheus.Histogram
	refreshes        *prometheus.CounterVec
	failures         *prometheus.CounterVec
	lastSuccess      prometheus.Gauge
	services         prometheus.Gauge
	targets          prometheus.Gauge
	requestDuration  *prometheus.HistogramVec
	blockingQueries  *prometheus.CounterVec
	lastContact      prometheus.Gauge
	servicesNotFound prometheus.Gauge
	unknownLeader    prometheus.Counter
	behindAnswers    prometheus.Counter
	rounds           *prometheus.CounterVec
	// registered is every collector above, to take them out together.
	registered *promreg.Set
	// maxContact is the largest X-Consul-LastContact, in milliseconds, of
	// the answers since the last flushStaleness.
	maxContact atomic.Int64
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		refreshDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "refresh_duration_seconds",
			Help:      "Duration of a full refresh round against Consul, successful or not.",
			Buckets:   []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "refreshes_total",
			Help:      "Refresh rounds by result (success, failure).",
		}, []string{"result"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "refresh_failures_total",
			Help:      "Failed refresh rounds by reason (timeout, http_status, decode, connection, acl, filter, no_leader).",
		}, []string{"reason"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "last_successful_refresh_timestamp_seconds",
			Help:      "Unix time of the last refresh round in which every Consul query succeeded.",
		}),
		services: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "services",
			Help:      "Services found in the last successful refresh.",
		}),
		targets: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "targets",
			Help:      "Service instances (targets) found in the last successful refresh.",
		}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "consul_request_duration_seconds",
			Help:      "Duration of HTTP requests to Consul by endpoint and status code (0: no answer).",
			Buckets:   []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"endpoint", "code"}),
		servicesNotFound: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "services_not_found",
			Help:      "Services of the allow-list (--consul.service) that Consul does not have.",
		}),
		lastContact: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "consul_last_contact_seconds",
			Help:      "Largest X-Consul-LastContact of the answers of the last round (per-service watch: since the last update): how long the server that answered had not heard from the leader. With stale reads, how far behind the targets may be.",
		}),
		unknownLeader: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "consul_unknown_leader_answers_total",
			Help:      "Answers from a Consul server that knew of no leader (X-Consul-KnownLeader: false): they may be arbitrarily stale.",
		}),
		behindAnswers: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "consul_behind_answers_total",
			Help:      "Answers from a Consul server behind what the targets already held (restarted, catching up), which were not applied: the round or the service list was read again from the leader, a service's watch waited for the server to catch up.",
		}),
		rounds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "rounds_total",
			Help:      "Successful rounds of the tables watch and the ticker by what they queried: quiet (no index moved), health (the checks that are not passing), located (the services whose digest in the node dump moved), full (every service).",
		}, []string{"kind"}),
		blockingQueries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "consul_blocking_queries_total",
			Help:      "Blocking queries of the watch that returned, by endpoint and status code (0: no answer). They wait up to minutes, so they are kept out of the request duration histogram.",
		}, []string{"endpoint", "code"}),
	}
	for _, r := range []string{"success", "failure"} {
		m.refreshes.WithLabelValues(r)
	}
	for _, r := range []string{reasonTimeout, reasonHTTPStatus, reasonDecode, reasonConnection, reasonACL, reasonFilter, reasonNoLeader} {
		m.failures.WithLabelValues(r)
	}
	for _, k := range []string{roundQuiet, roundHealth, roundLocated, roundFull} {
		m.rounds.WithLabelValues(k)
	}
	m.registered = promreg.NewSet(reg)
	promreg.Register(m.registered, &m.refreshDuration)
	promreg.Register(m.registered, &m.refreshes)
	promreg.Register(m.registered, &m.failures)
	promreg.Register(m.registered, &m.lastSuccess)
	promreg.Register(m.registered, &m.services)
	promreg.Register(m.registered, &m.targets)
	promreg.Register(m.registered, &m.requestDuration)
	promreg.Register(m.registered, &m.blockingQueries)
	promreg.Register(m.registered, &m.lastContact)
	promreg.Register(m.registered, &m.unknownLeader)
	promreg.Register(m.registered, &m.behindAnswers)
	promreg.Register(m.registered, &m.servicesNotFound)
	promreg.Register(m.registered, &m.rounds)
	return m, m.registered.Err()
}

// failureReason sorts an error from the Consul client into a reason label.
func failureReason(err error) string {
	var status api.StatusError
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return reasonTimeout
	case errors.Is(err, errACLFiltered):
		return reasonACL
	case errors.Is(err, errFilterRejected):
		return reasonFilter
	case errors.Is(err, errNoLeader):
		return reasonNoLeader
	case errors.As(err, &status):
		return reasonHTTPStatus
	case errors.As(err, &syntax), errors.As(err, &typ), errors.Is(err, io.ErrUnexpectedEOF):
		return reasonDecode
	default:
		return reasonConnection
	}
}

// flushStaleness publishes the largest last contact since the last flush.
func (m *metrics) flushStaleness() {
	m.lastContact.Set(float64(m.maxContact.Swap(0)) / 1000)
}

// observeStaleness records what an answer says of the server that gave it.
func (m *metrics) observeStaleness(h http.Header) {
	if h.Get("X-Consul-KnownLeader") == "false" {
		m.unknownLeader.Inc()
	}
	ms, err := strconv.ParseInt(h.Get("X-Consul-LastContact"), 10, 64)
	if err != nil {
		return
	}
	for {
		cur := m.maxContact.Load()
		if ms <= cur || m.maxContact.CompareAndSwap(cur, ms) {
			return
		}
	}
}

// instrumentedTransport times every request to Consul, counts the watch's
// blocking queries apart, and records how stale each answer may be. The
// endpoint label is the API path without the service name, so its
// cardinality stays fixed.
type instrumentedTransport struct {
	next    http.RoundTripper
	metrics *metrics
	// prefix is the path prefix (path_prefix), taken off the path: behind
	// one, the path would not start with the endpoint, and every service
	// would get a series of its own.
	prefix string
}

func (t *instrumentedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.next.RoundTrip(req)
	code := "0"
	if err == nil {
		code = strconv.Itoa(resp.StatusCode)
	}
	// Blocking health queries are answered from the agent's streaming
	// view, whose answers carry no leader information (KnownLeader false,
	// LastContact 0): only answers at once say how stale their server is.
	blocking := req.URL.Query().Has("index")
	if err == nil && !blocking && resp.StatusCode/100 == 2 {
		t.metrics.observeStaleness(resp.Header)
	}
	endpoint := endpointOf(strings.TrimPrefix(req.URL.Path, t.prefix))
	if blocking {
		t.metrics.blockingQueries.WithLabelValues(endpoint, code).Inc()
	} else {
		t.metrics.requestDuration.WithLabelValues(endpoint, code).Observe(time.Since(start).Seconds())
	}
	// Error answers (a 403 for an unknown token) carry KnownLeader false
	// too: they fail on their own status.
	if err == nil && !blocking && resp.StatusCode/100 == 2 && resp.Header.Get("X-Consul-KnownLeader") == "false" {
		// Without a leader nothing in the catalog can change, so the last
		// good answers are as new as any; and a server that just restarted
		// answers from a state it has not caught up on yet, where whole
		// services may be missing. Taken as a failure, the answer keeps
		// the targets as they were.
		resp.Body.Close()
		return nil, errNoLeader
	}
	return resp, err
}

// endpointOf maps "/v1/health/service/web" to "/v1/health/service".
func endpointOf(path string) string {
	for _, p := range []string{"/v1/health/service/", "/v1/catalog/service/"} {
		if strings.HasPrefix(path, p) {
			return strings.TrimSuffix(p, "/")
		}
	}
	return path
}
