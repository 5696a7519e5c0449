package adapter

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery"
	"github.com/prometheus/prometheus/discovery/file"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	yamlv2 "go.yaml.in/yaml/v2"
	yamlv3 "go.yaml.in/yaml/v3"
)

// yamlScalars are strings that YAML would read as something else, or not
// at all, if written as they are.
var yamlScalars = []string{
	"", " ", "a b", " lead", "trail ", "true", "True", "TRUE", "false", "yes", "No", "on", "OFF", "y", "N",
	"null", "Null", "~", "-", "--", "---", "...", "-1", "+1", "1", "01", "007", "0x1f", "0o17", "0b101", "1_000",
	"1e3", "1E+3", "1.5", ".5", "5.", ".inf", "-.Inf", ".NaN", "1:20", "190:20:30", "1:20.5", "-1:20",
	"2001-12-14", "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10 -5", "1e999", "99999999999999999999",
	"10.0.0.1:80", "[::1]:80", "::1", "fe80::1%eth0", "a:", "a:b", "a: b", "a #b", "#a", "a#b", "a,b", ",a,b,",
	"&a", "*a", "!a", "!!str", "|", ">", "'", "''", `"`, `a"b`, "%a", "@a", "`a", "?", "? a", "{}", "[]", "{a: b}",
	"<<", "=", "a\nb", "a\n", "\n", "a\tb", "\t", "\r\n", "a\\b", `\n`, "\x00\x01\x1f\x7f", "\u0085", "\u00a0",
	"\u2028\u2029", "\ufeff", "\ufffe\uffff", "ünïcödé", "日本語", "😀", "bad \xff\xfe utf8", "\xe2\x82",
	"/metrics", "eu-west-1a", "svc-00000-1", "1.0.0", "v1", "-foo", "foo-", "foo:bar", "http://x:80/a?b=c&d",
	"__meta_consul_tags", "key=value", "a=b=c", "+foo", "a@b.c",
}

// TestYAMLScalarsReadBack writes every string of yamlScalars as a target,
// a label name and a label value, and reads the file as Prometheus's
// file_sd does (yaml.v2, strict) and with yaml.v3 (YAML 1.2): each must
// come back as the same string, as the JSON file carries it (invalid UTF-8
// as U+FFFD).
func TestYAMLScalarsReadBack(t *testing.T) {
	for _, s := range yamlScalars {
		want := string([]rune(s))
		g := &targetgroup.Group{Source: "s", Targets: []model.LabelSet{{model.AddressLabel: "h:1", "v": model.LabelValue(s)}}}
		if s != "" { // neither an address nor a label name can be empty
			g.Targets[0][model.LabelName(s)] = "x"
			g.Targets = append(g.Targets, model.LabelSet{model.AddressLabel: model.LabelValue(s)})
		}
		data, err := Render([]*targetgroup.Group{g}, YAML)
		if err != nil {
			t.Fatal(err)
		}

		var groups []*targetgroup.Group
		if err := yamlv2.UnmarshalStrict(data, &groups); err != nil {
			t.Errorf("%q: file_sd cannot read the file: %v\n%s", s, err, data)
			continue
		}
		var got []string
		for _, g := range groups {
			got = append(got, string(g.Targets[0][model.AddressLabel]))
			if v, ok := g.Labels["v"]; ok {
				got = append(got, string(v))
			}
			if v, ok := g.Labels[model.LabelName(want)]; ok && s != "v" {
				got = append(got, "name:"+string(v))
			}
		}
		wantGot := fmt.Sprint([]string{"h:1"}) // an empty label is no label
		if s != "" {
			wantGot = fmt.Sprint([]string{"h:1", want, "name:x", want})
			if want < "h:1" {
				wantGot = fmt.Sprint([]string{want, "h:1", want, "name:x"})
			}
		}
		if fmt.Sprint(got) != wantGot {
			t.Errorf("%q: file_sd reads %q, want %s\n%s", s, got, wantGot, data)
		}

		// YAML 1.2 must read strings too, not numbers, bools or nulls.
		var doc yamlv3.Node
		if err := yamlv3.Unmarshal(data, &doc); err != nil {
			t.Errorf("%q: yaml.v3 cannot read the file: %v\n%s", s, err, data)
			continue
		}
		checkStringScalars(t, s, &doc, data)
	}
}

