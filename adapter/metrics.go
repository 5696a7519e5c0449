package adapter

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/promreg"
)

type metrics struct {
	writes          prometheus.Counter
	writeFailures   prometheus.Counter
	dirSyncFailures prometheus.Counter
	lastWrite       prometheus.Gauge
	// registered is every collector above, to take them out together.
	registered *promreg.Set
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		writes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "consul_sd_adapter",
			Name:      "file_writes_total",
			Help:      "Writes of the output file (only changed content is written).",
		}),
		writeFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "consul_sd_adapter",
			Name:      "file_write_failures_total",
			Help:      "Failed writes of the output file; the previous file stays in place.",
		}),
		dirSyncFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "consul_sd_adapter",
			Name:      "file_dir_sync_failures_total",
			Help:      "Writes that replaced the output file but could not fsync its directory: a crash may bring back the previous file.",
		}),
		lastWrite: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "consul_sd_adapter",
			Name:      "last_file_write_timestamp_seconds",
			Help:      "Unix time of the last successful write of the output file.",
		}),
	}
	m.registered = promreg.NewSet(reg)
	promreg.Register(m.registered, &m.writes)
	promreg.Register(m.registered, &m.writeFailures)
	promreg.Register(m.registered, &m.dirSyncFailures)
	promreg.Register(m.registered, &m.lastWrite)
	return m, m.registered.Err()
}
