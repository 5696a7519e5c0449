package consulsd

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	"go.yaml.in/yaml/v2"

	"github.com/consul-sd-adapter/consul-sd-adapter/adapter"
)

// Fuzz inputs pack lists into one string: list items are separated by
// listSep, and a map entry's key from its value by kvSep. Both are ASCII
// control characters, so keys and values can still hold '=', ',', newlines,
// unicode and invalid UTF-8.
const (
	listSep = "\x1e"
	kvSep   = "\x1f"
)

// fuzzInput is one fuzz case: a service with 1 to 8 instances.
type fuzzInput struct {
	service, id, node       string
	nodeAddr, svcAddr       string
	port                    int
	tags                    string // listSep-separated; "" is no tags
	nodeMeta, svcMeta       string // listSep-separated key kvSep value pairs
	tagged                  string // node tagged addresses, same packing
	sep                     string // --consul.tag-separator
	shape                   uint8  // low 3 bits: instances-1; bit 3: two services
	addrMask, healthPattern uint8  // per instance: service address or not; check status
}

// FuzzEntriesToFile drives the whole "Consul entries -> file" path with
// arbitrary Consul data: serviceGroup builds the groups from the labels of
// each instance exactly as a refresh does (instanceLabels, then groupOf),
// adapter.Entries and adapter.Render write them as JSON and YAML, and
// Prometheus's own file_sd decoding reads them back. It asserts that both
// files load, hold exactly one target per instance with valid label names,
// and carry every label value unchanged.
func FuzzEntriesToFile(f *testing.F) {
	kv := func(pairs ...string) string {
		var items []string
		for i := 0; i+1 < len(pairs); i += 2 {
			items = append(items, pairs[i]+kvSep+pairs[i+1])
		}
		return strings.Join(items, listSep)
	}
	list := func(items ...string) string { return strings.Join(items, listSep) }
	seeds := []fuzzInput{
		{service: "web", id: "web", node: "n1", nodeAddr: "10.0.0.1", port: 80, tags: list("a", "b"), sep: ",", shape: 1},
		{service: "web", id: "web", node: "n1", nodeAddr: "10.0.0.1", svcAddr: "2001:db8::1", port: 8080, sep: ",", shape: 3, addrMask: 0b0101},
		{service: "v6", id: "v6", node: "n6", nodeAddr: "::1", port: 9100, sep: ",", shape: 0},
		{service: "zone", id: "z", node: "n", nodeAddr: "fe80::1%eth0", svcAddr: "fe80::2%lo", port: 1, sep: ",", shape: 1, addrMask: 1},
		{service: "bracketed", id: "b", node: "n", nodeAddr: "[::1]", svcAddr: "host:1234", port: 2, sep: ",", shape: 1, addrMask: 2},
		{service: "noaddr", id: "x", node: "n", nodeAddr: "", svcAddr: "", port: 0, sep: ",", shape: 2},
		{service: "host", id: "h", node: "n", nodeAddr: "node.example.com", svcAddr: "svc.example.com", port: 65535, sep: ",", shape: 7, addrMask: 0xaa, healthPattern: 0xe4},
		{service: "неймспейс", id: "ид", node: "узел", nodeAddr: "10.1.1.1", port: 443,
			nodeMeta: kv("ключ", "значение", "rack", "r1"), svcMeta: kv("версия", "1.0", "env", "prod"), tags: list("тег", "🚀"), sep: ",", shape: 2},
		{service: "keys", id: "k", node: "n", nodeAddr: "10.0.0.1", port: 1,
			nodeMeta: kv("with-dash", "1", "with.dot", "2", "with/slash", "3", "0digit", "4", "", "empty key"),
			svcMeta:  kv("a b", "", "UPPER", "x", "_under", "y", "kube:label", "z"),
			tagged:   kv("lan", "10.0.0.1", "wan_ipv4", "1.2.3.4", "lan_ipv6", "::1"), sep: ",", shape: 1},
		{service: "tags", id: "t", node: "n", nodeAddr: "10.0.0.1", port: 1, tags: list("", "", "x"), sep: ";", shape: 1},
		{service: "tags", id: "t", node: "n", nodeAddr: "10.0.0.1", port: 1, tags: list("a", "b,c"), sep: "", shape: 1},
		{service: "tags", id: "t", node: "n", nodeAddr: "10.0.0.1", port: 1, tags: list("a", "b"), sep: " | ", shape: 1},
		{service: "split", id: "s", node: "n", nodeAddr: "10.0.0.1", port: 1, sep: ",", shape: 8 | 5},
		{service: "yaml", id: "null", node: "~", nodeAddr: "true", svcAddr: "0x10", port: -1,
			nodeMeta: kv("yes", "no", "on", "off", "null", "~", "n", "1e3"), svcMeta: kv("k", "- item", "c", ": colon", "h", "# hash", "q", `"'`, "nl", "a\nb", "tab", "\t", "cr", "a\r\n"),
			tags: list("{}", "[]", "&anchor", "*alias", "!tag", "%"), sep: ": ", shape: 1},
		{service: "json", id: "\u2028\u2029", node: "<>&", nodeAddr: "10.0.0.1", port: 1,
			svcMeta: kv("esc", "\\\"\x00\x07\x7f", "bom", "\ufeffx", "nel", "\u0085", "ffff", "\uffff", "repl", "\ufffd", "astral", "𝄞"), sep: ",", shape: 1},
		{service: "bad\xffutf8", id: "i\xc3", node: "n\xed\xa0\x80", nodeAddr: "10.0.0.1", port: 1,
			nodeMeta: kv("k\xff", "v\xfe"), tags: list("\xc0\xaf"), sep: "\xff", shape: 1},
		// Found by the fuzzer: yaml.v2 printed these node meta labels in an
		// order that changed from one render to the next.
		{service: "", id: "7", node: "7", nodeAddr: "170020B9", port: 1,
			nodeMeta: "00000111C\x1f\x10\x1e00A710218\x1e0100B000000001000100010000000001",
			svcMeta:  "a b\x1f\x1eUPPER\x1fx\x1e_under\x1fy\x1ekube:label\x1fz\xff\xdd\xef",
			tagged:   kv("lan", "10.0.0.1", "wan_ipv4", "1.2.3.4", "lan_ipv6", "::1"), sep: "0", shape: 1},
		{service: "gpu", id: "g", node: "n", nodeAddr: "10.0.0.1", port: 1, nodeMeta: kv("gpu2", "x", "gpu10", "y", "gpu1a", "z"), sep: ",", shape: 0},
		{service: "long", id: "l", node: "n", nodeAddr: "10.0.0.1", port: 1,
			nodeMeta: kv(strings.Repeat("k", 128), strings.Repeat("v", 512)), svcMeta: kv(strings.Repeat("ä", 200), "x"), sep: ",", shape: 1},
	}
	for _, s := range seeds {
		f.Add(s.service, s.id, s.node, s.nodeAddr, s.svcAddr, s.port, s.tags, s.nodeMeta, s.svcMeta, s.tagged, s.sep, s.shape, s.addrMask, s.healthPattern)
	}
	f.Fuzz(func(t *testing.T, service, id, node, nodeAddr, svcAddr string, port int, tags, nodeMeta, svcMeta, tagged, sep string, shape, addrMask, healthPattern uint8) {
		in := fuzzInput{service, id, node, nodeAddr, svcAddr, port, tags, nodeMeta, svcMeta, tagged, sep, shape, addrMask, healthPattern}
		checkEntriesToFile(t, in)
	})
}

