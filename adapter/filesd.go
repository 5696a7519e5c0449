package adapter

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"io"
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

// sortGroups returns groups in file order, by source, without nils. The
// groups themselves are shared, not copied: like the discovery Manager, the
// adapter relies on a Discoverer never changing a group it has sent.
func sortGroups(groups []*targetgroup.Group) []*targetgroup.Group {
	sorted := make([]*targetgroup.Group, 0, len(groups))
	for _, g := range groups {
		if g != nil {
			sorted = append(sorted, g)
		}
	}
	slices.SortStableFunc(sorted, func(a, b *targetgroup.Group) int { return strings.Compare(a.Source, b.Source) })
	return sorted
}

// Entries returns the entries of groups, in the order Write writes them.
// The adapter itself never holds them all: at 100,000 targets they take
// more memory than the groups they come from.
func Entries(groups []*targetgroup.Group) []Entry {
	var entries []Entry
	var c converter
	c.each(groups, func(targets []string, labels []label) error {
		e := Entry{Targets: slices.Clone(targets), Labels: make([]Label, len(labels))}
		for i, l := range labels {
			e.Labels[i] = Label{Name: c.names.list[l.id].name, Value: l.value}
		}
		entries = append(entries, e)
		return nil
	})
	return entries
}

// converter turns target groups into file_sd entries one group at a time,
// reusing its buffers, so that writing a file of any size allocates about
// as much as its largest group needs.
//
// file_sd carries labels per entry only, so each target's own labels
// (merged over its group's) decide its entry: targets of one group with
// equal label sets share one, all others get their own. Labels with empty
// values are left out: Prometheus treats an empty label as absent.
type converter struct {
	names       nameTable
	groupLabels []label // the group's, by name
	own         []label // one target's, by name
	arena       []label // the labels of the group's entries, back to back
	entries     []pendingEntry
	byHash      map[uint64]int // first entry of each label hash, in large groups
}

// label is a Label with its name interned in the converter's nameTable.
type label struct {
	id    int32 // the name's index in the table
	rank  int32 // the name's place in sorted order, when the label was sorted
	value string
}

// nameTable interns the label names of one conversion. A catalog has few
// distinct names, repeated on every target: sorting by a precomputed rank
// and copying a pre-encoded name is much cheaper than comparing and
// escaping the strings again for each of 100,000 targets.
type nameTable struct {
	index map[model.LabelName]int32
	list  []nameInfo
	dirty bool // a name was added since ranks were computed
	gen   int  // counts rank computations
}

type nameInfo struct {
	name string
	json []byte // `"name":`
	rank int32
}

func (t *nameTable) id(n model.LabelName) int32 {
	if i, ok := t.index[n]; ok {
		return i
	}
	if t.index == nil {
		t.index = map[model.LabelName]int32{}
	}
	i := int32(len(t.list))
	t.index[n] = i
	t.list = append(t.list, nameInfo{name: string(n), json: append(appendJSONString(nil, string(n)), ':')})
	t.dirty = true
	return i
}

// sort orders labels by name.
func (t *nameTable) sort(labels []label) {
	if t.dirty {
		order := make([]int32, len(t.list))
		for i := range order {
			order[i] = int32(i)
		}
		slices.SortFunc(order, func(a, b int32) int { return strings.Compare(t.list[a].name, t.list[b].name) })
		for rank, i := range order {
			t.list[i].rank = int32(rank)
		}
		t.dirty = false
		t.gen++
	}
	for i := range labels {
		labels[i].rank = t.list[labels[i].id].rank
	}
	slices.SortFunc(labels, func(a, b label) int { return int(a.rank - b.rank) })
}

// pendingEntry is an entry of the current group: its labels are
// arena[lo:hi] (offsets, because the arena may move as it grows).
type pendingEntry struct {
	lo, hi  int
	targets []string
	next    int // the next entry with the same label hash, or -1
}

// linearLimit is the group size up to which a target's labels are compared
// with every entry before it; above it, hashing them is cheaper.
const linearLimit = 16

