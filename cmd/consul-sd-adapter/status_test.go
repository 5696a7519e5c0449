package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	pmodel "github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"

	"github.com/consul-sd-adapter/consul-sd-adapter/adapter"
	"github.com/consul-sd-adapter/consul-sd-adapter/consulsd"
)

// statusGroups returns services groups of instances targets each, labelled
// as consulsd labels them: the service's labels on the group, each
// instance's node and health on its target.
func statusGroups(services, instances int) []*targetgroup.Group {
	groups := make([]*targetgroup.Group, services)
	for s := range services {
		name := fmt.Sprintf("svc-%05d", s)
		g := &targetgroup.Group{Source: name, Labels: pmodel.LabelSet{"__meta_consul_service": pmodel.LabelValue(name), "__meta_consul_dc": "dc1"}}
		for i := range instances {
			health := "passing"
			if i%7 == 3 {
				health = "critical"
			}
			g.Targets = append(g.Targets, pmodel.LabelSet{
				pmodel.AddressLabel:        pmodel.LabelValue(fmt.Sprintf("10.%d.%d.%d:80", s/256%256, s%256, i%256)),
				"__meta_consul_node":       pmodel.LabelValue(fmt.Sprintf("node-%d", (s+i)%1000)),
				"__meta_consul_health":     pmodel.LabelValue(health),
				"__meta_consul_service_id": pmodel.LabelValue(fmt.Sprintf("%s-%d", name, i)),
			})
		}
		groups[s] = g
	}
	// Gone services keep an empty group; the page leaves them out.
	return append(groups, &targetgroup.Group{Source: "gone"}, nil)
}

// statusServer returns the status page's handler over a snapshot of groups.
func statusServer(t testing.TB, groups []*targetgroup.Group) http.Handler {
	t.Helper()
	cfg := consulsd.DefaultConfig
	cfg.Address = "127.0.0.1:1"
	d, err := consulsd.New(cfg, log.NewNopLogger(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "custom_sd.json")
	a, err := adapter.New(adapter.Config{OutputFile: out, FileMode: 0o644}, log.NewNopLogger(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Update(groups); err != nil {
		t.Fatal(err)
	}
	return statusHandler(d, a, out)
}

var serviceHeading = regexp.MustCompile(`<h3 class="service">([^<]*)</h3>`)

func getStatus(t *testing.T, h http.Handler, url string) (int, string, []string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, url, nil))
	var names []string
	for _, m := range serviceHeading.FindAllStringSubmatch(rec.Body.String(), -1) {
		names = append(names, m[1])
	}
	return rec.Code, rec.Body.String(), names
}

func TestStatusPagePages(t *testing.T) {
	h := statusServer(t, statusGroups(2*servicesPerPage+20, 2))
	for _, tc := range []struct {
		url         string
		first, last int // service numbers listed
		info        string
	}{
		{"/", 0, servicesPerPage - 1, "page 1 of 3"},
		{"/?page=2", servicesPerPage, 2*servicesPerPage - 1, "page 2 of 3"},
		{"/?page=3", 2 * servicesPerPage, 2*servicesPerPage + 19, "page 3 of 3"},
		{"/?page=99", 2 * servicesPerPage, 2*servicesPerPage + 19, "page 3 of 3"}, // the last there is
	} {
		code, body, names := getStatus(t, h, tc.url)
		if code != http.StatusOK {
			t.Errorf("%s: %d", tc.url, code)
			continue
		}
		want := fmt.Sprintf("svc-%05d…svc-%05d (%d)", tc.first, tc.last, tc.last-tc.first+1)
		if len(names) == 0 || fmt.Sprintf("%s…%s (%d)", names[0], names[len(names)-1], len(names)) != want {
			t.Errorf("%s lists %q, want %s", tc.url, names, want)
		}
		if !strings.Contains(body, tc.info) {
			t.Errorf("%s does not say %q", tc.url, tc.info)
		}
	}
	_, body, _ := getStatus(t, h, "/?page=2")
	for _, link := range []string{`href="/?page=1" rel="prev"`, `href="/?page=3" rel="next"`} {
		if !strings.Contains(body, link) {
			t.Errorf("page 2 has no link %s", link)
		}
	}
	for _, bad := range []string{"/?page=0", "/?page=-1", "/?page=two"} {
		if code, _, _ := getStatus(t, h, bad); code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", bad, code)
		}
	}
}

// A service with more instances than a page lists shows the lowest
// addresses and counts them all.
func TestStatusPageLargeService(t *testing.T) {
	h := statusServer(t, statusGroups(1, 3*instancesPerService))
	_, body, _ := getStatus(t, h, "/")
	if rows := strings.Count(body, "<tr><td>10."); rows != instancesPerService {
		t.Errorf("%d instance rows, want %d", rows, instancesPerService)
	}
	if !strings.Contains(body, fmt.Sprintf("%d instances:", 3*instancesPerService)) ||
		!strings.Contains(body, fmt.Sprintf("%d more in", 2*instancesPerService)) {
		t.Errorf("the summary does not count all %d instances:\n%s", 3*instancesPerService, body)
	}
	if !strings.Contains(body, "<td>10.0.0.0:80</td>") {
		t.Error("the lowest address is not listed")
	}
}

// A GET of the status page costs the same whatever the number of targets:
// at 100,000 it used to build every entry, 150 MB a request.
func TestStatusPageCostDoesNotGrow(t *testing.T) {
	allocs := func(services int) float64 {
		h := statusServer(t, statusGroups(services, 5))
		req := httptest.NewRequest(http.MethodGet, "/?page=2", nil)
		w := discardResponse{header: http.Header{}}
		return testing.AllocsPerRun(5, func() { h.ServeHTTP(w, req) })
	}
	small, large := allocs(200), allocs(20000)
	if large > small*1.1+10 {
		t.Errorf("a GET allocates %.0f times at 1,000 targets and %.0f at 100,000; want no growth", small, large)
	}
}

// discardResponse is a ResponseWriter that keeps nothing, as a network
// connection does not.
type discardResponse struct{ header http.Header }

func (d discardResponse) Header() http.Header         { return d.header }
func (d discardResponse) Write(p []byte) (int, error) { return io.Discard.Write(p) }
func (d discardResponse) WriteHeader(int)             {}

// BenchmarkStatusPage100k is one GET of the status page at 100,000 targets
// (20,000 services × 5): B/op is what a request allocates, page-bytes what
// it sends.
func BenchmarkStatusPage100k(b *testing.B) {
	h := statusServer(b, statusGroups(20000, 5))
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	w := discardResponse{header: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(w, req)
	}
	b.ReportMetric(float64(rec.Body.Len()), "page-bytes")
}