func checkEntriesToFile(t *testing.T, in fuzzInput) {
	build := func() []*targetgroup.Group { return in.groups() }
	groups := build()

	// The targets the file must hold: one per instance, keyed by their labels
	// (including __address__). Distinct service IDs make every label set
	// distinct, so none may collapse into another.
	want := map[string]model.LabelSet{}
	instances := 0
	for _, g := range groups {
		for _, tl := range g.Targets {
			instances++
			full := g.Labels.Merge(tl)
			want[canonical(full)] = full
		}
	}
	if len(want) != instances {
		t.Fatalf("fuzz harness: %d instances but %d distinct label sets", instances, len(want))
	}

	for _, format := range []adapter.Format{adapter.JSON, adapter.YAML} {
		name := map[adapter.Format]string{adapter.JSON: "JSON", adapter.YAML: "YAML"}[format]
		data, err := adapter.Render(groups, format)
		if err != nil {
			t.Fatalf("%s: Render: %v", name, err)
		}
		got := decodeFileSD(t, name, data)

		if len(got) != instances {
			t.Errorf("%s: %d targets in the file, want one per instance (%d)\n%s", name, len(got), instances, data)
		}
		var wantTargets []model.LabelSet
		for _, tl := range want {
			wantTargets = append(wantTargets, expectedAfter(tl))
		}
		gotKeys, wantKeys := keysOf(got), keysOf(wantTargets)
		if !slices.Equal(gotKeys, wantKeys) {
			t.Errorf("%s: targets do not round-trip\n got %q\nwant %q\nfile:\n%s", name, gotKeys, wantKeys, data)
		}
		for _, tl := range got {
			for ln, lv := range tl {
				// Map keys go through the sanitiser, so every name is a
				// classic one that any Prometheus and relabel rule accepts.
				if !model.LegacyValidation.IsValidLabelName(string(ln)) {
					t.Errorf("%s: label name %q is not a legacy label name", name, ln)
				}
				if !lv.IsValid() {
					t.Errorf("%s: label %s has a value that is not valid UTF-8: %q", name, ln, lv)
				}
			}
		}

		// Deterministic: building the groups again from the same Consul
		// state gives the same bytes, also when meta keys collide once
		// sanitised and whatever the label names look like.
		again, err := adapter.Render(build(), format)
		if err != nil {
			t.Fatalf("%s: Render: %v", name, err)
		}
		if !bytes.Equal(again, data) {
			t.Errorf("%s: same entries rendered differently:\n%s\n---\n%s", name, data, again)
		}
	}
}