// each calls fn for every entry of groups, in file order: groups by
// source, then each group's entries by first target.
func (c *converter) each(groups []*targetgroup.Group, fn func(targets []string, labels []label) error) error {
	for _, g := range sortGroups(groups) {
		if err := c.group(g, fn); err != nil {
			return err
		}
	}
	return nil
}

// group calls fn for each entry of g, ordered by first target. The slices
// fn gets are only valid during the call.
func (c *converter) group(g *targetgroup.Group, fn func(targets []string, labels []label) error) error {
	c.groupLabels = c.appendSorted(c.groupLabels[:0], g.Labels)
	groupGen := c.names.gen
	c.arena, c.entries = c.arena[:0], c.entries[:0]
	hashed := len(g.Targets) > linearLimit
	if hashed {
		if c.byHash == nil {
			c.byHash = map[uint64]int{}
		}
		clear(c.byHash)
	}
	for _, t := range g.Targets {
		addr := t[model.AddressLabel]
		if addr == "" {
			continue // no address: nothing to scrape
		}
		c.own = c.appendSorted(c.own[:0], t)
		if c.names.gen != groupGen {
			// A new name moved the ranks: the group's labels keep their
			// order but need the new ones to merge with the target's.
			for i := range c.groupLabels {
				c.groupLabels[i].rank = c.names.list[c.groupLabels[i].id].rank
			}
			groupGen = c.names.gen
		}
		lo := len(c.arena)
		c.arena = appendMerged(c.arena, c.own, c.groupLabels)
		labels := c.arena[lo:]
		same := func(i int) bool { return sameLabels(c.arena[c.entries[i].lo:c.entries[i].hi], labels) }
		i, chain := -1, -1
		if hashed {
			h := hashLabels(labels)
			first, ok := c.byHash[h]
			if !ok {
				first = -1
			}
			for i = first; i >= 0 && !same(i); i = c.entries[i].next {
			}
			if i < 0 {
				c.byHash[h] = len(c.entries)
				chain = first
			}
		} else {
			for i = len(c.entries) - 1; i >= 0 && !same(i); i-- {
			}
		}
		if i >= 0 { // an earlier target has these labels: share its entry
			c.entries[i].targets = append(c.entries[i].targets, string(addr))
			c.arena = c.arena[:lo]
			continue
		}
		c.addEntry(lo, len(c.arena), string(addr), chain)
	}
	for i := range c.entries {
		e := &c.entries[i]
		if len(e.targets) > 1 {
			slices.Sort(e.targets)
			e.targets = slices.Compact(e.targets)
		}
	}
	slices.SortFunc(c.entries, func(a, b pendingEntry) int {
		if c := strings.Compare(a.targets[0], b.targets[0]); c != 0 {
			return c
		}
		return c.compareLabels(c.arena[a.lo:a.hi], c.arena[b.lo:b.hi])
	})
	for _, e := range c.entries {
		if err := fn(e.targets, c.arena[e.lo:e.hi]); err != nil {
			return err
		}
	}
	return nil
}

// addEntry starts an entry, reusing the targets slice of an earlier group's.
func (c *converter) addEntry(lo, hi int, target string, next int) {
	if n := len(c.entries); n < cap(c.entries) {
		c.entries = c.entries[:n+1]
		e := &c.entries[n]
		e.lo, e.hi, e.next, e.targets = lo, hi, next, append(e.targets[:0], target)
		return
	}
	c.entries = append(c.entries, pendingEntry{lo: lo, hi: hi, next: next, targets: []string{target}})
}

// appendSorted appends ls without the address, sorted by name. Empty values
// stay: a target's empty label unsets its group's.
func (c *converter) appendSorted(dst []label, ls model.LabelSet) []label {
	n := len(dst)
	for name, v := range ls {
		if name != model.AddressLabel {
			dst = append(dst, label{id: c.names.id(name), value: string(v)})
		}
	}
	c.names.sort(dst[n:])
	return dst
}

