package main

import (
	"errors"
	"log/slog"
	"net/http"
	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/consul-sd-adapter/consul-sd-adapter/adapter"
	"github.com/consul-sd-adapter/consul-sd-adapter/consulsd"
)

// httpSDPath serves the targets for Prometheus's http_sd_configs: all of
// them, or with ?shards=N&shard=K those of one hashmod shard.
const httpSDPath = "/targets"

// newWebHandler serves the operational endpoints, and the rest of the
// paths from rest.
func newWebHandler(reg *prometheus.Registry, ready func() bool, rest http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/-/healthy", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("Healthy.\n"))
	})
	// Ready once the file reflects a successful round: before that, a
	// Prometheus reading it would see no targets or stale ones.
	mux.HandleFunc("/-/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "Not ready: no successful refresh yet.", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("Ready.\n"))
	})
	// Go's profiles, as Prometheus serves them: where the memory of a large
	// catalog goes is otherwise guesswork.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.Handle("/", rest)
	return mux
}

// flagModeHandler serves the targets and the status page of the output the
// flags describe.
func flagModeHandler(d *consulsd.Discovery, a *adapter.Adapter, outputFile string) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(httpSDPath, a.HTTPSDHandler())
	mux.Handle("/", statusHandler(d, a, outputFile))
	return mux
}

// serveWeb runs the web server with exporter-toolkit, which adds TLS and
// basic auth from --web.config.file.
func serveWeb(server *http.Server, flags *web.FlagConfig, logger *slog.Logger) error {
	if err := web.ListenAndServe(server, flags, logger); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
