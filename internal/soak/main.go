// Command soak runs the adapter for a long while against a real Consul
// agent whose catalog keeps changing, and checks that it stays correct and
// does not leak: `make soak` (SOAK_FLAGS="-duration=2m" to shorten).
//
// It starts `consul agent -dev` ($CONSUL_BIN), builds and starts the
// adapter (--refresh.interval=5s), then for -duration registers and
// deregisters instances, flips their health and changes node meta at a
// modest rate within a bounded catalog, sampling the adapter's /metrics.
// At the end it stops the churn, waits for the file to settle and exits
// non-zero, saying why, unless:
//   - the file equals Consul's catalog: every instance, with its health,
//     tags and node meta;
//   - no refresh round and no file write failed during the run;
//   - go_goroutines at the end is at most its low in the first third of
//     the run plus a small slack;
//   - the heap did not keep growing: the average of go_memstats_heap_inuse_bytes
//     over the last third of the run is at most -heap-growth times that of
//     the first third;
//   - the adapter exits 0 on SIGTERM.
//
// With -cluster it runs a client agent in front of three servers instead,
// points the adapter at the client agent, and kills the leader (SIGKILL)
// every -leader-kill (but not in the run's last 45 s, so -duration must
// exceed -leader-kill by that), starting it again a few seconds later.
// Rounds that fail while there is no leader are reported, not failures of
// the soak; every other criterion holds as above.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/adapterproc"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/repo"
)

// settleTimeout bounds the wait for the file to reflect the final catalog.
// With the watch on a change takes well under a second; the refresh
// interval (5 s) is the fallback.
const settleTimeout = time.Minute

type options struct {
	duration       time.Duration
	sampleEvery    time.Duration
	rate           float64
	nodes          int
	services       int
	maxInstances   int
	goroutineSlack float64
	heapGrowth     float64
	keep           bool
	seed           uint64
	cluster        bool
	leaderKill     time.Duration
}

func main() {
	var o options
	flag.DurationVar(&o.duration, "duration", 10*time.Minute, "how long to churn the catalog")
	flag.DurationVar(&o.sampleEvery, "sample", 10*time.Second, "how often to sample the adapter's /metrics")
	flag.Float64Var(&o.rate, "rate", 4, "catalog changes per second")
	flag.IntVar(&o.nodes, "nodes", 40, "catalog nodes the instances are spread over")
	flag.IntVar(&o.services, "services", 12, "services the instances belong to")
	flag.IntVar(&o.maxInstances, "max-instances", 150, "most service instances in the catalog at once (at most nodes x services)")
	flag.Float64Var(&o.goroutineSlack, "goroutine-slack", 5, "how many more goroutines than at the start are tolerated at the end")
	flag.Float64Var(&o.heapGrowth, "heap-growth", 1.5, "largest tolerated ratio of the last third's average heap in use to the first third's")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (logs, output file) also after a success")
	flag.Uint64Var(&o.seed, "seed", uint64(time.Now().UnixNano()), "seed of the churn")
	flag.BoolVar(&o.cluster, "cluster", false, "run against a client agent in front of three servers, killing the leader every -leader-kill")
	flag.DurationVar(&o.leaderKill, "leader-kill", 2*time.Minute, "with -cluster, how often the leader is killed")
	flag.Parse()
	log.SetFlags(log.Ltime)
	log.SetPrefix("soak: ")
	if o.maxInstances > o.nodes*o.services || o.maxInstances < 4 || o.rate <= 0 || o.duration <= 0 {
		log.Fatal("need 4 <= -max-instances <= -nodes x -services, and a positive -rate and -duration")
	}
	if o.cluster && o.duration <= o.leaderKill+lastKillBeforeEnd {
		log.Fatalf("with -cluster, -duration (%s) must exceed -leader-kill (%s) by %s, or no leader is killed", o.duration, o.leaderKill, lastKillBeforeEnd)
	}
	os.Exit(run(o))
}

// sample is one reading of the adapter's /metrics.
type sample struct {
	at         time.Duration // since the churn started
	goroutines float64
	heapInuse  float64
	rss        float64
	cpu        float64
	requests   float64 // to Consul, in all
	okRounds   float64
	failRounds float64
	failures   float64 // refresh failures, all reasons
	writes     float64
	writeFails float64
	targets    float64
}

