package adapter

import (
	"bufio"
	"net/http"
)

// HTTPSDHandler serves the targets for Prometheus's http_sd_configs: the
// same entries as the file, always as JSON. Before the first successful
// round it answers 503, so a Prometheus that already has targets keeps them
// instead of being told there are none.
func (a *Adapter) HTTPSDHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		snap := a.Current()
		if snap == nil {
			http.Error(w, "No successful refresh yet.", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		if r.Method == http.MethodHead {
			return
		}
		// Rendered per request rather than kept: Prometheus asks once a
		// minute by default, and a copy would double the adapter's memory.
		bw := bufio.NewWriterSize(w, 64<<10)
		if Write(bw, snap.Groups, JSON) == nil {
			bw.Flush()
		}
	})
}
