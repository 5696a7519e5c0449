package consultest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

const (
	// startTimeout bounds one start, from exec to a usable catalog. A dev
	// agent is ready in about a second; the margin is for loaded CI machines.
	startTimeout = 30 * time.Second
	// stopTimeout is how long Stop waits after SIGTERM before SIGKILL.
	stopTimeout = 5 * time.Second
	// startAttempts bounds retries when a picked port was taken meanwhile.
	startAttempts = 3
)

// nodeSeq makes node names unique among the agents of one test binary; the
// pid separates test binaries running in parallel (go test ./...).
var nodeSeq atomic.Int64

// Agent is a Consul agent running on loopback. Start's is a `consul agent
// -dev` serving one single-server datacenter (dc1) whose state lives in
// memory only; the agents of a Cluster or a Federation keep theirs on disk.
type Agent struct {
	// Addr is the host:port of the HTTP API (of the HTTPS API with
	// WithTLS). It is unchanged by Restart.
	Addr string
	// HTTPSAddr is the host:port of the HTTPS API with WithHTTPS.
	HTTPSAddr string
	// Client talks to the agent. With WithACL it uses the management token.
	Client *api.Client
	// Node is the agent's own node name, unique per agent.
	Node string
	// Datacenter is the agent's datacenter: dc1 but in a Federation.
	Datacenter string

	bin       string
	cfg       config
	dir       string
	logPath   string
	ports     ports
	transport *http.Transport // Client's, so stale connections can be dropped

	// logShown records that a failure message already holds the log
	// tail, so cleanup does not repeat it.
	logShown bool

	mu   sync.Mutex
	proc *process // nil before the first launch
}

// process is one run of the agent binary.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // exit status, valid once done is closed
}

// Start starts a dev agent on free loopback ports and waits until it has
// elected itself leader and its catalog answers. The agent is stopped when
// the test ends. Start fails the test if the agent does not come up; the
// error includes the tail of the agent's log.
func Start(t testing.TB, opts ...Option) *Agent {
	t.Helper()
	a, err := Launch(Binary(t), t.TempDir(), opts...)
	if a != nil {
		// Registered after t.TempDir, so it runs before the log is deleted.
		t.Cleanup(func() {
			a.Stop()
			if t.Failed() && !a.logShown {
				t.Logf("consul agent log tail (%s):\n%s", a.logPath, a.logTail(20))
			}
		})
	}
	if err != nil {
		if a != nil {
			a.logShown = true
		}
		t.Fatal(err)
	}
	return a
}

// Launch is Start for programs that are not tests (make bench, make soak):
// it starts an agent with bin, keeping its log and data in dir, and returns
// it once ready. The caller stops it. On failure the error holds the tail
// of the agent's log, and the returned agent, if any, needs stopping.
func Launch(bin, dir string, opts ...Option) (*Agent, error) {
	a := newAgent(bin, dir, opts...)
	if tc := a.cfg.tls; tc != nil {
		for _, f := range []string{tc.ca, tc.cert, tc.key} {
			if _, err := os.Stat(f); err != nil {
				return nil, fmt.Errorf("consultest.WithTLS: %w", err)
			}
		}
	}

	var err error
	for range startAttempts {
		var offset int64
		if err = a.setup(); err != nil {
			break
		}
		if offset, err = a.launch(); err != nil {
			break
		}
		if err = a.waitReady(); err == nil {
			return a, nil
		}
		a.Kill()
		if !strings.Contains(a.logSince(offset), "address already in use") {
			break
		}
	}
	if !a.launched() { // failed before exec: the log holds nothing
		return nil, fmt.Errorf("starting consul agent: %w", err)
	}
	return a, fmt.Errorf("starting consul agent: %w\nlog tail (%s):\n%s", err, a.logPath, a.logTail(40))
}