// appendMerged appends the union of two label lists sorted by name, in
// order and without empty values; on a name in both, the target's label
// wins.
func appendMerged(dst, target, group []label) []label {
	i, j := 0, 0
	for i < len(target) || j < len(group) {
		var l label
		switch {
		case j == len(group) || (i < len(target) && target[i].rank < group[j].rank):
			l = target[i]
			i++
		case i == len(target) || group[j].rank < target[i].rank:
			l = group[j]
			j++
		default: // the same name
			l = target[i]
			i++
			j++
		}
		if l.value != "" {
			dst = append(dst, l)
		}
	}
	return dst
}

// hashSeed is fixed per process: hashes group label sets and compare file
// contents in memory, they never reach the output.
var hashSeed = maphash.MakeSeed()

func hashLabels(labels []label) uint64 {
	var h maphash.Hash
	h.SetSeed(hashSeed)
	var id [4]byte
	for _, l := range labels {
		binary.LittleEndian.PutUint32(id[:], uint32(l.id))
		h.Write(id[:])
		h.WriteString(l.value)
		h.WriteByte(0xff) // valid in no UTF-8 value
	}
	return h.Sum64()
}

// sameLabels reports whether two label lists sorted by name are equal.
func sameLabels(a, b []label) bool {
	return slices.EqualFunc(a, b, func(x, y label) bool { return x.id == y.id && x.value == y.value })
}

// compareLabels orders two label lists sorted by name.
func (c *converter) compareLabels(a, b []label) int {
	for i := range min(len(a), len(b)) {
		if a[i].id != b[i].id {
			return strings.Compare(c.names.list[a[i].id].name, c.names.list[b[i].id].name)
		}
		if c := strings.Compare(a[i].value, b[i].value); c != 0 {
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

// Write writes groups to w as a file_sd file: groups by source, and within
// a group its entries by first target, so the same groups always give the
// same bytes. It streams: however many targets there are, it holds one
// group's entries at a time. An empty list is "[]", which file_sd reads as
// "no targets"; an empty file would be a parse error.
func Write(w io.Writer, groups []*targetgroup.Group, f Format) error {
	var c converter
	var buf []byte
	n := 0
	writeEntry := func(targets []string, labels []label) error {
		buf = buf[:0]
		if f == YAML {
			b, err := yaml.Marshal([]yamlEntry{c.yamlEntry(targets, labels)})
			if err != nil {
				return err
			}
			buf = append(buf, b...)
		} else {
			if n == 0 {
				buf = append(buf, "[\n"...)
			} else {
				buf = append(buf, ",\n"...)
			}
			buf = c.appendJSONEntry(buf, targets, labels)
		}
		n++
		_, err := w.Write(buf)
		return err
	}
	if err := c.each(groups, writeEntry); err != nil {
		return err
	}
	end := "\n]\n"
	if n == 0 {
		end = "[]\n"
	} else if f == YAML {
		end = ""
	}
	_, err := io.WriteString(w, end)
	return err
}

// Render is Write to memory, for tests and small outputs.
func Render(groups []*targetgroup.Group, f Format) ([]byte, error) {
	var b bytes.Buffer
	err := Write(&b, groups, f)
	return b.Bytes(), err
}

// appendJSONEntry appends one entry as a line of JSON. It is written by
// hand because encoding/json sorts every label map again through
// reflection, which made writing large catalogs several times slower than
// everything else.
func (c *converter) appendJSONEntry(b []byte, targets []string, labels []label) []byte {
	b = append(b, `{"targets":[`...)
	for j, t := range targets {
		if j > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, t)
	}
	b = append(b, `],"labels":{`...)
	for j, l := range labels {
		if j > 0 {
			b = append(b, ',')
		}
		b = append(b, c.names.list[l.id].json...)
		b = appendJSONString(b, l.value)
	}
	return append(b, "}}"...)
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

func (c *converter) yamlEntry(targets []string, labels []label) yamlEntry {
	ms := make(yaml.MapSlice, len(labels))
	for j, l := range labels {
		ms[j] = yaml.MapItem{Key: c.names.list[l.id].name, Value: l.value}
	}
	return yamlEntry{Targets: targets, Labels: ms}
}
