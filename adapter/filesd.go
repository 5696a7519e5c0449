package adapter

import (
	"fmt"
	"hash/maphash"
	"path/filepath"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	"go.yaml.in/yaml/v2"
)

// Entry is one element of a file_sd file: targets that share every label.
type Entry struct {
	Targets []string
	Labels  []Label // sorted by name
}

// Label is one label of an entry.
type Label struct {
	Name, Value string
}

// Label returns the value of the named label, or "" if it has none.
func (e *Entry) Label(name string) string {
	i, found := slices.BinarySearchFunc(e.Labels, name, func(l Label, name string) int {
		return strings.Compare(l.Name, name)
	})
	if !found {
		return ""
	}
	return e.Labels[i].Value
}

// LabelSet returns the entry's labels as a map.
func (e *Entry) LabelSet() model.LabelSet {
	ls := make(model.LabelSet, len(e.Labels))
	for _, l := range e.Labels {
		ls[model.LabelName(l.Name)] = model.LabelValue(l.Value)
	}
	return ls
}

// Entries converts target groups to file_sd entries. file_sd carries labels
// per entry only, so each target's own labels (merged over its group's)
// decide its entry: targets with equal label sets share one, all others get
// their own. Labels with empty values are left out: Prometheus treats an
// empty label as absent. The result is sorted, so the same groups always
// give the same entries.
func Entries(groups []*targetgroup.Group) []Entry {
	var entries []Entry
	// Label sets are grouped by hash, checked for equality on a match: one
	// small slice per target is all this allocates, which matters at
	// 100,000 targets.
	byHash := map[uint64][]int{}
	for _, g := range groups {
		if g == nil {
			continue
		}
		for _, t := range g.Targets {
			addr, ok := t[model.AddressLabel]
			if !ok {
				continue // no address: nothing to scrape
			}
			labels := mergedLabels(g.Labels, t)
			h := hashLabels(labels)
			i := slices.IndexFunc(byHash[h], func(i int) bool { return compareLabels(entries[i].Labels, labels) == 0 })
			if i < 0 {
				byHash[h] = append(byHash[h], len(entries))
				entries = append(entries, Entry{Labels: labels})
				i = len(entries) - 1
			} else {
				i = byHash[h][i]
			}
			entries[i].Targets = append(entries[i].Targets, string(addr))
		}
	}
	for i := range entries {
		slices.Sort(entries[i].Targets)
		entries[i].Targets = slices.Compact(entries[i].Targets)
	}
	// Ordered by first target, so the file reads as a sorted list of
	// addresses; the labels break ties between entries of one address.
	slices.SortFunc(entries, func(a, b Entry) int {
		if c := strings.Compare(a.Targets[0], b.Targets[0]); c != 0 {
			return c
		}
		return compareLabels(a.Labels, b.Labels)
	})
	return entries
}

// hashSeed is fixed per process: hashes only group label sets in memory,
// they never reach the output.
var hashSeed = maphash.MakeSeed()

func hashLabels(labels []Label) uint64 {
	var h maphash.Hash
	h.SetSeed(hashSeed)
	for _, l := range labels {
		h.WriteString(l.Name)
		h.WriteByte(0xff) // valid in neither names nor UTF-8 values
		h.WriteString(l.Value)
		h.WriteByte(0xff)
	}
	return h.Sum64()
}

// mergedLabels returns the labels of group and target together (the
// target's win), sorted, without the address and without empty values.
func mergedLabels(group, target model.LabelSet) []Label {
	labels := make([]Label, 0, len(group)+len(target))
	for n, v := range target {
		if n != model.AddressLabel && v != "" {
			labels = append(labels, Label{string(n), string(v)})
		}
	}
	for n, v := range group {
		if _, overridden := target[n]; !overridden && n != model.AddressLabel && v != "" {
			labels = append(labels, Label{string(n), string(v)})
		}
	}
	slices.SortFunc(labels, func(a, b Label) int { return strings.Compare(a.Name, b.Name) })
	return labels
}

func compareLabels(a, b []Label) int {
	for i := range min(len(a), len(b)) {
		if c := strings.Compare(a[i].Name, b[i].Name); c != 0 {
			return c
		}
		if c := strings.Compare(a[i].Value, b[i].Value); c != 0 {
			return c
		}
	}
	return len(a) - len(b)
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
	if f == YAML {
		if len(entries) == 0 {
			return []byte("[]\n"), nil
		}
		return yaml.Marshal(yamlEntries(entries))
	}
	return renderJSON(entries), nil
}

// renderJSON writes one entry per line: a file of 100,000 targets stays
// fast to write and easy to grep and diff. It is written by hand because
// encoding/json sorts every label map again through reflection, which made
// rendering large catalogs several times slower than everything else.
func renderJSON(entries []Entry) []byte {
	if len(entries) == 0 {
		return []byte("[]\n")
	}
	size := 4
	for i := range entries {
		size += 32
		for _, t := range entries[i].Targets {
			size += len(t) + 3
		}
		for _, l := range entries[i].Labels {
			size += len(l.Name) + len(l.Value) + 6
		}
	}
	b := make([]byte, 0, size)
	b = append(b, "[\n"...)
	for i := range entries {
		e := &entries[i]
		b = append(b, `{"targets":[`...)
		for j, t := range e.Targets {
			if j > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, t)
		}
		b = append(b, `],"labels":{`...)
		for j, l := range e.Labels {
			if j > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, l.Name)
			b = append(b, ':')
			b = appendJSONString(b, l.Value)
		}
		b = append(b, "}}"...)
		if i < len(entries)-1 {
			b = append(b, ',')
		}
		b = append(b, '\n')
	}
	return append(b, "]\n"...)
}

// appendJSONString appends s as a JSON string, escaped as encoding/json
// does (without HTML escaping): invalid UTF-8 becomes U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		// U+2028 and U+2029 are valid JSON but break JavaScript readers;
		// encoding/json escapes them, and so do we.
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// yamlEntry keeps the labels in our order: yaml.v2 sorts map keys with a
// "natural" comparison of digit runs that is not a total order (gpu2 < gpu10
// < gpu1a < gpu2), so a map would render in random order from run to run.
type yamlEntry struct {
	Targets []string      `yaml:"targets"`
	Labels  yaml.MapSlice `yaml:"labels"`
}

func yamlEntries(entries []Entry) []yamlEntry {
	out := make([]yamlEntry, len(entries))
	for i, e := range entries {
		labels := make(yaml.MapSlice, len(e.Labels))
		for j, l := range e.Labels {
			labels[j] = yaml.MapItem{Key: l.Name, Value: l.Value}
		}
		out[i] = yamlEntry{Targets: e.Targets, Labels: labels}
	}
	return out
}