// newAgent prepares an agent that keeps its log and data in dir, with a
// node name unique among this process's agents.
func newAgent(bin, dir string, opts ...Option) *Agent {
	a := &Agent{bin: bin, dir: dir, Node: fmt.Sprintf("consultest-%d-%d", os.Getpid(), nodeSeq.Add(1)), Datacenter: "dc1"}
	a.logPath = filepath.Join(dir, "consul.log")
	for _, o := range opts {
		o(&a.cfg)
	}
	return a
}

// setup picks the ports and builds the client for them.
func (a *Agent) setup() error {
	p, err := freePorts()
	if err != nil {
		return err
	}
	a.ports = p
	a.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(p.http))
	if a.cfg.httpsToo {
		a.HTTPSAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(p.https))
	}

	// A private transport, not http.DefaultTransport: Restart drops its
	// idle connections, which point at the dead process.
	a.transport = &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
	}
	var tlsConf api.TLSConfig
	if a.cfg.tls != nil && !a.cfg.httpsToo {
		tlsConf.CAFile = a.cfg.tls.ca
	}
	hc, err := api.NewHttpClient(a.transport, tlsConf)
	if err != nil {
		return err
	}
	a.Client, err = api.NewClient(&api.Config{
		Address:    a.Addr,
		Scheme:     a.scheme(),
		Token:      a.cfg.aclToken,
		HttpClient: hc,
	})
	return err
}

func (a *Agent) scheme() string {
	if a.cfg.tls != nil && !a.cfg.httpsToo {
		return "https"
	}
	return "http"
}

// URL returns the base URL of the HTTP API, e.g. "http://127.0.0.1:8500".
func (a *Agent) URL() string { return a.scheme() + "://" + a.Addr }

// LogPath returns the file the agent logs to; restarts append to it.
func (a *Agent) LogPath() string { return a.logPath }

func (a *Agent) args() []string {
	p := a.ports
	args := []string{"agent"}
	switch a.cfg.role {
	case "":
		args = append(args, "-dev")
	case "server":
		// A real server: raft on disk, elections with production timing
		// (raft_multiplier 1), no UI.
		args = append(args, "-server", "-bootstrap-expect="+strconv.Itoa(a.cfg.servers),
			"-hcl=performance { raft_multiplier = 1 }")
	}
	for _, j := range a.cfg.join {
		args = append(args, "-retry-join="+j, "-retry-interval=1s")
	}
	for _, j := range a.cfg.joinWAN {
		args = append(args, "-retry-join-wan="+j, "-retry-interval-wan=1s")
	}
	args = append(args,
		"-datacenter="+a.Datacenter,
		"-node="+a.Node,
		"-bind=127.0.0.1",
		"-client=127.0.0.1",
		// Dev mode keeps raft in memory; the data dir only keeps the agent
		// from creating one under /tmp that a SIGKILL would leak. Servers
		// and clients of a cluster keep their state there.
		"-data-dir="+filepath.Join(a.dir, "data"),
		"-server-port="+strconv.Itoa(p.server),
		"-serf-lan-port="+strconv.Itoa(p.serfLAN),
		"-serf-wan-port="+strconv.Itoa(p.serfWAN),
		"-grpc-port="+strconv.Itoa(p.grpc),
		// Unused listeners are disabled rather than given ports: fewer
		// ports, fewer collisions between parallel agents.
		"-grpc-tls-port=-1",
		"-dns-port=-1",
	)
	switch {
	case a.cfg.httpsToo:
		args = append(args, "-http-port="+strconv.Itoa(p.http), "-https-port="+strconv.Itoa(p.https))
	case a.cfg.tls != nil:
		args = append(args, "-http-port=-1", "-https-port="+strconv.Itoa(p.http))
	default:
		args = append(args, "-http-port="+strconv.Itoa(p.http))
	}
	for _, h := range a.cfg.hcl() {
		args = append(args, "-hcl="+h)
	}
	return args
}

