package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// view is what a file, or Consul, says about each instance:
// "node/service-id" -> address, health, tags and node meta.
type view map[string]string

func describe(addr, health, tags, rack string) string {
	return fmt.Sprintf("%s health=%s tags=%s rack=%s", addr, health, tags, rack)
}

// fileView decodes the output file with Prometheus's own decoder.
func fileView(path string) (view, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var groups []*targetgroup.Group
	if err := json.Unmarshal(data, &groups); err != nil {
		return nil, fmt.Errorf("file_sd cannot decode %s: %w", path, err)
	}
	v := view{}
	for _, g := range groups {
		l := g.Labels
		for _, t := range g.Targets {
			key := string(l["__meta_consul_node"]) + "/" + string(l["__meta_consul_service_id"])
			if _, dup := v[key]; dup {
				return nil, fmt.Errorf("%s lists %s twice", path, key)
			}
			v[key] = describe(string(t["__address__"]), string(l["__meta_consul_health"]),
				string(l["__meta_consul_tags"]), string(l["__meta_consul_metadata_rack"]))
		}
	}
	return v, nil
}

// consulView asks Consul what the file should say.
func consulView(client *api.Client) (view, error) {
	entries, err := consultest.AllEntries(client)
	if err != nil {
		return nil, err
	}
	v := view{}
	for _, e := range entries {
		host := e.Service.Address
		if host == "" {
			host = e.Node.Address
		}
		v[e.Node.Node+"/"+e.Service.ID] = describe(net.JoinHostPort(host, strconv.Itoa(e.Service.Port)),
			e.Checks.AggregatedStatus(), ","+strings.Join(e.Service.Tags, ",")+",", e.Node.Meta["rack"])
	}
	return v, nil
}

// diff describes how got differs from want, a few lines at most.
func diff(got, want view) string {
	var lines []string
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if g, ok := got[k]; !ok {
			lines = append(lines, "  missing "+k+": "+want[k])
		} else if g != want[k] {
			lines = append(lines, "  wrong   "+k+": "+g+", want "+want[k])
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			lines = append(lines, "  extra   "+k+": "+got[k])
		}
	}
	if len(lines) > 10 {
		lines = append(lines[:10], fmt.Sprintf("  ... and %d more", len(lines)-10))
	}
	return strings.Join(lines, "\n")
}
