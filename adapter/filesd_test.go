package adapter

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"strings"
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
	want := []struct {
		Targets []string
		Labels  model.LabelSet
	}{
		{Targets: []string{"10.0.0.1:80"}, Labels: model.LabelSet{"__meta_consul_service": "web", "__meta_consul_node": "n1", "__meta_consul_metadata_rack": "r1"}},
		{Targets: []string{"10.0.0.2:80"}, Labels: model.LabelSet{"__meta_consul_service": "web", "__meta_consul_node": "n2", "__meta_consul_metadata_rack": "r2"}},
		{Targets: []string{"10.0.0.3:5432", "10.0.0.4:5432"}, Labels: model.LabelSet{"__meta_consul_service": "db", "env": "prod"}},
		{Targets: []string{"10.0.0.5:5432"}, Labels: model.LabelSet{"__meta_consul_service": "db", "env": "staging"}},
	}
	if len(got) != len(want) {
		t.Fatalf("Entries: %d entries, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if !reflect.DeepEqual(got[i].Targets, want[i].Targets) || !reflect.DeepEqual(got[i].LabelSet(), want[i].Labels) {
			t.Errorf("entry %d:\n got %v %v\nwant %v %v", i, got[i].Targets, got[i].LabelSet(), want[i].Targets, want[i].Labels)
		}
	}
}

func TestEntriesDropEmptyLabels(t *testing.T) {
	got := Entries([]*targetgroup.Group{{
		Labels: model.LabelSet{"env": "prod", "team": "web"},
		Targets: []model.LabelSet{
			{"__address__": "a:1", "__meta_consul_service_address": "", "team": ""},
			{"__address__": "b:1"},
		},
	}})
	want := []model.LabelSet{{"env": "prod"}, {"env": "prod", "team": "web"}}
	if len(got) != 2 || !reflect.DeepEqual(got[0].LabelSet(), want[0]) || !reflect.DeepEqual(got[1].LabelSet(), want[1]) {
		t.Errorf("got %+v, want labels %v (an empty target label unsets the group's)", got, want)
	}
}

// TestJSONStringsMatchEncodingJSON: the hand-written encoder escapes every
// string exactly as encoding/json (without HTML escaping) does.
func TestJSONStringsMatchEncodingJSON(t *testing.T) {
	for _, s := range []string{
		"", "plain", `quote " and \ backslash`, "tab\tnewline\ncr\r", "\x00\x01\x1f\x7f",
		"ünïcödé ключ 日本", "line\u2028para\u2029", "bad \xff\xfe utf8", "<html>&amp;", "\xe2\x82",
	} {
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(s); err != nil {
			t.Fatal(err)
		}
		if got := string(appendJSONString(nil, s)); got != strings.TrimSuffix(want.String(), "\n") {
			t.Errorf("appendJSONString(%q) = %s, encoding/json gives %s", s, got, want.String())
		}
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
			if !reflect.DeepEqual(g.Labels, entries[i].LabelSet()) {
				t.Errorf("format %d entry %d: labels %v, want %v", f, i, g.Labels, entries[i].LabelSet())
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
