package consultest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// clusterServers is the number of servers in a Cluster, as in a small
// production datacenter: it survives the loss of one.
const clusterServers = 3

// Cluster is a datacenter as it is deployed: three servers that elect a
// leader and replicate through raft on disk, and a client agent in front of
// them, which is what the adapter talks to. Every process runs on loopback
// from the same binary.
type Cluster struct {
	Servers []*Agent
	// Client is the client agent; Options given to StartCluster apply to
	// it (WithHTTPS, WithHCL).
	Client *Agent
}

// StartCluster starts a cluster and waits until it has a leader and every
// agent is in the catalog. It is stopped when the test ends.
func StartCluster(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	c, err := LaunchCluster(Binary(t), t.TempDir(), opts...)
	if c != nil {
		stopAtEnd(t, c.agents())
	}
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// stopAtEnd stops the agents when the test ends and, if it failed, shows
// the tail of each one's log.
func stopAtEnd(t testing.TB, agents []*Agent) {
	// Registered after t.TempDir, so it runs before the logs are deleted.
	t.Cleanup(func() {
		for _, a := range agents {
			a.Stop()
			if t.Failed() {
				t.Logf("%s log tail (%s):\n%s", a.Node, a.logPath, a.logTail(15))
			}
		}
	})
}

// LaunchCluster is StartCluster for programs that are not tests (make
// soak): the caller stops the cluster.
func LaunchCluster(bin, dir string, opts ...Option) (*Cluster, error) {
	c := &Cluster{}
	var join []string
	for i := range clusterServers {
		a, err := clusterAgent(bin, filepath.Join(dir, fmt.Sprintf("server-%d", i)))
		if err != nil {
			return nil, err
		}
		a.cfg.role, a.cfg.servers = "server", clusterServers
		c.Servers = append(c.Servers, a)
		join = append(join, net.JoinHostPort("127.0.0.1", strconv.Itoa(a.ports.serfLAN)))
	}
	client, err := clusterAgent(bin, filepath.Join(dir, "client"), opts...)
	if err != nil {
		return nil, err
	}
	client.cfg.role = "client"
	c.Client = client
	for _, a := range c.agents() {
		a.cfg.join = join
	}
	return c, launchAll(c.agents())
}

// launchAll starts every agent before waiting for any: each one's
// readiness may hang on the others (a server alone elects no leader). On
// failure it stops them all.
func launchAll(agents []*Agent) error {
	for _, a := range agents {
		if _, err := a.launch(); err != nil {
			stopAll(agents)
			return err
		}
	}
	for _, a := range agents {
		if err := a.waitReady(); err != nil {
			stopAll(agents)
			return fmt.Errorf("agent %s: %w\nlog tail (%s):\n%s", a.Node, err, a.logPath, a.logTail(30))
		}
	}
	return nil
}

func stopAll(agents []*Agent) {
	for _, a := range agents {
		a.Stop()
	}
}

// clusterAgent prepares an agent of the cluster in its own directory,
// with its ports picked.
func clusterAgent(bin, dir string, opts ...Option) (*Agent, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	a := newAgent(bin, dir, opts...)
	return a, a.setup()
}

func (c *Cluster) agents() []*Agent { return append(append([]*Agent{}, c.Servers...), c.Client) }

// Stop stops every agent of the cluster.
func (c *Cluster) Stop() { stopAll(c.agents()) }

// Leader returns the server that leads now, as the running servers see it;
// it waits up to a start timeout for an election to end.
func (c *Cluster) Leader() (*Agent, error) {
	deadline := time.Now().Add(startTimeout)
	for {
		for _, s := range c.Servers {
			if s.Pid() == 0 || !s.running() {
				continue
			}
			addr, err := s.Client.Status().Leader()
			if err != nil || addr == "" {
				continue
			}
			for _, l := range c.Servers {
				// Followers name a killed leader until they notice.
				if net.JoinHostPort("127.0.0.1", strconv.Itoa(l.ports.server)) == addr && l.running() {
					return l, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return nil, errors.New("no leader elected")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Followers returns the running servers that do not lead.
func (c *Cluster) Followers() ([]*Agent, error) {
	leader, err := c.Leader()
	if err != nil {
		return nil, err
	}
	var out []*Agent
	for _, s := range c.Servers {
		if s != leader && s.running() {
			out = append(out, s)
		}
	}
	return out, nil
}

// running reports whether the agent's process runs (stopped by Pause
// counts as running).
func (a *Agent) running() bool {
	a.mu.Lock()
	p := a.proc
	a.mu.Unlock()
	if p == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Pause stops the agent's process with SIGSTOP: it holds its connections
// and answers nothing, as a server stalled by its disk or a long GC.
func (a *Agent) Pause() { a.signal(syscall.SIGSTOP) }

// Resume continues a paused agent with SIGCONT.
func (a *Agent) Resume() { a.signal(syscall.SIGCONT) }

func (a *Agent) signal(sig syscall.Signal) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.proc != nil {
		_ = a.proc.cmd.Process.Signal(sig)
	}
}

// Start starts an agent that was stopped or killed again, on the same
// ports and with the same data, and waits until it is ready.
func (a *Agent) Start() error {
	if a.running() {
		return errors.New("agent already runs")
	}
	offset, err := a.launch()
	if err == nil {
		err = a.waitReady()
	}
	if err != nil {
		return fmt.Errorf("starting %s again: %w\nlog tail (%s):\n%s", a.Node, err, a.logPath, a.logTailSince(offset, 30))
	}
	return nil
}

// StartTogether starts stopped servers at the same time, as an operator
// brings a cluster back, and waits until each is ready. Started one after
// the other, a server that needs the others' votes could wait on a peer
// that is still down: Raft may refuse its pre-vote for a stale log while
// the server with the newer log cannot reach it yet.
func StartTogether(agents ...*Agent) error {
	errs := make([]error, len(agents))
	var wg sync.WaitGroup
	for i, a := range agents {
		wg.Go(func() { errs[i] = a.Start() })
	}
	wg.Wait()
	return errors.Join(errs...)
}
