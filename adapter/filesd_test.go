package adapter

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	"go.yaml.in/yaml/v2"
)

// sampleGroups has two targets with equal labels (two entries all the
// same: one target per entry), one whose own labels differ, and one
// overriding a group label.
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
		// Groups by source, entries of a group by first target.
		{Targets: []string{"10.0.0.3:5432"}, Labels: model.LabelSet{"__meta_consul_service": "db", "env": "prod"}},
		{Targets: []string{"10.0.0.4:5432"}, Labels: model.LabelSet{"__meta_consul_service": "db", "env": "prod"}},
		{Targets: []string{"10.0.0.5:5432"}, Labels: model.LabelSet{"__meta_consul_service": "db", "env": "staging"}},
		{Targets: []string{"10.0.0.1:80"}, Labels: model.LabelSet{"__meta_consul_service": "web", "__meta_consul_node": "n1", "__meta_consul_metadata_rack": "r1"}},
		{Targets: []string{"10.0.0.2:80"}, Labels: model.LabelSet{"__meta_consul_service": "web", "__meta_consul_node": "n2", "__meta_consul_metadata_rack": "r2"}},
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

// TestEntriesMatchNaiveConversion checks the converter's merge of sorted
// lists against the plain definition: one entry per target, its labels
// merged over its group's, without empty values, sorted by name.
func TestEntriesMatchNaiveConversion(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	names := []model.LabelName{"a", "zz", "m", "__meta_x", "b_1", "env", "team", "ñame"}
	var groups []*targetgroup.Group
	for g := range 40 {
		grp := &targetgroup.Group{Source: fmt.Sprintf("g%02d", g), Labels: model.LabelSet{}}
		for _, n := range names[:r.IntN(len(names))] {
			grp.Labels[n] = model.LabelValue(fmt.Sprint(r.IntN(2)))
		}
		for range r.IntN(40) {
			tl := model.LabelSet{model.AddressLabel: model.LabelValue(fmt.Sprintf("h%d:80", r.IntN(30)))}
			for range r.IntN(4) {
				// New names turn up mid-group, some sorting first.
				n := names[r.IntN(len(names))]
				if r.IntN(4) == 0 {
					n = model.LabelName(fmt.Sprintf("%c_new", 'a'+r.IntN(26)))
				}
				tl[n] = model.LabelValue([]string{"", "x", "y"}[r.IntN(3)])
			}
			grp.Targets = append(grp.Targets, tl)
		}
		groups = append(groups, grp)
	}

	// Entries as "labels targets" lines: a multiset, since targets may
	// have equal labels.
	var want []string
	for _, g := range groups {
		for _, tl := range g.Targets {
			merged := g.Labels.Merge(tl)
			for n, v := range merged {
				if v == "" || n == model.AddressLabel {
					delete(merged, n)
				}
			}
			want = append(want, fmt.Sprint(merged.String(), []string{string(tl[model.AddressLabel])}))
		}
	}
	var got []string
	for i, e := range Entries(groups) {
		if !slices.IsSortedFunc(e.Labels, func(a, b Label) int { return strings.Compare(a.Name, b.Name) }) {
			t.Errorf("entry %d: labels not sorted: %v", i, e.Labels)
		}
		got = append(got, fmt.Sprint(e.LabelSet().String(), e.Targets))
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("entries differ from the naive conversion:\n got %q\nwant %q", got, want)
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
	first, err := Render(sampleGroups(), JSON)
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
		got, err := Render(groups, JSON)
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
		got, err := Render(nil, f)
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
		data, err := Render(sampleGroups(), f)
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
