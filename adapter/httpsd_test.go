package adapter

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
)

// TestHTTPSDShards: the shards of /targets split its entries between them,
// each entry served by exactly one shard, unchanged; bad parameters answer
// 400 with one line naming the parameter, before the first round as after.
func TestHTTPSDShards(t *testing.T) {
	a, err := New(Config{OutputFile: filepath.Join(t.TempDir(), "custom_sd.json"), FileMode: 0o644}, log.NewNopLogger(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	h := a.HTTPSDHandler()
	checkBadShardParams(t, h)
	if code := serve(h, "/targets?shards=3&shard=0").Code; code != http.StatusServiceUnavailable {
		t.Errorf("sharded /targets before the first round: %d, want 503", code)
	}

	if err := a.Update(shardGroups()); err != nil {
		t.Fatal(err)
	}
	all := entryLines(serve(h, "/targets").Body.String())
	var union []string
	for _, k := range []string{"0", "1", "2"} {
		rec := serve(h, "/targets?shards=3&shard="+k)
		lines := entryLines(rec.Body.String())
		if code := rec.Code; code != http.StatusOK || len(lines) == 0 || len(lines) == len(all) {
			t.Errorf("shard %s of 3: %d with %d of %d entries, want 200 with some", k, code, len(lines), len(all))
		}
		union = append(union, lines...)
	}
	slices.Sort(all)
	slices.Sort(union)
	if !slices.Equal(union, all) {
		t.Errorf("the 3 shards serve %d entries, want the %d of /targets, each once and as /targets serves it", len(union), len(all))
	}
	checkBadShardParams(t, h)
}

// checkBadShardParams asserts that h answers every bad query with a 400 and
// one plain-text line naming the parameter.
func checkBadShardParams(t *testing.T, h http.Handler) {
	t.Helper()
	for _, tc := range badShardQueries {
		rec := serve(h, "/targets?"+tc.query)
		if rec.Code != http.StatusBadRequest || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain") {
			t.Errorf("/targets?%s: %d %s, want 400 text/plain", tc.query, rec.Code, rec.Header().Get("Content-Type"))
		}
		checkParamError(t, tc.query, rec.Body.String(), tc.param)
	}
}

// serve GETs target from h.
func serve(h http.Handler, target string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	return rec
}

// entryLines returns the entries of a JSON file_sd body, one a line as
// Write writes them, without the separating commas.
func entryLines(body string) []string {
	var entries []string
	for line := range strings.Lines(body) {
		line = strings.TrimSuffix(strings.TrimSpace(line), ",")
		if strings.HasPrefix(line, "{") {
			entries = append(entries, line)
		}
	}
	return entries
}
