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

// The agent is started here rather than with internal/consultest, whose
// Start needs a testing.TB; the flags are the same as consultest's.
const (
	agentStartTimeout = 30 * time.Second
	stopTimeout       = 5 * time.Second
)

// agent is a `consul agent -dev` on loopback.
type agent struct {
	Addr   string
	Client *api.Client
	node   string
	log    string
	cmd    *exec.Cmd
	done   chan struct{}
}

// startAgent starts a dev agent logging into dir and waits until it has a
// leader and its own node in the catalog. A picked port may be taken by
// the time the agent binds it; then it tries again with new ones.
func startAgent(bin, dir string) (*agent, error) {
	var err error
	for range 3 {
		var a *agent
		if a, err = launchAgent(bin, dir); err != nil {
			return nil, err
		}
		if err = a.waitReady(); err == nil {
			return a, nil
		}
		a.stop()
		if !strings.Contains(tail(a.log, 64<<10), "address already in use") {
			break
		}
	}
	return nil, fmt.Errorf("consul agent: %w\nlog tail:\n%s", err, tail(filepath.Join(dir, "consul.log"), 2<<10))
}

func launchAgent(bin, dir string) (*agent, error) {
	ports, err := freePorts(5)
	if err != nil {
		return nil, err
	}
	a := &agent{
		Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])),
		node: fmt.Sprintf("soak-%d", os.Getpid()),
		log:  filepath.Join(dir, "consul.log"),
		done: make(chan struct{}),
	}
	args := []string{
		"agent", "-dev",
		"-node=" + a.node,
		"-bind=127.0.0.1",
		"-client=127.0.0.1",
		"-data-dir=" + filepath.Join(dir, "consul-data"),
		"-http-port=" + strconv.Itoa(ports[0]),
		"-server-port=" + strconv.Itoa(ports[1]),
		"-serf-lan-port=" + strconv.Itoa(ports[2]),
		"-serf-wan-port=" + strconv.Itoa(ports[3]),
		"-grpc-port=" + strconv.Itoa(ports[4]),
		"-grpc-tls-port=-1",
		"-dns-port=-1",
		// Dev agents log every request at debug level: megabytes a minute.
		"-log-level=warn",
	}
	f, err := os.OpenFile(a.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fmt.Fprintf(f, "=== soak: %s %s\n", bin, strings.Join(args, " "))
	a.cmd = exec.Command(bin, args...)
	a.cmd.Stdout, a.cmd.Stderr = f, f
	a.cmd.Env = envWithout("CONSUL_")
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := a.cmd.Start(); err != nil {
		return nil, fmt.Errorf("exec %s: %w", bin, err)
	}
	go func() { a.cmd.Wait(); close(a.done) }() //nolint:errcheck // the exit status is of no interest

	tr := &http.Transport{MaxIdleConnsPerHost: 16, IdleConnTimeout: 90 * time.Second}
	a.Client, err = api.NewClient(&api.Config{Address: a.Addr, HttpClient: &http.Client{Transport: tr, Timeout: 30 * time.Second}})
	if err != nil {
		a.stop()
		return nil, err
	}
	return a, nil
}

func (a *agent) waitReady() error {
	ctx, cancel := context.WithTimeout(context.Background(), agentStartTimeout)
	defer cancel()
	for {
		err := a.ready(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
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
	node, _, err := a.Client.Catalog().Node(a.node, q)
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
	stopProcess(a.cmd, a.done)
}

// stopProcess sends SIGTERM, then SIGKILL after stopTimeout, and waits for
// the exit.
func stopProcess(cmd *exec.Cmd, done <-chan struct{}) {
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(stopTimeout):
		_ = cmd.Process.Kill()
		<-done
	}
}

// freePorts returns n distinct free loopback ports, free for TCP and UDP
// (Serf uses both). They are released before the caller binds them.
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

// envWithout is the environment without the variables starting with prefix,
// so that the machine's own Consul settings cannot leak in.
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
	s := string(b[:k])
	if i := strings.IndexByte(s, '\n'); k == int(n) && i >= 0 {
		s = s[i+1:] // from the first whole line
	}
	return s
}
