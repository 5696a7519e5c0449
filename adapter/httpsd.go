package adapter

import (
	"bufio"
	"net/http"
)

// HTTPSDHandler serves the targets for Prometheus's http_sd_configs: the
// same entries as the file, always as JSON. Before the first successful
// round it answers 503, so a Prometheus that already has targets keeps them
// instead of being told there are none.
//
// With ?shards=N&shard=K it serves only the targets that a hashmod relabel
// rule on __address__ with modulus N keeps on shard K (see Shard). Bad
// parameters answer 400 even before the first round: they are a mistake
// in the scrape config that no refresh will mend.
func (a *Adapter) HTTPSDHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		shard, err := ParseShard(r.URL.Query())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		snap := a.Current()
		if snap == nil {
			http.Error(w, "No successful refresh yet.", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		if r.Method == http.MethodHead {
			return
		}
		groups := snap.Groups
		if shard != nil {
			groups = shard.Filter(groups)
		}
		// Rendered per request rather than kept: Prometheus asks once a
		// minute by default, and a copy would double the adapter's memory.
		bw := bufio.NewWriterSize(w, 64<<10)
		if Write(bw, groups, JSON) == nil {
			bw.Flush()
		}
	})
}
