package main

import (
	"fmt"
	"maps"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
)

// clusterConverge bounds the wait for a file to reach the truth after a
// fault ends: an election, the client agent finding its servers again, a
// failed round's backoff and a refresh interval.
const clusterConverge = 90 * time.Second

// TestClusterFailover runs both watch modes against a client agent in
// front of three servers, as deployed, through the faults of a real
// cluster: leaders and followers killed during churn, a follower stalled
// while the leader takes writes, a server left alone without a leader, and
// every server gone. Throughout, every version of either file decodes and
// holds the instances that never changed; after each fault both files reach
// the truth. How long that took is logged for each fault.
func TestClusterFailover(t *testing.T) {
	ca, cert, key := consultest.GenerateCerts(t)
	c := consultest.StartCluster(t, consultest.WithHTTPS(ca, cert, key))
	for i := range 4 {
		c.Client.RegisterInstance(t, consultest.Instance{
			Node: fmt.Sprintf("stable-%d", i), NodeAddress: fmt.Sprintf("10.8.0.%d", i+1), Service: "stable", Port: 80,
		})
	}

	dir := t.TempDir()
	common := []string{"--refresh.interval=2s", "--consul.request-timeout=3s"}
	files := map[string]string{"tables": filepath.Join(dir, "tables.json"), "services": filepath.Join(dir, "services.json")}
	daemons := map[string]*daemon{
		"tables": startDaemon(t, nil, append(common, "--listen.address="+c.Client.Addr,
			"--consul.watch-mode=tables", "--output.file="+files["tables"])...),
		"services": startDaemon(t, nil, append(common, "--listen.address=https://"+c.Client.HTTPSAddr, "--consul.ca-file="+ca,
			"--consul.watch-mode=services", "--output.file="+files["services"])...),
	}
	converge := func(what string) time.Duration {
		t.Helper()
		start := time.Now()
		for mode, path := range files {
			waitForClusterTruth(t, c, path, mode+" file after "+what)
		}
		return time.Since(start)
	}
	converge("start")
	guard := guardFiles(t, files, "stable")

	faults := []struct {
		name string
		// fault breaks the cluster and returns what ends the fault.
		fault func(t *testing.T) (recover func())
	}{
		{"leader killed during churn, then restarted", func(t *testing.T) func() {
			leader := clusterLeader(t, c)
			leader.Kill()
			clusterLeader(t, c) // the others elect a new one
			return func() { startAgain(t, leader) }
		}},
		{"leader killed right after a change, during the rounds it wakes", func(t *testing.T) func() {
			leader := clusterLeader(t, c)
			c.Client.RegisterInstance(t, consultest.Instance{Node: "round-node", Service: "round", Port: 81})
			leader.Kill()
			return func() { startAgain(t, leader) }
		}},
		{"follower killed during churn, then restarted", func(t *testing.T) func() {
			f := clusterFollowers(t, c)[0]
			f.Kill()
			return func() { startAgain(t, f) }
		}},
		{"follower stalled (SIGSTOP) while the leader takes writes", func(t *testing.T) func() {
			f := clusterFollowers(t, c)[0]
			f.Pause()
			return f.Resume
		}},
		{"two servers killed: the last one knows no leader", func(t *testing.T) func() {
			fs := clusterFollowers(t, c)
			leader := clusterLeader(t, c)
			fs[0].Kill()
			leader.Kill()
			return func() { startAgain(t, fs[0], leader) }
		}},
		{"every server stopped, the client agent left running", func(t *testing.T) func() {
			for _, s := range c.Servers {
				s.Stop()
			}
			return func() {
				startAgain(t, c.Servers...)
				clusterLeader(t, c)
			}
		}},
	}
	failedBefore := map[string]float64{}
	for mode, d := range daemons {
		failedBefore[mode] = d.failedRounds()
	}
	for _, f := range faults {
		churn := startClusterChurn(c.Client)
		time.Sleep(300 * time.Millisecond) // churn under way when the fault hits
		recover := f.fault(t)
		// Long enough for rounds and watches to run into the fault.
		time.Sleep(3 * time.Second)
		recover()
		churn.end()
		took := converge(f.name)
		t.Logf("%s: both files equal Consul %s after the cluster was whole again (churn: %d writes, %d refused)",
			f.name, took.Round(10*time.Millisecond), churn.writes, churn.refused)
	}
	guard.end()

	for mode, d := range daemons {
		reasons := map[string]float64{}
		for _, r := range failureReasons {
			reasons[r] = d.failures(r)
		}
		t.Logf("%s daemon: failed rounds %v by reason %v; answers without a known leader %v; answers from a server behind, not applied %v", mode,
			d.failedRounds()-failedBefore[mode], reasons, d.metric("consul_sd_adapter_consul_unknown_leader_answers_total"),
			d.metric("consul_sd_adapter_consul_behind_answers_total"))
		if d.failedRounds() == failedBefore[mode] {
			t.Errorf("%s daemon counted no failed round while every server was down", mode)
		}
	}
	noLeader := 0.0
	for _, d := range daemons {
		noLeader += d.failures("no_leader")
	}
	if noLeader < 1 {
		t.Error("no answer without a known leader was counted as a failure, though a server was left alone")
	}
}