// launch starts the agent process and returns the log offset it starts
// logging at.
func (a *Agent) launch() (int64, error) {
	f, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	// The child gets its own copy of the descriptor.
	defer f.Close()
	var offset int64
	if fi, err := f.Stat(); err == nil {
		offset = fi.Size()
	}
	args := a.args()
	fmt.Fprintf(f, "=== consultest: %s %s\n", a.bin, strings.Join(args, " "))

	cmd := exec.Command(a.bin, args...)
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.Env = Env()
	setSysProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		return offset, fmt.Errorf("exec %s: %w", a.bin, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	a.mu.Lock()
	a.proc = p
	a.mu.Unlock()
	return offset, nil
}

// launched reports whether the agent process was ever started.
func (a *Agent) launched() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.proc != nil
}

// Env is this process's environment without CONSUL_* variables, for child
// processes (the agent, the adapter) that a developer's own Consul settings
// must not reach.
func Env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONSUL_") {
			env = append(env, kv)
		}
	}
	return env
}

// waitReady polls until the agent is usable, it exits, or startTimeout.
func (a *Agent) waitReady() error {
	a.mu.Lock()
	p := a.proc
	a.mu.Unlock()
	deadline := time.Now().Add(startTimeout)
	for {
		err := a.ready()
		if err == nil {
			// Connections from polls of a previous process are dead.
			a.transport.CloseIdleConnections()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent at %s not ready after %s: %w", a.Addr, startTimeout, err)
		}
		select {
		case <-p.done:
			return fmt.Errorf("agent exited before it was ready: %v", p.err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ready reports why the agent is not usable yet, or nil.
func (a *Agent) ready() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	q := (&api.QueryOptions{}).WithContext(ctx)
	leader, err := a.Client.Status().LeaderWithQueryOptions(q)
	if err != nil {
		return err
	}
	if leader == "" {
		return errors.New("no leader elected yet")
	}
	// The agent's own node shows up once the leader has set up ACLs (the
	// management token works from then on) and the agent has synced itself
	// into the catalog: from then on, catalog writes and reads succeed.
	node, _, err := a.Client.Catalog().Node(a.Node, q)
	if err != nil {
		return err
	}
	if node == nil || node.Node == nil {
		return errors.New("agent's node not in the catalog yet")
	}
	// The leader registers a new member's node first; the agent's own
	// sync then writes its tagged addresses. Until it has, that write is
	// still to come and would move the catalog's indexes under a test that
	// counts on them staying still.
	if len(node.Node.TaggedAddresses) == 0 {
		return errors.New("agent has not synced its node info yet")
	}
	return nil
}

// Stop stops the agent gracefully (SIGTERM, then SIGKILL after a few
// seconds) and waits for it to exit. Stopping a stopped agent does nothing.
func (a *Agent) Stop() {
	a.stop(syscall.SIGTERM)
}

// Kill stops the agent abruptly with SIGKILL and waits for it to exit, for
// tests of an agent that vanishes without closing connections cleanly.
func (a *Agent) Kill() {
	a.stop(syscall.SIGKILL)
}

// Pid returns the process ID of the running agent, 0 if none runs.
func (a *Agent) Pid() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.proc == nil {
		return 0
	}
	return a.proc.cmd.Process.Pid
}

func (a *Agent) stop(sig syscall.Signal) {
	a.mu.Lock()
	p := a.proc
	a.mu.Unlock()
	if p == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	// A paused agent handles the signal only once continued.
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	a.transport.CloseIdleConnections()
}

// Restart stops the agent if it runs and starts it again on the same ports,
// waiting until it is ready. Dev agents keep no state: the catalog comes
// back empty except for the agent's own node.
func (a *Agent) Restart(t testing.TB) {
	t.Helper()
	a.Stop()
	offset, err := a.launch()
	if err == nil {
		err = a.waitReady()
	}
	if err != nil {
		a.Kill()
		a.logShown = true
		t.Fatalf("restarting consul agent: %v\nlog tail (%s):\n%s", err, a.logPath, a.logTailSince(offset, 40))
	}
}
