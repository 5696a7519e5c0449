package main

import (
	"cmp"
	_ "embed"
	"html/template"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	pmodel "github.com/prometheus/common/model"
	"github.com/prometheus/common/version"
	"github.com/prometheus/prometheus/discovery/targetgroup"

	"github.com/consul-sd-adapter/consul-sd-adapter/adapter"
	"github.com/consul-sd-adapter/consul-sd-adapter/consulsd"
)

//go:embed status.html
var statusHTML string

var statusTemplate = template.Must(template.New("status").Funcs(template.FuncMap{
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return time.Since(t).Round(time.Second).String() + " ago (" + t.UTC().Format(time.RFC3339) + ")"
	},
}).Parse(statusHTML))

// servicesPerPage bounds what one GET of the status page shows, and so
// what it costs: at 100,000 targets the whole list was 11 MB of HTML and
// about 150 MB allocated per request.
const servicesPerPage = 50

// instancesPerService bounds the rows of one service; the summary above
// them still counts every instance.
const instancesPerService = 100

// Label names the status page shows, as consulsd sets them.
const (
	nodeLabel   = pmodel.MetaLabelPrefix + "consul_node"
	healthLabel = pmodel.MetaLabelPrefix + "consul_health"
)

// instance is one row of the status page.
type instance struct {
	Address, Node, Health string
}

// service is one section of the status page.
type service struct {
	Name string
	// Instances are the first instancesPerService, by address.
	Instances []instance
	// Total counts every instance; Health counts them by health, in the
	// order passing, warning, critical, maintenance, other.
	Total  int
	Health []healthCount
}

type healthCount struct {
	Health string
	Count  int
}

// Hidden is how many instances the page does not list.
func (s service) Hidden() int { return s.Total - len(s.Instances) }

type statusPage struct {
	Program, Version string
	Refresh          consulsd.Status
	Written          time.Time
	Services         []service
	OutputFile       string
	HTTPSDPath       string
	// Page is 1-based; Pages is 0 when no service has targets. First is
	// the number of the page's first service, Listed the number of services
	// on every page together.
	Page, Pages, First, Listed int
}

func (p statusPage) PrevPage() int { return p.Page - 1 }
func (p statusPage) NextPage() int {
	if p.Page >= p.Pages {
		return 0
	}
	return p.Page + 1
}
func (p statusPage) Last() int { return p.First + len(p.Services) - 1 }

// statusHandler renders the status page: what was found, and how the last
// refresh went, so an operator need not read the logs. It shows one page of
// services (?page=N) and renders only those, so a request costs the same
// at any catalog size.
func statusHandler(d *consulsd.Discovery, a *adapter.Adapter, outputFile string) http.Handler {
	return entryStatusHandler("/", d.Status, a, outputFile, httpSDPath)
}

// entryStatusHandler is the status page of one output at path, whose
// discovery reports through status and whose targets http_sd serves at
// sdPath.
func entryStatusHandler(path string, status func() consulsd.Status, a *adapter.Adapter, outputFile, sdPath string) http.Handler {
	var index atomic.Pointer[serviceIndex]
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != path {
			http.NotFound(w, r)
			return
		}
		page := statusPage{
			Program: programName, Version: version.Version, Refresh: status(),
			OutputFile: outputFile, HTTPSDPath: sdPath, Page: 1,
		}
		if p := r.URL.Query().Get("page"); p != "" {
			n, err := strconv.Atoi(p)
			if err != nil || n < 1 {
				http.Error(w, "page must be a positive number", http.StatusBadRequest)
				return
			}
			page.Page = n
		}
		if snap := a.Current(); snap != nil {
			page.Written = snap.Written
			idx := index.Load()
			if idx == nil || idx.snap != snap {
				idx = newServiceIndex(snap)
				index.Store(idx)
			}
			page.Listed = len(idx.groups)
			page.Pages = (len(idx.groups) + servicesPerPage - 1) / servicesPerPage
			page.Page = max(1, min(page.Page, page.Pages))
			lo := (page.Page - 1) * servicesPerPage
			page.First = lo + 1
			for _, g := range idx.groups[lo:min(lo+servicesPerPage, len(idx.groups))] {
				page.Services = append(page.Services, serviceOf(g))
			}
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if err := statusTemplate.Execute(w, page); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
}

// serviceIndex is a snapshot's groups that have targets, by service name:
// built once per snapshot, not per request.
type serviceIndex struct {
	snap   *adapter.Snapshot
	groups []*targetgroup.Group
}

func newServiceIndex(snap *adapter.Snapshot) *serviceIndex {
	idx := &serviceIndex{snap: snap}
	for _, g := range snap.Groups {
		if g != nil && slices.ContainsFunc(g.Targets, func(t pmodel.LabelSet) bool { return t[pmodel.AddressLabel] != "" }) {
			idx.groups = append(idx.groups, g)
		}
	}
	slices.SortFunc(idx.groups, func(a, b *targetgroup.Group) int { return strings.Compare(a.Source, b.Source) })
	return idx
}

// healthOrder is the order of the health summary.
var healthOrder = []string{"passing", "warning", "critical", "maintenance"}

// serviceOf is the section of one service's group: its instances by
// address, at most instancesPerService of them, and their count by health.
func serviceOf(g *targetgroup.Group) service {
	label := func(t pmodel.LabelSet, name pmodel.LabelName) string {
		if v, ok := t[name]; ok {
			return string(v)
		}
		return string(g.Labels[name])
	}
	s := service{Name: g.Source}
	counts := map[string]int{}
	for _, t := range g.Targets {
		addr := string(t[pmodel.AddressLabel])
		if addr == "" {
			continue // not in the file either
		}
		inst := instance{Address: addr, Node: label(t, nodeLabel), Health: label(t, healthLabel)}
		s.Total++
		counts[inst.Health]++
		// Keep the instancesPerService lowest addresses.
		i, _ := slices.BinarySearchFunc(s.Instances, inst, compareInstances)
		if i < instancesPerService {
			if len(s.Instances) == instancesPerService {
				s.Instances = s.Instances[:instancesPerService-1]
			}
			s.Instances = slices.Insert(s.Instances, i, inst)
		}
	}
	for _, h := range healthOrder {
		if n := counts[h]; n > 0 {
			s.Health = append(s.Health, healthCount{h, n})
			delete(counts, h)
		}
	}
	for _, h := range slices.Sorted(maps.Keys(counts)) {
		s.Health = append(s.Health, healthCount{h, counts[h]})
	}
	return s
}

func compareInstances(a, b instance) int {
	return cmp.Or(strings.Compare(a.Address, b.Address), strings.Compare(a.Node, b.Node))
}
