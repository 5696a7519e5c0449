package adapter

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// Entry is one element of a file_sd file. The adapter writes one target
// per entry: file_sd has labels per entry only, and no two Consul instances
// share a label set (each has its own __meta_consul_service_id).
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
// Several discoverers (one per datacenter) can send groups of the same
// source, which the Manager passes on in no fixed order: those are ordered
// by their content, so that the same targets always give the same bytes.
func sortGroups(groups []*targetgroup.Group) []*targetgroup.Group {
	sorted := make([]*targetgroup.Group, 0, len(groups))
	for _, g := range groups {
		if g != nil {
			sorted = append(sorted, g)
		}
	}
	slices.SortFunc(sorted, func(a, b *targetgroup.Group) int {
		if c := strings.Compare(a.Source, b.Source); c != 0 {
			return c
		}
		return strings.Compare(groupContent(a), groupContent(b))
	})
	return sorted
}

// groupContent renders a group's labels and targets in a fixed order, to
// tell apart groups of the same source. Rare enough to be done on demand.
func groupContent(g *targetgroup.Group) string {
	targets := make([]string, len(g.Targets))
	for i, t := range g.Targets {
		targets[i] = t.String()
	}
	slices.Sort(targets)
	return g.Labels.String() + strings.Join(targets, "")
}

// Entries returns the entries of groups, in the order Write writes them.
// The adapter itself never holds them all: at 100,000 targets they take
// more memory than the groups they come from.
func Entries(groups []*targetgroup.Group) []Entry {
	var entries []Entry
	var c converter
	c.each(groups, func(target string, labels []Label) error {
		entries = append(entries, Entry{Targets: []string{target}, Labels: slices.Clone(labels)})
		return nil
	})
	return entries
}

// converter turns target groups into file_sd entries one group at a time,
// reusing its buffers, so that writing a file of any size allocates about
// as much as its largest group needs.
//
// Each target's labels are its own merged over its group's, sorted by name.
// Labels with empty values are left out: Prometheus treats an empty label
// as absent.
type converter struct {
	groupLabels []Label // the group's, by name
	own         []Label // one target's, by name
	arena       []Label // the labels of the group's targets, back to back
	targets     []pendingTarget
}

// pendingTarget is a target of the current group: its labels are
// arena[lo:hi] (offsets, because the arena may move as it grows).
type pendingTarget struct {
	addr   string
	lo, hi int
}

// each calls fn for every target of groups with its labels, in file order:
// groups by source, then each group's targets by address. The labels are
// only valid during the call.
func (c *converter) each(groups []*targetgroup.Group, fn func(target string, labels []Label) error) error {
	for _, g := range sortGroups(groups) {
		if err := c.group(g, fn); err != nil {
			return err
		}
	}
	return nil
}

// group calls fn for every target of g, by address.
func (c *converter) group(g *targetgroup.Group, fn func(target string, labels []Label) error) error {
	c.groupLabels = appendSorted(c.groupLabels[:0], g.Labels)
	c.arena, c.targets = c.arena[:0], c.targets[:0]
	for _, t := range g.Targets {
		addr := t[model.AddressLabel]
		if addr == "" {
			continue // no address: nothing to scrape
		}
		c.own = appendSorted(c.own[:0], t)
		lo := len(c.arena)
		c.arena = appendMerged(c.arena, c.own, c.groupLabels)
		c.targets = append(c.targets, pendingTarget{addr: string(addr), lo: lo, hi: len(c.arena)})
	}
	slices.SortFunc(c.targets, func(a, b pendingTarget) int {
		if c := strings.Compare(a.addr, b.addr); c != 0 {
			return c
		}
		return slices.CompareFunc(c.arena[a.lo:a.hi], c.arena[b.lo:b.hi], compareLabels)
	})
	for _, t := range c.targets {
		if err := fn(t.addr, c.arena[t.lo:t.hi]); err != nil {
			return err
		}
	}
	return nil
}

// appendSorted appends ls without the address, sorted by name. Empty values
// stay: a target's empty label unsets its group's.
func appendSorted(dst []Label, ls model.LabelSet) []Label {
	n := len(dst)
	for name, v := range ls {
		if name != model.AddressLabel {
			dst = append(dst, Label{Name: string(name), Value: string(v)})
		}
	}
	slices.SortFunc(dst[n:], func(a, b Label) int { return strings.Compare(a.Name, b.Name) })
	return dst
}