func read(d *adapterproc.Adapter, at time.Duration) (sample, error) {
	m, err := d.Metrics()
	if err != nil {
		return sample{}, err
	}
	s := sample{
		at:         at,
		goroutines: m["go_goroutines"],
		heapInuse:  m["go_memstats_heap_inuse_bytes"],
		rss:        m["process_resident_memory_bytes"],
		cpu:        m["process_cpu_seconds_total"],
		okRounds:   m[`consul_sd_adapter_refreshes_total{result="success"}`],
		failRounds: m[`consul_sd_adapter_refreshes_total{result="failure"}`],
		writes:     m["consul_sd_adapter_file_writes_total"],
		writeFails: m["consul_sd_adapter_file_write_failures_total"],
		targets:    m["consul_sd_adapter_targets"],
	}
	for k, v := range m {
		if strings.HasPrefix(k, "consul_sd_adapter_refresh_failures_total{") {
			s.failures += v
		}
		if strings.HasPrefix(k, "consul_sd_adapter_consul_request_duration_seconds_count{") {
			s.requests += v
		}
	}
	if _, ok := m["go_goroutines"]; !ok {
		return s, fmt.Errorf("go_goroutines missing from /metrics")
	}
	return s, nil
}

func run(o options) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	consulBin, err := consultest.BinaryPath()
	if err != nil {
		log.Print(err)
		return 1
	}
	dir, err := os.MkdirTemp("", "consul-sd-adapter-soak")
	if err != nil {
		log.Print(err)
		return 1
	}
	ok := false
	defer func() {
		if ok && !o.keep {
			os.RemoveAll(dir)
		} else {
			log.Printf("logs and output kept in %s", dir)
		}
	}()

	var agent *consultest.Agent
	var cluster *consultest.Cluster
	if o.cluster {
		log.Print("starting three Consul servers and a client agent")
		cluster, err = consultest.LaunchCluster(consulBin, dir)
		if cluster != nil {
			defer cluster.Stop()
			agent = cluster.Client
		}
	} else {
		agent, err = consultest.Launch(consulBin, dir)
		if agent != nil {
			defer agent.Stop()
		}
	}
	if err != nil {
		log.Print(err)
		return 1
	}
	root, err := repo.Root()
	if err != nil {
		log.Print(err)
		return 1
	}
	bin, err := adapterproc.Build(ctx, root, dir)
	if err != nil {
		log.Print(err)
		return 1
	}

	ch := newChurner(agent.Client, o.nodes, o.services, o.maxInstances, o.seed)
	ch.tolerate = o.cluster
	if err := ch.seed(ctx, o.maxInstances/2); err != nil {
		log.Print(err)
		return 1
	}
	clear(ch.ops) // count the churn only
	d, err := adapterproc.Start(bin, agent.Addr, filepath.Join(dir, "custom_sd.json"), filepath.Join(dir, "adapter.log"),
		"--refresh.interval=5s", "--log.level=info")
	if err != nil {
		log.Print(err)
		return 1
	}
	defer d.Stop()
	if err := d.WaitReady(ctx, time.Minute); err != nil {
		log.Print(err)
		return 1
	}
	if err := settle(ctx, d, agent); err != nil {
		log.Printf("before the churn: %v", err)
		return 1
	}

	start, err := read(d, 0)
	if err != nil {
		log.Print(err)
		return 1
	}
	log.Printf("churning %s at %.1f changes/s over %d nodes x %d services (at most %d instances), seed %d",
		o.duration, o.rate, o.nodes, o.services, o.maxInstances, o.seed)
	var kills *leaderKiller
	if o.cluster {
		kills = killLeaders(ctx, cluster, o.leaderKill, time.Now().Add(o.duration-lastKillBeforeEnd))
	}
	samples, churnErr := churnAndSample(ctx, o, ch, d)
	if kills != nil {
		if err := kills.end(); err != nil {
			log.Print(err)
			return 1
		}
		log.Printf("killed the leader %d times", kills.kills)
	}
	if ctx.Err() != nil {
		log.Print("interrupted")
		return 1
	}

	var problems []string
	if churnErr != nil {
		problems = append(problems, "churn: "+churnErr.Error())
	}
	if err := settle(ctx, d, agent); err != nil {
		problems = append(problems, err.Error())
	}
	end, err := read(d, o.duration)
	if err == nil {
		end.goroutines, err = quietGoroutines(d)
	}
	if err != nil {
		log.Print(err)
		return 1
	}
	printTable(start, samples, end, ch)
	problems = append(problems, check(o, start, samples, end)...)
	if o.cluster {
		log.Printf("while the leader was being killed: %.0f rounds failed, %.0f failures by reason, %d writes refused",
			end.failRounds-start.failRounds, end.failures-start.failures, ch.ops["refused"])
	}
	if code := d.Stop(); code != 0 {
		problems = append(problems, fmt.Sprintf("the adapter exited %d on SIGTERM, want 0", code))
	}

	if len(problems) > 0 {
		log.Printf("adapter log tail:\n%s", d.LogTail())
		log.Printf("FAIL:\n  - %s", strings.Join(problems, "\n  - "))
		return 1
	}
	log.Print("PASS")
	ok = true
	return 0
}