// expectedAfter returns the labels a target is expected to have once read
// back from a file, in either format.
//
// Valid UTF-8 round-trips byte-exactly in both formats. Invalid UTF-8 can't
// come from a real Consul (the api client decodes Consul's answers with
// encoding/json, which already turns every invalid byte into U+FFFD), so for
// it the fuzz target only requires a loadable file and defined results:
// both formats write each invalid byte as U+FFFD, exactly what the []rune
// conversion does.
func expectedAfter(tl model.LabelSet) model.LabelSet {
	out := make(model.LabelSet, len(tl))
	for k, v := range tl {
		if v == "" {
			continue // empty means absent to Prometheus, so the file leaves it out
		}
		if !utf8.ValidString(string(v)) {
			v = model.LabelValue([]rune(string(v)))
		}
		out[k] = v
	}
	return out
}

// decodeFileSD reads a file_sd file exactly as Prometheus's discovery/file
// does and returns its targets, each with its group's labels.
func decodeFileSD(t *testing.T, format string, data []byte) []model.LabelSet {
	t.Helper()
	var groups []*targetgroup.Group
	var err error
	if format == "JSON" {
		err = json.Unmarshal(data, &groups)
	} else {
		err = yaml.UnmarshalStrict(data, &groups)
	}
	if err != nil {
		t.Fatalf("%s: Prometheus's file_sd cannot load the file: %v\n%s", format, err, data)
	}
	var targets []model.LabelSet
	for i, g := range groups {
		if g == nil {
			t.Fatalf("%s: group %d is null, file_sd rejects that\n%s", format, i, data)
		}
		if len(g.Targets) == 0 {
			t.Errorf("%s: group %d has no targets\n%s", format, i, data)
		}
		if _, ok := g.Labels[model.AddressLabel]; ok {
			t.Errorf("%s: group %d has __address__ among its labels\n%s", format, i, data)
		}
		for _, tg := range g.Targets {
			ls := g.Labels.Clone()
			if ls == nil {
				ls = model.LabelSet{}
			}
			ls[model.AddressLabel] = tg[model.AddressLabel]
			targets = append(targets, ls)
		}
	}
	return targets
}

// groups builds the service entries and groups them as Discovery.refresh does.
func (in fuzzInput) groups() []*targetgroup.Group {
	n := int(in.shape&7) + 1
	twoServices := in.shape&8 != 0
	d := &Discovery{cfg: Config{TagSeparator: in.sep}}

	byService := map[string][]*api.ServiceEntry{}
	names := []string{in.service}
	if twoServices {
		names = append(names, in.service+"-2")
	}
	for i := range n {
		svcName := names[i%len(names)]
		svcAddr := ""
		if in.addrMask&(1<<i) != 0 {
			svcAddr = in.svcAddr
		}
		e := &api.ServiceEntry{
			Node: &api.Node{
				Node:            in.node,
				Address:         in.nodeAddr,
				Datacenter:      "dc1",
				Meta:            unpackMap(in.nodeMeta),
				TaggedAddresses: unpackMap(in.tagged),
			},
			Service: &api.AgentService{
				// The suffix keeps service IDs, and so label sets, distinct.
				ID:      in.id + "#" + strconv.Itoa(i),
				Service: svcName,
				Address: svcAddr,
				Port:    in.port,
				Tags:    unpackList(in.tags),
				Meta:    unpackMap(in.svcMeta),
			},
			Checks: api.HealthChecks{{
				CheckID: "service:" + in.id,
				Status:  []string{api.HealthPassing, api.HealthWarning, api.HealthCritical, api.HealthPassing}[(in.healthPattern>>(2*(i%4)))&3],
			}},
		}
		byService[svcName] = append(byService[svcName], e)
	}
	var groups []*targetgroup.Group
	for _, name := range names {
		groups = append(groups, serviceGroup(name, byService[name], d.cfg.TagSeparator))
	}
	return groups
}

