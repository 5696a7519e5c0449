package e2e

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"testing"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
)

// shardCount is how many Prometheus servers share the targets in
// TestHTTPSDShardsMatchHashmod.
const shardCount = 3

// TestHTTPSDShardsMatchHashmod: for every shard K of 3, a job fetching
// /targets?shards=3&shard=K without relabeling scrapes exactly the targets
// of a job fetching all of /targets and keeping shard K with Prometheus's
// own hashmod rule. Both kinds of job run side by side in one real
// Prometheus.
func TestHTTPSDShardsMatchHashmod(t *testing.T) {
	agent := consultest.Start(t)
	want := addresses(shardFixture(t, agent))
	webAddr := freeAddr(t)
	adapter, _ := runAdapter(t, agent.Addr, webAddr)
	adapter.waitReady(t)
	prom := startShardedPrometheus(t, "http://"+webAddr+httpSDPath)

	// A job's targets come from one http_sd answer, all at once: once each
	// kind of job has every target between its shards, every job holds
	// what it will hold.
	var byJob map[string][]string
	waitFor(t, "every target in Prometheus, in the relabeled jobs and in the sharded ones", func() (bool, string) {
		byJob = addressesByJob(prom.activeTargets(t))
		relabeled, sharded := jobsUnion(byJob, relabeledJob), jobsUnion(byJob, shardedJob)
		return slices.Equal(relabeled, want) && slices.Equal(sharded, want),
			fmt.Sprintf("want %d targets; relabeled jobs hold %d, sharded jobs %d: %v", len(want), len(relabeled), len(sharded), byJob)
	})
	for k := range shardCount {
		kept, served := byJob[relabeledJob(k)], byJob[shardedJob(k)]
		if len(kept) == 0 {
			t.Errorf("shard %d: hashmod keeps no target: the catalog does not exercise the split", k)
		}
		if !slices.Equal(served, kept) {
			t.Errorf("shard %d: /targets?shards=%d&shard=%d serves %v, hashmod keeps %v", k, shardCount, k, served, kept)
		}
		t.Logf("shard %d of %d: %d targets", k, shardCount, len(served))
	}
}

// shardFixture registers 30 instances of three services, each on a node of
// its own, and returns them. Their addresses are fixed, so every run splits
// them the same way: node addresses, IPv6 and host-name service addresses.
// The Prometheus of the test never scrapes them.
func shardFixture(t *testing.T, agent *consultest.Agent) []consultest.Instance {
	t.Helper()
	services := []string{"web", "api", "db"}
	var insts []consultest.Instance
	for i := range 30 {
		inst := consultest.Instance{
			Node:        fmt.Sprintf("shard-node-%02d", i),
			NodeAddress: fmt.Sprintf("127.0.2.%d", i+1),
			Service:     services[i%len(services)],
			ID:          fmt.Sprintf("%s-%d", services[i%len(services)], i),
			Port:        9100 + i%len(services),
		}
		switch i % 5 {
		case 1:
			inst.Address = fmt.Sprintf("2001:db8::%x", i)
		case 3:
			inst.Address = fmt.Sprintf("%s-%d.example", inst.Service, i)
		}
		agent.RegisterInstance(t, inst)
		insts = append(insts, inst)
	}
	return insts
}

// addresses returns the instances' addresses, sorted.
func addresses(insts []consultest.Instance) []string {
	var out []string
	for _, inst := range insts {
		out = append(out, address(inst))
	}
	slices.Sort(out)
	return out
}

func relabeledJob(k int) string { return fmt.Sprintf("relabeled-%d", k) }
func shardedJob(k int) string   { return fmt.Sprintf("sharded-%d", k) }

// startShardedPrometheus runs Prometheus with two jobs per shard K: one
// fetching url and keeping shard K by hashmod relabeling, as the README
// shows it, and one fetching url?shards=N&shard=K as it is.
func startShardedPrometheus(t *testing.T, url string) *process {
	t.Helper()
	var jobs []any
	for k := range shardCount {
		jobs = append(jobs,
			map[string]any{
				"job_name":        relabeledJob(k),
				"http_sd_configs": []any{httpSDConfig(url)},
				"relabel_configs": []any{
					map[string]any{"source_labels": []string{"__address__"}, "modulus": shardCount, "target_label": "__tmp_hash", "action": "hashmod"},
					map[string]any{"source_labels": []string{"__tmp_hash"}, "regex": strconv.Itoa(k), "action": "keep"},
				},
			},
			map[string]any{
				"job_name":        shardedJob(k),
				"http_sd_configs": []any{httpSDConfig(fmt.Sprintf("%s?shards=%d&shard=%d", url, shardCount, k))},
			})
	}
	return startPrometheusWith(t, map[string]any{
		// Discovery only: a first scrape within the hour would be noise.
		"global":         map[string]any{"scrape_interval": "1h"},
		"scrape_configs": jobs,
	})
}

// addressesByJob returns the addresses of targets by job (scrape pool),
// each list sorted.
func addressesByJob(targets []target) map[string][]string {
	byJob := map[string][]string{}
	for _, tg := range targets {
		byJob[tg.ScrapePool] = append(byJob[tg.ScrapePool], tg.DiscoveredLabels["__address__"])
	}
	for _, addrs := range byJob {
		slices.Sort(addrs)
	}
	return byJob
}

// jobsUnion returns the addresses the jobs of every shard hold together,
// sorted, without repeats.
func jobsUnion(byJob map[string][]string, job func(k int) string) []string {
	set := map[string]bool{}
	for k := range shardCount {
		for _, addr := range byJob[job(k)] {
			set[addr] = true
		}
	}
	return slices.Sorted(maps.Keys(set))
}
