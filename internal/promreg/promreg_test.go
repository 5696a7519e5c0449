package promreg

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRegisterCarriesOn(t *testing.T) {
	reg := prometheus.NewRegistry()
	wrapped := prometheus.WrapRegistererWith(prometheus.Labels{"entry": "web"}, reg)
	newCounter := func() prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "writes_total", Help: "Writes."})
	}
	register := func(c any) error {
		s := NewSet(wrapped)
		switch c := c.(type) {
		case *prometheus.Counter:
			Register(s, c)
		case *prometheus.Gauge:
			Register(s, c)
		}
		return s.Err()
	}
	first := newCounter()
	if err := register(&first); err != nil {
		t.Fatal(err)
	}
	first.Inc()
	second := newCounter()
	if err := register(&second); err != nil {
		t.Fatal(err)
	}
	second.Inc()
	if got := testutil.ToFloat64(first); got != 2 {
		t.Errorf("the second registration did not carry on the first's series: %v, want 2", got)
	}

	other := prometheus.NewGauge(prometheus.GaugeOpts{Name: "writes_total", Help: "Writes."})
	if err := register(&other); err == nil {
		t.Error("a collector of another type under the same name was accepted")
	}
}
