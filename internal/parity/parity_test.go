package parity

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/adapterproc"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/promconsul"
)

// hangGuard bounds each case: no timing assertion, only a limit on how
// long a broken build hangs the test. Both sides answer in about a second.
const hangGuard = 60 * time.Second

// adapterBin is the adapter binary, built once by TestMain.
var adapterBin string

// TestMain builds the real binary once: the test runs it as a user would.
func TestMain(m *testing.M) { os.Exit(adapterproc.RunTests(m, &adapterBin)) }

// cases are consul_sd_configs entries as prometheus.yml holds them (the
// test adds the server), with the number of targets the adapter must list
// for each in the fixture's catalog: with the count, and Prometheus
// finding some targets for every entry, no comparison passes for lack of
// anything to compare.
var cases = []struct {
	name    string
	block   string
	targets int
}{
	{"all services", `{}`, 9},
	{"services", `services: [web, api]`, 6},
	{"consul by name", `services: [consul]`, 1},
	{"a service Consul lacks", `services: [db, nosuch]`, 2},
	{"tag", `tags: [prod]`, 5},
	{"tags", `tags: [prod, v2]`, 2},
	{"services and tag", "services: [web, API]\ntags: [prod]", 4},
	{"health filter", `health_filter: 'Service.Meta.env == "prod"'`, 6},
	{"tag separator", `tag_separator: ";"`, 9},
	{"no stale reads", `allow_stale: false`, 9},
	{"datacenter", `datacenter: dc1`, 9},
	{"node meta", `node_meta: {rack-id: r2}`, 3},
	// Prometheus's filter chooses services with a matching instance, and
	// then lists every instance of them: web's four, not its canary alone.
	{"catalog filter", `filter: 'ServiceTags contains "canary"'`, 4},
	{"catalog and health filters", "filter: 'ServiceTags contains \"primary\"'\nhealth_filter: 'Service.Tags contains \"replica\"'", 1},
	{"node meta and tags", "node_meta: {zone: z1}\ntags: [prod]", 2},
	// Prometheus finds web's instances, Consul's lookup ignoring case, and
	// lists them as "WEB"; the adapter lists instances under their
	// registered names only, and "web" is not allowed: a documented
	// difference, which leaves nothing to compare but the count.
	{"allow-listed in another case", `services: [WEB]`, 0},
}

// TestParity: for each entry, the adapter's file lists what Prometheus's
// own Consul SD discovers in the same agent, label for label, apart from
// the documented differences.
func TestParity(t *testing.T) {
	agent := consultest.Start(t)
	registered := registerCatalog(t, agent)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
			defer cancel()
			block := withServer(t, tc.block, agent.Addr)
			prom, err := promconsul.Discover(ctx, block)
			if err != nil {
				t.Fatal(err)
			}
			if len(prom) == 0 {
				t.Fatalf("Prometheus's Consul SD found nothing for\n%s", block)
			}
			if tc.block == "{}" { // everything: the whole fixture shows
				checkVariety(t, prom)
			}
			got := runAdapter(ctx, t, block)

			want := documented{allowList: parseEntry(t, block).Services, registered: registered}.expected(prom)
			if len(want) != tc.targets || len(got) != tc.targets {
				t.Errorf("%d targets from Prometheus (%d with the documented differences applied), %d from the adapter; want %d",
					len(prom), len(want), len(got), tc.targets)
			}
			if diffs := compare(want, got); len(diffs) > 0 {
				t.Errorf("the adapter differs from Prometheus's Consul SD for\n%s%s", block, strings.Join(diffs, "\n"))
			}
		})
	}
}

// runAdapter runs the adapter once for block and returns the targets of
// the file it wrote.
func runAdapter(ctx context.Context, t *testing.T, block string) []model.LabelSet {
	t.Helper()
	out := filepath.Join(t.TempDir(), "targets.json")
	args := []string{"--once", "--config.file=" + adapterConfig(t, block, out)}
	if b, err := adapterproc.Command(ctx, adapterBin, args...).CombinedOutput(); err != nil {
		t.Fatalf("consul-sd-adapter %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	targets, err := readFileSD(out)
	if err != nil {
		t.Fatal(err)
	}
	return targets
}

// checkVariety fails unless Prometheus's targets for every service show
// what the fixture is meant to exercise, so that a fixture quietly
// registered otherwise cannot make the comparison easy.
func checkVariety(t *testing.T, prom []model.LabelSet) {
	t.Helper()
	seen := map[string]bool{}
	for _, ls := range prom {
		seen["health "+string(ls["__meta_consul_health"])] = true
		seen["service "+string(ls[serviceLabel])] = true
		for name, v := range ls {
			seen[string(name)] = true
			if v == "" {
				seen["an empty label"] = true
			}
		}
		if strings.HasPrefix(string(ls[model.AddressLabel]), "[") {
			seen["an IPv6 address"] = true
		}
	}
	for _, want := range []string{
		"health passing", "health warning", "health critical", "health maintenance",
		"service api", "service API", "service consul", "an empty label", "an IPv6 address",
		"__meta_consul_metadata_rack_id", "__meta_consul_service_metadata_team_name",
		"__meta_consul_tagged_address_wan_v6",
	} {
		if !seen[want] {
			t.Errorf("Prometheus's targets show no %s: the fixture is not what the cases assume", want)
		}
	}
}