func clusterLeader(t *testing.T, c *consultest.Cluster) *consultest.Agent {
	t.Helper()
	l, err := c.Leader()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func clusterFollowers(t *testing.T, c *consultest.Cluster) []*consultest.Agent {
	t.Helper()
	fs, err := c.Followers()
	if err != nil || len(fs) == 0 {
		t.Fatalf("no followers: %v", err)
	}
	return fs
}

func startAgain(t *testing.T, agents ...*consultest.Agent) {
	t.Helper()
	if err := consultest.StartTogether(agents...); err != nil {
		t.Fatal(err)
	}
}

// clusterTruth reads what the file should say through the client agent,
// from the leader; it fails while there is none.
func clusterTruth(c *consultest.Cluster) (catalogView, error) {
	entries, err := consultest.AllEntries(c.Client.Client)
	if err != nil {
		return nil, err
	}
	return viewOf(entries), nil
}

// waitForClusterTruth waits until the file decodes and equals the truth.
func waitForClusterTruth(t *testing.T, c *consultest.Cluster, path, what string) {
	t.Helper()
	deadline := time.Now().Add(clusterConverge)
	for {
		want, werr := clusterTruth(c)
		got, _, err := decodeFile(path)
		if werr == nil && err == nil && maps.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the %s never reached the truth:\nfile (err %v): %v\nConsul (err %v): %v", what, err, got, werr, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fileGuard reads files over and over while faults run, and fails the test
// if a version does not decode or lacks an instance of the stable service.
type fileGuard struct {
	stop    chan struct{}
	stopped sync.Once
	wg      sync.WaitGroup
}

func guardFiles(t *testing.T, files map[string]string, stable string) *fileGuard {
	g := &fileGuard{stop: make(chan struct{})}
	// A test that fails half-way must not leave readers of a removed
	// directory behind: they would report its files as missing.
	t.Cleanup(g.end)
	for mode, path := range files {
		g.wg.Go(func() {
			for {
				select {
				case <-g.stop:
					return
				case <-time.After(5 * time.Millisecond):
				}
				v, _, err := decodeFile(path)
				if err != nil {
					t.Errorf("%s file: %v", mode, err)
					return
				}
				n := 0
				for k := range v {
					if strings.HasPrefix(k, stable+"-") {
						n++
					}
				}
				if n != 4 {
					t.Errorf("%s file lost instances that never changed: %v", mode, v)
					return
				}
			}
		})
	}
	return g
}

func (g *fileGuard) end() {
	g.stopped.Do(func() { close(g.stop) })
	g.wg.Wait()
}

// clusterChurn registers and deregisters instances through the client
// agent until ended; writes the cluster refuses (no leader) are counted.
type clusterChurn struct {
	stop            chan struct{}
	done            chan struct{}
	writes, refused int
}

func startClusterChurn(client *consultest.Agent) *clusterChurn {
	c := &clusterChurn{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		present := map[int]bool{}
		for i := 0; ; i++ {
			select {
			case <-c.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			n := i % 6
			node := fmt.Sprintf("churn-%d", n)
			var err error
			if present[n] {
				_, err = client.Client.Catalog().Deregister(&api.CatalogDeregistration{Node: node}, nil)
			} else {
				_, err = client.Client.Catalog().Register(&api.CatalogRegistration{
					Node: node, Address: fmt.Sprintf("10.9.1.%d", n+1),
					Service: &api.AgentService{ID: "churn", Service: "churn", Port: 80},
				}, nil)
			}
			if err != nil {
				c.refused++
				continue
			}
			present[n] = !present[n]
			c.writes++
		}
	}()
	return c
}

func (c *clusterChurn) end() {
	close(c.stop)
	<-c.done
}
