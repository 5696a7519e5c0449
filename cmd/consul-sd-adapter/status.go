package main

import (
	"cmp"
	_ "embed"
	"html/template"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/common/version"

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

// instance is one row of the status page.
type instance struct {
	Address, Node, Health string
}

// service is one section of the status page.
type service struct {
	Name      string
	Instances []instance
}

type statusPage struct {
	Program, Version string
	Refresh          consulsd.Status
	Written          time.Time
	Services         []service
	OutputFile       string
	HTTPSDPath       string
}

// statusHandler renders the status page: what was found, and how the last
// refresh went, so an operator need not read the logs.
func statusHandler(d *consulsd.Discovery, a *adapter.Adapter, outputFile string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		page := statusPage{
			Program: programName, Version: version.Version, Refresh: d.Status(),
			OutputFile: outputFile, HTTPSDPath: httpSDPath,
		}
		if snap := a.Current(); snap != nil {
			page.Written = snap.Written
			page.Services = servicesOf(adapter.Entries(snap.Groups))
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if err := statusTemplate.Execute(w, page); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
}

// servicesOf regroups file_sd entries by service, sorted by name and address.
func servicesOf(entries []adapter.Entry) []service {
	byName := map[string]*service{}
	for _, e := range entries {
		name := e.Label("__meta_consul_service")
		s, ok := byName[name]
		if !ok {
			s = &service{Name: name}
			byName[name] = s
		}
		for _, addr := range e.Targets {
			s.Instances = append(s.Instances, instance{
				Address: addr,
				Node:    e.Label("__meta_consul_node"),
				Health:  e.Label("__meta_consul_health"),
			})
		}
	}
	services := make([]service, 0, len(byName))
	for _, s := range byName {
		slices.SortFunc(s.Instances, func(a, b instance) int { return cmp.Compare(a.Address, b.Address) })
		services = append(services, *s)
	}
	slices.SortFunc(services, func(a, b service) int { return cmp.Compare(a.Name, b.Name) })
	return services
}