// checkStringScalars fails the test for each scalar below n that YAML 1.2
// does not resolve to a string.
func checkStringScalars(t *testing.T, s string, n *yamlv3.Node, data []byte) {
	t.Helper()
	if n.Kind == yamlv3.ScalarNode && n.ShortTag() != "!!str" {
		t.Errorf("%q: yaml.v3 reads %q as %s\n%s", s, n.Value, n.ShortTag(), data)
	}
	for _, c := range n.Content {
		checkStringScalars(t, s, c, data)
	}
}

// TestYAMLAsYAMLv2 checks that the hand-written YAML is the one yaml.v2
// wrote before for the values Consul data is mostly made of, so that an
// upgrade does not rewrite every file. (It quotes more than yaml.v2 does:
// 'a b', 'it”s'.)
func TestYAMLAsYAMLv2(t *testing.T) {
	for _, s := range []string{
		"10.0.0.1:8080", "[2001:db8::1]:80", "node-1", "dc1", "passing", ",a,b,", ",prometheus,team-0,v1,", "/metrics",
		"8080", "1.2.3", "true", "", "web-1", "eu-west-1a", "x=y", "Service", "0.5", "~", "NO",
	} {
		want, err := yamlv2.Marshal([]yamlv2.MapSlice{{{Key: "targets", Value: []string{"h:1"}}, {Key: "labels", Value: yamlv2.MapSlice{{Key: "v", Value: s}}}}})
		if err != nil {
			t.Fatal(err)
		}
		if got := appendYAMLEntry(nil, "h:1", []Label{{"v", s}}); string(got) != string(want) {
			t.Errorf("%q: wrote\n%s\nyaml.v2 writes\n%s", s, got, want)
		}
	}
}

// TestPrometheusFileSDLoadsOutput runs Prometheus's own file_sd discovery
// (discovery/file) on files the adapter writes, JSON and YAML, with the
// strings of yamlScalars for values: it must find every target with its
// labels.
func TestPrometheusFileSDLoadsOutput(t *testing.T) {
	g := &targetgroup.Group{Source: "s", Labels: model.LabelSet{"__meta_consul_service": "s"}}
	for i, s := range yamlScalars {
		g.Targets = append(g.Targets, model.LabelSet{
			model.AddressLabel: model.LabelValue(fmt.Sprintf("h%d:1", i)),
			"v":                model.LabelValue(s),
		})
	}
	groups := []*targetgroup.Group{g}
	for _, name := range []string{"custom_sd.json", "custom_sd.yml"} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), name)
			a, err := New(Config{OutputFile: path, FileMode: 0o644}, log.NewNopLogger(), prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			if err := a.Update(groups); err != nil {
				t.Fatal(err)
			}

			reg := prometheus.NewRegistry()
			cfg := &file.SDConfig{Files: []string{path}, RefreshInterval: model.Duration(time.Hour)}
			metrics := cfg.NewDiscovererMetrics(reg, discovery.NewRefreshMetrics(reg))
			if err := metrics.Register(); err != nil {
				t.Fatal(err)
			}
			defer metrics.Unregister()
			var logs bytes.Buffer
			d, err := file.NewDiscovery(cfg, slog.New(slog.NewTextHandler(&logs, nil)), metrics)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ch := make(chan []*targetgroup.Group)
			go d.Run(ctx, ch)
			var found []*targetgroup.Group
			select {
			case found = <-ch:
			case <-time.After(30 * time.Second): // a file it cannot read sends nothing
				t.Fatalf("file_sd sent nothing for %s; its log:\n%s", path, logs.String())
			}

			want := map[string]string{}
			for _, e := range Entries(groups) {
				want[e.Targets[0]] = string([]rune(e.Label("v"))) // invalid UTF-8 as U+FFFD
			}
			got := map[string]string{}
			for _, fg := range found {
				for _, tg := range fg.Targets {
					got[string(tg[model.AddressLabel])] = string(fg.Labels["v"])
				}
				if fg.Labels["__meta_consul_service"] != "s" {
					t.Errorf("group %s: labels %v, want __meta_consul_service=s", fg.Source, fg.Labels)
				}
			}
			if !maps.Equal(got, want) {
				t.Errorf("file_sd found (address: v)\n%q\nwant\n%q", got, want)
			}
		})
	}
}