// appendMerged appends the union of two label lists sorted by name, in
// order and without empty values; on a name in both, the target's label
// wins.
func appendMerged(dst, target, group []Label) []Label {
	i, j := 0, 0
	for i < len(target) || j < len(group) {
		var l Label
		switch {
		case j == len(group) || (i < len(target) && target[i].Name < group[j].Name):
			l = target[i]
			i++
		case i == len(target) || group[j].Name < target[i].Name:
			l = group[j]
			j++
		default: // the same name
			l = target[i]
			i++
			j++
		}
		if l.Value != "" {
			dst = append(dst, l)
		}
	}
	return dst
}

func compareLabels(a, b Label) int {
	if c := strings.Compare(a.Name, b.Name); c != 0 {
		return c
	}
	return strings.Compare(a.Value, b.Value)
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
	return writeFile(w, sortGroups(groups), f, nil, nil)
}

// The bytes around JSON entries.
var (
	jsonOpen  = []byte("[\n")
	jsonComma = []byte(",\n")
	jsonClose = []byte("\n]\n")
	emptyList = []byte("[]\n")
)

// writeFile is Write of groups already in file order. A group that prev
// holds is copied from there rather than converted and encoded again: the
// same group gives the same bytes. If spans is not nil, it records where
// each group's entries are in what it wrote.
func writeFile(w io.Writer, sorted []*targetgroup.Group, f Format, prev *previousFile, spans map[*targetgroup.Group]span) error {
	var (
		c     converter
		buf   []byte
		pos   int64 // bytes written
		wrote bool  // an entry
	)
	// separator goes before an entry: the array's opening or a comma in
	// JSON, nothing in YAML's block list.
	separator := func() []byte {
		switch {
		case f == YAML:
			return nil
		case !wrote:
			return jsonOpen
		default:
			return jsonComma
		}
	}
	record := func(g *targetgroup.Group, s span) {
		if spans != nil {
			spans[g] = s
		}
	}
	put := func(b []byte) error {
		n, err := w.Write(b)
		pos += int64(n)
		return err
	}
	for _, g := range sorted {
		if s, ok := prev.span(g); ok {
			if s.n == 0 {
				record(g, span{off: pos})
				continue
			}
			if err := put(separator()); err != nil {
				return err
			}
			record(g, span{off: pos, n: s.n})
			n, err := prev.copy(w, s)
			pos += n
			if err != nil {
				return err
			}
			wrote = true
			continue
		}
		start := int64(-1)
		err := c.group(g, func(target string, labels []Label) error {
			buf = append(buf[:0], separator()...)
			if start < 0 {
				start = pos + int64(len(buf))
			}
			if f == YAML {
				buf = appendYAMLEntry(buf, target, labels)
			} else {
				buf = appendJSONEntry(buf, target, labels)
			}
			wrote = true
			return put(buf)
		})
		if err != nil {
			return err
		}
		if start < 0 {
			start = pos
		}
		record(g, span{off: start, n: pos - start})
	}
	switch {
	case !wrote:
		return put(emptyList)
	case f == JSON:
		return put(jsonClose)
	}
	return nil
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
func appendJSONEntry(b []byte, target string, labels []Label) []byte {
	b = append(b, `{"targets":[`...)
	b = appendJSONString(b, target)
	b = append(b, `],"labels":{`...)
	for j, l := range labels {
		if j > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, l.Name)
		b = append(b, ':')
		b = appendJSONString(b, l.Value)
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

// appendYAMLEntry appends one entry in YAML's block style, laid out as
// yaml.v2 lays it out. Like appendJSONEntry it is written by hand: a
// yaml.Marshal per entry took seconds and gigabytes at 100,000 targets.
func appendYAMLEntry(b []byte, target string, labels []Label) []byte {
	b = appendYAMLString(append(b, "- targets:\n  - "...), target)
	if len(labels) == 0 {
		return append(b, "\n  labels: {}\n"...)
	}
	b = append(b, "\n  labels:\n"...)
	for _, l := range labels {
		b = appendYAMLString(append(b, "    "...), l.Name)
		b = appendYAMLString(append(b, ": "...), l.Value)
		b = append(b, '\n')
	}
	return b
}

// appendYAMLString appends s as a YAML scalar that every YAML reader takes
// for the string s, in the style yaml.v2 would choose for it: plain where
// that is certain, double-quoted where s would read as another type (true,
// ~, 20000), single-quoted where only its characters need quoting
// (',a,b,'), and double-quoted with escapes where they need escaping.
func appendYAMLString(b []byte, s string) []byte {
	switch {
	case yamlReadsAsOtherType(s):
		return appendYAMLQuoted(b, s)
	case yamlPlainSafe(s):
		return append(b, s...)
	case printableASCII(s):
		b = append(b, '\'')
		b = append(b, strings.ReplaceAll(s, "'", "''")...)
		return append(b, '\'')
	default:
		return appendYAMLQuoted(b, s)
	}
}

// yamlPlainSafe reports whether s holds only characters with no meaning to
// YAML where they stand, so that unquoted it still reads as s.
func yamlPlainSafe(s string) bool {
	if s == "" || s[len(s)-1] == ':' {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_':
		case c == '.' || c == '/' || c == ':' || c == '-' || c == '@' || c == '=' || c == '+':
			if i == 0 && c != '/' {
				return false // indicators, or the start of a number (.5, -1, +1)
			}
		default:
			return false
		}
	}
	return true
}

// yamlReadsAsOtherType reports whether s, unquoted, would read as a null,
// bool, number or timestamp in YAML 1.1 or 1.2: "", ~, yes, on, true,
// 0x1f, 1e3, .inf, 1:20, 2001-12-14.
func yamlReadsAsOtherType(s string) bool {
	if len(s) <= 5 {
		switch strings.ToLower(s) {
		case "", "~", "y", "n", "yes", "no", "on", "off", "true", "false", "null",
			".inf", "-.inf", "+.inf", ".nan":
			return true
		}
	}
	if c := s[0]; !('0' <= c && c <= '9' || c == '-' || c == '+' || c == '.') {
		return false
	}
	if yamlTimestampLike(s) || yamlSexagesimal(strings.TrimLeft(s, "+-")) {
		return true
	}
	// strconv only where it may succeed: its errors allocate, and every
	// address (10.0.0.1:8080) starts with a digit.
	if strings.Count(s, ".") > 1 || strings.ContainsAny(s, ": ") {
		return false
	}
	digits := strings.ReplaceAll(s, "_", "")
	if _, err := strconv.ParseInt(digits, 0, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		return true
	}
	_, err := strconv.ParseFloat(digits, 64)
	return err == nil || errors.Is(err, strconv.ErrRange)
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// yamlTimestampLike reports whether s starts as a YAML timestamp does:
// YYYY-M-D.
func yamlTimestampLike(s string) bool {
	i := 0
	for i < len(s) && i < 4 && '0' <= s[i] && s[i] <= '9' {
		i++
	}
	return i == 4 && len(s) > 6 && s[4] == '-' && '0' <= s[5] && s[5] <= '9'
}

// yamlSexagesimal reports whether s is a YAML 1.1 base-60 number, such as
// 1:20 or 190:20:30.15.
func yamlSexagesimal(s string) bool {
	i := 0
	for i < len(s) && ('0' <= s[i] && s[i] <= '9' || s[i] == '_') {
		i++
	}
	groups := 0
	for i < len(s) && s[i] == ':' {
		j := i + 1
		for j < len(s) && j < i+3 && '0' <= s[j] && s[j] <= '9' {
			j++
		}
		if j == i+1 {
			return false
		}
		groups, i = groups+1, j
	}
	if groups == 0 {
		return false
	}
	if i < len(s) && s[i] == '.' {
		for i++; i < len(s) && ('0' <= s[i] && s[i] <= '9' || s[i] == '_'); i++ {
		}
	}
	return i == len(s)
}

// appendYAMLQuoted appends s as a double-quoted YAML scalar. Characters
// YAML does not allow raw, or reads as line breaks (U+0085, U+2028,
// U+2029), are escaped; invalid UTF-8 becomes U+FFFD, as in the JSON file.
func appendYAMLQuoted(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		switch {
		case r == '"' || r == '\\':
			b = append(b, '\\', byte(r))
		case r == '\n':
			b = append(b, '\\', 'n')
		case r == '\t':
			b = append(b, '\\', 't')
		case r == '\r':
			b = append(b, '\\', 'r')
		case r == utf8.RuneError && size == 1:
			b = append(b, `\ufffd`...)
		case 0x20 <= r && r < 0x7f, 0xa0 <= r && r <= 0xd7ff && r != 0x2028 && r != 0x2029,
			0xe000 <= r && r <= 0xfffd && r != 0xfeff, r >= 0x10000:
			b = utf8.AppendRune(b, r)
		default: // control characters, U+0085, U+2028, U+2029, U+FEFF, U+FFFE, U+FFFF
			b = append(b, '\\', 'u', hex[r>>12&0xf], hex[r>>8&0xf], hex[r>>4&0xf], hex[r&0xf])
		}
	}
	return append(b, '"')
}