func unpackList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, listSep)
}

// unpackMap reads key kvSep value pairs; an item without kvSep is a key with
// an empty value. A later duplicate key overwrites an earlier one, as in a
// JSON object.
func unpackMap(s string) map[string]string {
	if s == "" {
		return nil
	}
	m := map[string]string{}
	for _, item := range strings.Split(s, listSep) {
		k, v, _ := strings.Cut(item, kvSep)
		m[k] = v
	}
	return m
}

// canonical is an unambiguous string for a label set (names and values
// quoted, sorted).
func canonical(ls model.LabelSet) string {
	names := make([]string, 0, len(ls))
	for n := range ls {
		names = append(names, string(n))
	}
	slices.Sort(names)
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "%q=%q,", n, string(ls[model.LabelName(n)]))
	}
	return b.String()
}

func keysOf(targets []model.LabelSet) []string {
	out := make([]string, 0, len(targets))
	for _, tl := range targets {
		out = append(out, canonical(tl))
	}
	slices.Sort(out)
	return out
}

// TestSanitisedKeyCollision: Consul allows meta keys such as "env-name" and
// "env_name" on the same node or service (its key format is [a-zA-Z0-9_-]+),
// and both sanitise to the label name __meta_consul_metadata_env_name. The
// design requires the same Consul state to give byte-identical output, so
// the value that wins must not depend on map iteration order.
func TestSanitisedKeyCollision(t *testing.T) {
	entry := func() *api.ServiceEntry {
		return &api.ServiceEntry{
			Node:    &api.Node{Node: "n1", Address: "10.0.0.1", Meta: map[string]string{"env-name": "a", "env_name": "b", "env.name": "c"}},
			Service: &api.AgentService{ID: "web", Service: "web", Port: 80, Meta: map[string]string{"x-y": "1", "x_y": "2"}},
		}
	}
	seen := map[string]int{}
	for range 200 {
		ls := targetLabels(entry(), ",")
		seen[string(ls[nodeMetaLabelPrefix+"env_name"])+"/"+string(ls[serviceMetaLabelPrefix+"x_y"])]++
	}
	if len(seen) > 1 {
		t.Errorf("colliding sanitised meta keys give a value chosen by map iteration order: 200 builds of one entry gave %d different label sets: %v", len(seen), seen)
	}
}

// TestYAMLLabelOrder: node meta keys "gpu2", "gpu10" and "gpu1a" (all valid
// Consul meta keys) must give the same YAML file every time. adapter.Render
// leaves the order of label names to yaml.v2, whose key comparison
// (keyList.Less in sorter.go: digit runs compared as numbers) is not a
// strict weak order for such keys, so sort.Sort's result depends on the
// random map iteration order it starts from. The design requires
// byte-identical output for the same Consul state.
func TestYAMLLabelOrder(t *testing.T) {
	render := func() string {
		e := &api.ServiceEntry{
			Node:    &api.Node{Node: "n1", Address: "10.0.0.1", Meta: map[string]string{"gpu2": "a", "gpu10": "b", "gpu1a": "c"}},
			Service: &api.AgentService{ID: "web", Service: "web", Port: 80},
		}
		d := &Discovery{cfg: Config{TagSeparator: ","}}
		data, err := adapter.Render([]*targetgroup.Group{serviceGroup("web", []*api.ServiceEntry{e}, d.cfg.TagSeparator)}, adapter.YAML)
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	seen := map[string]int{}
	for range 200 {
		seen[render()]++
	}
	if len(seen) > 1 {
		var orders []string
		for out := range seen {
			var names []string
			for _, line := range strings.Split(out, "\n") {
				if strings.Contains(line, "__meta_consul_metadata_") {
					names = append(names, strings.TrimSpace(strings.SplitN(line, ":", 2)[0])[len("__meta_consul_metadata_"):])
				}
			}
			orders = append(orders, strings.Join(names, " "))
		}
		slices.Sort(orders)
		t.Errorf("200 YAML renders of one entry gave %d different files; node meta label order: %q", len(seen), orders)
	}
}
