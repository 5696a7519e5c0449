package main

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
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
)

// The agent is started here rather than with consultest.Start: the built-in
// SD holds one blocking query (one connection) per service, and Consul's
// default limit of 200 connections per client IP would answer it with 429s
// at 2,000 services. consultest has no option for that limit; the flags are
// otherwise the same as consultest's.
const (
	agentStartTimeout = 30 * time.Second
	agentStopTimeout  = 5 * time.Second
	// maxConnsPerClient is raised above Consul's default of 200, as an
	// operator running Prometheus against a large catalog has to.
	maxConnsPerClient = 8192
)

// agent is a `consul agent -dev` on loopback.
type agent struct {
	Addr   string
	Client *api.Client
	Node   string
	Log    string

	cmd  *exec.Cmd
	done chan struct{}
}

// startAgent starts a dev agent in a fresh directory under dir and waits
// until it has a leader and its own node in the catalog.
func startAgent(ctx context.Context, bin, dir, name string) (*agent, error) {
	var lastErr error
	for range 3 { // a picked port may be taken in between
		a, err := launchAgent(bin, dir, name)
		if err != nil {
			return nil, err
		}
		if lastErr = a.waitReady(ctx); lastErr == nil {
			return a, nil
		}
		a.stop()
		if !strings.Contains(tail(a.Log, 64<<10), "address already in use") {
			break
		}
	}
	return nil, fmt.Errorf("consul agent %s: %w\nlog tail:\n%s", name, lastErr, tail(filepath.Join(dir, name+".log"), 2<<10))
}

func launchAgent(bin, dir, name string) (*agent, error) {
	ports, err := freePorts(5)
	if err != nil {
		return nil, err
	}
	a := &agent{
		Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])),
		Node: name,
		Log:  filepath.Join(dir, name+".log"),
		done: make(chan struct{}),
	}
	args := []string{
		"agent", "-dev",
		"-node=" + name,
		"-bind=127.0.0.1",
		"-client=127.0.0.1",
		"-data-dir=" + filepath.Join(dir, name+"-data"),
		"-http-port=" + strconv.Itoa(ports[0]),
		"-server-port=" + strconv.Itoa(ports[1]),
		"-serf-lan-port=" + strconv.Itoa(ports[2]),
		"-serf-wan-port=" + strconv.Itoa(ports[3]),
		"-grpc-port=" + strconv.Itoa(ports[4]),
		"-grpc-tls-port=-1",
		"-dns-port=-1",
		// Dev mode logs every request at debug level; production agents
		// log at info, and the log would otherwise cost the agent CPU that
		// the adapter is charged for in wall time.
		"-log-level=info",
		fmt.Sprintf("-hcl=limits { http_max_conns_per_client = %d }", maxConnsPerClient),
	}
	f, err := os.OpenFile(a.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fmt.Fprintf(f, "=== bench: %s %s\n", bin, strings.Join(args, " "))
	a.cmd = exec.Command(bin, args...)
	a.cmd.Stdout, a.cmd.Stderr = f, f
	a.cmd.Env = envWithout("CONSUL_")
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := a.cmd.Start(); err != nil {
		return nil, fmt.Errorf("exec %s: %w", bin, err)
	}
	go func() { a.cmd.Wait(); close(a.done) }() //nolint:errcheck // exit status is of no interest

	tr := &http.Transport{MaxIdleConnsPerHost: 128, IdleConnTimeout: 90 * time.Second}
	a.Client, err = api.NewClient(&api.Config{Address: a.Addr, HttpClient: &http.Client{Transport: tr}})
	if err != nil {
		a.stop()
		return nil, err
	}
	return a, nil
}

func (a *agent) waitReady(parent context.Context) error {
	ctx, cancel := context.WithTimeout(parent, agentStartTimeout)
	defer cancel()
	for {
		err := a.ready(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			if parent.Err() != nil {
				return parent.Err()
			}
			return fmt.Errorf("not ready after %s: %w", agentStartTimeout, err)
		case <-a.done:
			return errors.New("agent exited before it was ready")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (a *agent) ready(ctx context.Context) error {
	q := (&api.QueryOptions{}).WithContext(ctx)
	leader, err := a.Client.Status().LeaderWithQueryOptions(q)
	if err != nil {
		return err
	}
	if leader == "" {
		return errors.New("no leader yet")
	}
	node, _, err := a.Client.Catalog().Node(a.Node, q)
	if err != nil {
		return err
	}
	if node == nil || node.Node == nil {
		return errors.New("own node not in the catalog yet")
	}
	return nil
}

// stop ends the agent: SIGTERM, SIGKILL after a few seconds.
func (a *agent) stop() {
	select {
	case <-a.done:
		return
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(agentStopTimeout):
		_ = a.cmd.Process.Kill()
		<-a.done
	}
}

// freePorts returns n distinct free loopback ports, TCP and UDP (Serf uses
// both). They are released before the caller binds them, so another process
// may take one meanwhile; startAgent retries then.
func freePorts(n int) ([]int, error) {
	var held []interface{ Close() error }
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		if tries > 20*n {
			return nil, errors.New("no free loopback ports")
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		held = append(held, l)
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		held = append(held, u)
		ports = append(ports, port)
	}
	return ports, nil
}

// envWithout is the environment without variables starting with prefix.
func envWithout(prefix string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, prefix) {
			env = append(env, kv)
		}
	}
	return env
}

// tail returns up to the last n bytes of a file.
func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		f.Seek(fi.Size()-n, 0) //nolint:errcheck // best effort
	}
	b := make([]byte, n)
	k, _ := f.Read(b)
	return string(b[:k])
}
