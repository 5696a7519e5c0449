package adapter

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	"go.yaml.in/yaml/v2"
)

// sampleGroups has two targets with equal labels, one whose own labels
// differ, and one overriding a group label.
func sampleGroups() []*targetgroup.Group {
	return []*targetgroup.Group{
		{
			Source: "web",
			Labels: model.LabelSet{"__meta_consul_service": "web"},
			Targets: []model.LabelSet{
				{"__address__": "10.0.0.2:80", "__meta_consul_node": "n2", "__meta_consul_metadata_rack": "r2"},
				{"__address__": "10.0.0.1:80", "__meta_consul_node": "n1", "__meta_consul_metadata_rack": "r1"},
			},
		},
		{
			Source: "db",
			Labels: model.LabelSet{"__meta_consul_service": "db", "env": "prod"},
			Targets: []model.LabelSet{
				{"__address__": "10.0.0.5:5432", "env": "staging"},
				{"__address__": "10.0.0.4:5432"},
				{"__address__": "10.0.0.3:5432"},
			},
		},
		{Source: "gone"},
		nil,
	}
}

func TestEntriesKeepPerTargetLabels(t *testing.T) {
	got := Entries(sampleGroups())
	want := []Entry{
		{Targets: []string{"10.0.0.1:80"}, Labels: model.LabelSet{"__meta_consul_service": "web", "__meta_consul_node": "n1", "__meta_consul_metadata_rack": "r1"}},
		{Targets: []string{"10.0.0.2:80"}, Labels: model.LabelSet{"__meta_consul_service": "web", "__meta_consul_node": "n2", "__meta_consul_metadata_rack": "r2"}},
		{Targets: []string{"10.0.0.3:5432", "10.0.0.4:5432"}, Labels: model.LabelSet{"__meta_consul_service": "db", "env": "prod"}},
		{Targets: []string{"10.0.0.5:5432"}, Labels: model.LabelSet{"__meta_consul_service": "db", "env": "staging"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Entries:\n got %+v\nwant %+v", got, want)
	}
}

func TestRenderIsDeterministic(t *testing.T) {
	first, err := Render(Entries(sampleGroups()), JSON)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		groups := sampleGroups()
		rand.Shuffle(len(groups), func(a, b int) { groups[a], groups[b] = groups[b], groups[a] })
		for _, g := range groups {
			if g != nil {
				rand.Shuffle(len(g.Targets), func(a, b int) { g.Targets[a], g.Targets[b] = g.Targets[b], g.Targets[a] })
			}
		}
		got, err := Render(Entries(groups), JSON)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, first) {
			t.Fatalf("shuffle %d rendered differently:\n%s\nvs\n%s", i, got, first)
		}
	}
}

func TestRenderEmpty(t *testing.T) {
	for _, f := range []Format{JSON, YAML} {
		got, err := Render(Entries(nil), f)
		if err != nil {
			t.Fatal(err)
		}
		if string(bytes.TrimSpace(got)) != "[]" {
			t.Errorf("format %d: empty render = %q, want []", f, got)
		}
	}
}

// TestRenderLoadsInFileSD decodes both formats the way Prometheus's file_sd
// does (unknown fields rejected) and checks every target and label survived.
func TestRenderLoadsInFileSD(t *testing.T) {
	entries := Entries(sampleGroups())
	for _, f := range []Format{JSON, YAML} {
		data, err := Render(entries, f)
		if err != nil {
			t.Fatal(err)
		}
		var groups []*targetgroup.Group
		if f == JSON {
			err = json.Unmarshal(data, &groups)
		} else {
			err = yaml.UnmarshalStrict(data, &groups)
		}
		if err != nil {
			t.Fatalf("format %d: file_sd decoding failed: %v\n%s", f, err, data)
		}
		if len(groups) != len(entries) {
			t.Fatalf("format %d: %d groups, want %d", f, len(groups), len(entries))
		}
		for i, g := range groups {
			if !reflect.DeepEqual(g.Labels, entries[i].Labels) {
				t.Errorf("format %d entry %d: labels %v, want %v", f, i, g.Labels, entries[i].Labels)
			}
			var addrs []string
			for _, tg := range g.Targets {
				addrs = append(addrs, string(tg[model.AddressLabel]))
			}
			if !reflect.DeepEqual(addrs, entries[i].Targets) {
				t.Errorf("format %d entry %d: targets %v, want %v", f, i, addrs, entries[i].Targets)
			}
		}
	}
}

func TestFormatOf(t *testing.T) {
	tests := map[string]Format{"a.json": JSON, "dir/b.yml": YAML, "c.YAML": YAML}
	for path, want := range tests {
		got, err := FormatOf(path)
		if err != nil || got != want {
			t.Errorf("FormatOf(%q) = %v, %v; want %v", path, got, err, want)
		}
	}
	for _, bad := range []string{"custom_sd", "a.txt", "a.json.bak"} {
		if _, err := FormatOf(bad); err == nil {
			t.Errorf("FormatOf(%q) succeeded, want an error", bad)
		}
	}
}
