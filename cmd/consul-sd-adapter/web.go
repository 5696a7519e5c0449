package main

import (
	"errors"
	"log/slog"
	"net/http"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web"
	sloggokit "github.com/tjhop/slog-gokit"

	"github.com/consul-sd-adapter/consul-sd-adapter/adapter"
)

// newWebHandler serves the operational endpoints.
func newWebHandler(reg *prometheus.Registry, a *adapter.Adapter) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/-/healthy", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("Healthy.\n"))
	})
	// Ready once the file reflects a successful round: before that, a
	// Prometheus reading it would see no targets or stale ones.
	mux.HandleFunc("/-/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Ready() {
			http.Error(w, "Not ready: no successful refresh yet.", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("Ready.\n"))
	})
	landing, err := web.NewLandingPage(web.LandingConfig{
		Name:        programName,
		Description: "Discovers services in Consul for Prometheus's file_sd_configs.",
		Version:     version.Info(),
		Links: []web.LandingLinks{
			{Address: "/metrics", Text: "Metrics"},
			{Address: "/-/ready", Text: "Readiness"},
		},
	})
	if err == nil {
		mux.Handle("/", landing)
	}
	return mux
}

// serveWeb runs the web server with exporter-toolkit, which adds TLS and
// basic auth from --web.config.file.
func serveWeb(server *http.Server, flags *web.FlagConfig, logger log.Logger) error {
	slogger := slog.New(sloggokit.NewGoKitHandler(log.With(logger, "component", "web"), nil))
	if err := web.ListenAndServe(server, flags, slogger); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
