package adapter

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	"go.yaml.in/yaml/v2"
)

// Entry is one element of a file_sd file: targets that share every label.
type Entry struct {
	Targets []string       `json:"targets" yaml:"targets"`
	Labels  model.LabelSet `json:"labels" yaml:"labels"`
}

// Entries converts target groups to file_sd entries. file_sd carries labels
// per entry only, so each target's own labels (merged over its group's) decide
// its entry: targets with equal label sets share one, all others get their
// own. The result is sorted, so the same groups always give the same entries.
func Entries(groups []*targetgroup.Group) []Entry {
	byKey := map[string]*Entry{}
	for _, g := range groups {
		if g == nil {
			continue
		}
		for _, t := range g.Targets {
			addr, ok := t[model.AddressLabel]
			if !ok {
				continue // a target without an address cannot be scraped
			}
			labels := make(model.LabelSet, len(g.Labels)+len(t))
			for k, v := range g.Labels {
				labels[k] = v
			}
			for k, v := range t {
				labels[k] = v
			}
			delete(labels, model.AddressLabel)
			key := labelKey(labels)
			e, ok := byKey[key]
			if !ok {
				e = &Entry{Labels: labels}
				byKey[key] = e
			}
			e.Targets = append(e.Targets, string(addr))
		}
	}

	type keyed struct {
		key string
		*Entry
	}
	sorted := make([]keyed, 0, len(byKey))
	for k, e := range byKey {
		slices.Sort(e.Targets)
		e.Targets = slices.Compact(e.Targets)
		sorted = append(sorted, keyed{k, e})
	}
	// Ordered by first target, so the file reads as a sorted list of
	// addresses; the label key breaks ties between entries of one address.
	slices.SortFunc(sorted, func(a, b keyed) int {
		if c := strings.Compare(a.Targets[0], b.Targets[0]); c != 0 {
			return c
		}
		return strings.Compare(a.key, b.key)
	})
	entries := make([]Entry, len(sorted))
	for i, k := range sorted {
		entries[i] = *k.Entry
	}
	return entries
}

// labelKey is a canonical string for a label set: sorted names and values,
// separated by a byte that is valid in neither.
func labelKey(ls model.LabelSet) string {
	names := make([]string, 0, len(ls))
	size := 0
	for n, v := range ls {
		names = append(names, string(n))
		size += len(n) + len(v) + 2
	}
	slices.Sort(names)
	var b strings.Builder
	b.Grow(size)
	for _, n := range names {
		b.WriteString(n)
		b.WriteByte(0xff)
		b.WriteString(string(ls[model.LabelName(n)]))
		b.WriteByte(0xff)
	}
	return b.String()
}

// Format is the encoding of the output file.
type Format int

// The file_sd formats Prometheus reads.
const (
	JSON Format = iota
	YAML
)

// FormatOf picks the format from the file name as Prometheus's file_sd does:
// .yml and .yaml are YAML, .json is JSON. Anything else is an error, because
// file_sd would ignore the file.
func FormatOf(path string) (Format, error) {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".json":
		return JSON, nil
	case ".yml", ".yaml":
		return YAML, nil
	default:
		return 0, fmt.Errorf("output file %q must end in .json, .yml or .yaml for Prometheus's file_sd to read it", path)
	}
}

// Render encodes entries. An empty list is "[]", which file_sd reads as "no
// targets"; an empty file would be a parse error.
func Render(entries []Entry, f Format) ([]byte, error) {
	if entries == nil {
		entries = []Entry{}
	}
	if f == YAML {
		if len(entries) == 0 {
			return []byte("[]\n"), nil
		}
		return yaml.Marshal(yamlEntries(entries))
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(entries); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// yamlEntry spells out the label order: yaml.v2 sorts map keys with a
// "natural" comparison of digit runs that is not a total order (gpu2 < gpu10
// < gpu1a < gpu2), so a map would render in random order from run to run.
type yamlEntry struct {
	Targets []string      `yaml:"targets"`
	Labels  yaml.MapSlice `yaml:"labels"`
}

func yamlEntries(entries []Entry) []yamlEntry {
	out := make([]yamlEntry, len(entries))
	for i, e := range entries {
		names := make([]string, 0, len(e.Labels))
		for n := range e.Labels {
			names = append(names, string(n))
		}
		slices.Sort(names)
		labels := make(yaml.MapSlice, len(names))
		for j, n := range names {
			labels[j] = yaml.MapItem{Key: n, Value: string(e.Labels[model.LabelName(n)])}
		}
		out[i] = yamlEntry{Targets: e.Targets, Labels: labels}
	}
	return out
}