// churnAndSample churns for o.duration, sampling every o.sampleEvery.
func churnAndSample(ctx context.Context, o options, ch *churner, d *adapterproc.Adapter) ([]sample, error) {
	cctx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()
	churnDone := make(chan error, 1)
	began := time.Now()
	go func() { churnDone <- ch.run(cctx, time.Duration(float64(time.Second)/o.rate)) }()

	var samples []sample
	tick := time.NewTicker(o.sampleEvery)
	defer tick.Stop()
	for {
		select {
		case err := <-churnDone:
			return samples, err
		case <-tick.C:
			s, err := read(d, time.Since(began))
			if err != nil {
				cancel()
				<-churnDone
				return samples, fmt.Errorf("sampling /metrics: %w", err)
			}
			samples = append(samples, s)
			log.Printf("%6s goroutines=%.0f heap_inuse=%.1fMiB rss=%.1fMiB targets=%.0f failed_rounds=%.0f",
				s.at.Round(time.Second), s.goroutines, s.heapInuse/(1<<20), s.rss/(1<<20), s.targets, s.failRounds)
		}
	}
}

// settle waits until the file equals Consul's catalog.
func settle(ctx context.Context, d *adapterproc.Adapter, a *consultest.Agent) error {
	deadline := time.Now().Add(settleTimeout)
	for {
		want, err := consulView(a.Client)
		if err != nil {
			return fmt.Errorf("reading the catalog: %w", err)
		}
		got, ferr := fileView(d.Out)
		if ferr == nil && maps.Equal(got, want) {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			if ferr != nil {
				return fmt.Errorf("the file never matched the catalog: %v", ferr)
			}
			return fmt.Errorf("the file never matched the catalog (%d instances in Consul, %d in the file):\n%s",
				len(want), len(got), diff(got, want))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// check applies the pass criteria.
func check(o options, start sample, samples []sample, end sample) []string {
	var problems []string
	// Rounds fail while a killed leader is being replaced; in a cluster
	// they are reported instead.
	if n := end.failRounds - start.failRounds; n > 0 && !o.cluster {
		problems = append(problems, fmt.Sprintf("%.0f refresh rounds failed during the run", n))
	}
	if n := end.failures - start.failures; n > 0 && !o.cluster {
		problems = append(problems, fmt.Sprintf("%.0f refresh failures counted by reason", n))
	}
	if end.writeFails > 0 {
		problems = append(problems, fmt.Sprintf("%.0f file writes failed", end.writeFails))
	}
	if base := baseline(start, samples); end.goroutines > base+o.goroutineSlack {
		problems = append(problems, fmt.Sprintf("goroutines grew from %.0f to %.0f (slack %.0f)", base, end.goroutines, o.goroutineSlack))
	}
	if len(samples) < 3 {
		problems = append(problems, fmt.Sprintf("only %d samples: run longer than 3 x -sample to judge the heap", len(samples)))
		return problems
	}
	first, last := thirds(samples)
	if last > o.heapGrowth*first {
		problems = append(problems, fmt.Sprintf("heap in use grew: last third averages %.1f MiB, first third %.1f MiB (limit x%.1f)",
			last/(1<<20), first/(1<<20), o.heapGrowth))
	}
	return problems
}

// baseline is the goroutine count to compare the end with: the least of
// the first third of the churn's samples, not the start. Right after the
// first round the client holds fewer connections to Consul (two goroutines
// each) than it settles at; and a sample taken during a round counts its
// per-service queries too.
func baseline(start sample, samples []sample) float64 {
	if len(samples) == 0 {
		return start.goroutines
	}
	least := samples[0].goroutines
	for _, s := range samples[:max(1, len(samples)/3)] {
		least = min(least, s.goroutines)
	}
	return least
}

// quietGoroutines is the least go_goroutines of a few readings over a
// second: a leak stays, a round in flight does not.
func quietGoroutines(d *adapterproc.Adapter) (float64, error) {
	least := -1.0
	for i := range 5 {
		if i > 0 {
			time.Sleep(200 * time.Millisecond)
		}
		s, err := read(d, 0)
		if err != nil {
			return 0, err
		}
		if least < 0 || s.goroutines < least {
			least = s.goroutines
		}
	}
	return least, nil
}

// thirds returns the average heap in use over the first and the last third
// of the samples.
func thirds(samples []sample) (first, last float64) {
	k := len(samples) / 3
	avg := func(s []sample) float64 {
		sum := 0.0
		for _, x := range s {
			sum += x.heapInuse
		}
		return sum / float64(len(s))
	}
	return avg(samples[:k]), avg(samples[len(samples)-k:])
}

func printTable(start sample, samples []sample, end sample, ch *churner) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "t\tgoroutines\theap inuse MiB\tRSS MiB\tCPU s\tConsul reqs\trounds ok\trounds failed\tfile writes\ttargets\t")
	row := func(label string, s sample) {
		fmt.Fprintf(w, "%s\t%.0f\t%.1f\t%.1f\t%.2f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t\n", label, s.goroutines, s.heapInuse/(1<<20),
			s.rss/(1<<20), s.cpu, s.requests, s.okRounds, s.failRounds, s.writes, s.targets)
	}
	row("start", start)
	for _, s := range samples {
		row(s.at.Round(time.Second).String(), s)
	}
	row("end (settled)", end)
	w.Flush()
	// The churn has ended: its counts are safe to read.
	total := 0
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(ch.ops)) {
		total += ch.ops[k]
		parts = append(parts, fmt.Sprintf("%s %d", k, ch.ops[k]))
	}
	fmt.Printf("catalog changes: %d (%s); %d instances at the end\n", total, strings.Join(parts, ", "), len(ch.present))
	if len(samples) >= 3 {
		first, last := thirds(samples)
		fmt.Printf("heap in use: first third %.1f MiB, last third %.1f MiB (x%.2f); goroutines %.0f in the first third -> %.0f at the end\n",
			first/(1<<20), last/(1<<20), last/first, baseline(start, samples), end.goroutines)
	}
}

// leaderKiller kills the cluster's leader every so often and starts it
// again once another server leads.
type leaderKiller struct {
	kills int
	stop  context.CancelFunc
	done  chan error
}

// leaderDown is how long a killed leader stays down.
const leaderDown = 5 * time.Second

// lastKillBeforeEnd keeps kills out of the run's last stretch. A failover
// leaves the adapter with extra connections to the agent (two goroutines
// each) until they idle out, and a kill at the very end (-duration equal
// to -leader-kill) would have the goroutine check count them as a leak.
const lastKillBeforeEnd = 45 * time.Second

// killLeaders kills the leader every so often until the time last.
func killLeaders(ctx context.Context, c *consultest.Cluster, every time.Duration, last time.Time) *leaderKiller {
	ctx, cancel := context.WithCancel(ctx)
	k := &leaderKiller{stop: cancel, done: make(chan error, 1)}
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				k.done <- nil
				return
			case <-t.C:
			}
			if time.Now().After(last) {
				continue
			}
			leader, err := c.Leader()
			if err != nil {
				k.done <- err
				return
			}
			log.Printf("killing the leader %s", leader.Node)
			leader.Kill()
			k.kills++
			if _, err := c.Leader(); err != nil {
				k.done <- fmt.Errorf("no new leader: %w", err)
				return
			}
			time.Sleep(leaderDown)
			if err := leader.Start(); err != nil {
				k.done <- err
				return
			}
		}
	}()
	return k
}

// end stops the killing and returns its first error; the cluster is whole.
func (k *leaderKiller) end() error {
	k.stop()
	return <-k.done
}
