package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
)

// consulRead is one kind of request an observer makes, and who makes it.
type consulRead struct {
	what, path string
}

// readCost is what one request of a kind costs the agent, averaged over
// many: its CPU (utime+stime), the wall time of the answer and its size.
type readCost struct {
	consulRead
	Reps  int
	CPU   time.Duration // per read
	Wall  time.Duration // per read
	Bytes int64
}

// readBudget is how long a batch of one kind of read runs: long enough
// that the agent's CPU, counted in 10 ms ticks, is measured to about 1 %.
const readBudget = 2 * time.Second

// consulReads are the reads the observers of the churn make, each with the
// filter or name it goes with. The filters and the service nobody
// registers are copies of package consulsd's (matchNothing, notPassing,
// noSuchService), which does not export them; the catalog filter is the
// configuration file's first entry's.
func consulReads(service string) []consulRead {
	q := func(filter string) string { return "?filter=" + url.QueryEscape(filter) }
	const nothing = `Node == "consul-sd-adapter/no-such-node"`
	const notPassing = `Status != "passing" or CheckID == "_node_maintenance" or CheckID matches "^_service_maintenance:"`
	return []consulRead{
		{"service list (tables watch: services table, each round; per-service watch and built-in SD: new services)", "/v1/catalog/services"},
		{"service list with a configuration file entry's filter", "/v1/catalog/services" + q(splitFilters(churnEntries)[0])},
		{"one service's instances (every observer, per service a change touches)", "/v1/health/service/" + service},
		{"nodes table index (tables watch, each round)", "/v1/catalog/nodes" + q(nothing)},
		{"checks table index, blocking (tables watch)", "/v1/health/state/any" + q(nothing)},
		{"checks table index (each round of the tables watch)", "/v1/health/checks/consul-sd-adapter-no-such-service"},
		{"checks that are not passing (a health round of the tables watch)", "/v1/health/state/any" + q(notPassing)},
		{"node dump: every instance and check with its ModifyIndex (a located round of the tables watch)", "/v1/internal/ui/nodes"},
		{"every check (for comparison: no instance ModifyIndex)", "/v1/health/state/any"},
		{"service summaries (for comparison: counts, no ModifyIndex)", "/v1/internal/ui/services"},
	}
}

// measureReads times each read against the agent's plain HTTP API, one
// request at a time on a quiet catalog, uncompressed as the adapter asks.
func measureReads(ctx context.Context, a *consultest.Agent, service string) ([]readCost, error) {
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()
	var costs []readCost
	for _, r := range consulReads(service) {
		c := readCost{consulRead: r}
		cpu0, start := processCPU(a.Pid()), time.Now()
		for c.Reps < 3 || time.Since(start) < readBudget {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.Addr+r.path, nil)
			if err != nil {
				return nil, err
			}
			resp, err := client.Do(req)
			if err != nil {
				return nil, err
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("%s: %s", r.path, resp.Status)
			}
			if err != nil {
				return nil, err
			}
			c.Bytes = n
			c.Reps++
		}
		c.Wall = time.Since(start) / time.Duration(c.Reps)
		c.CPU = (processCPU(a.Pid()) - cpu0) / time.Duration(c.Reps)
		costs = append(costs, c)
	}
	return costs, nil
}

// readsTable renders the costs of one catalog size, and what the CPU
// target leaves for each change: at one change a second, Consul's CPU
// within targetChurnCPU × quiet leaves (targetChurnCPU-1) × quiet a second
// for the write itself and every read it causes.
func readsTable(costs []readCost, quietCPUPerMin float64) string {
	var b strings.Builder
	b.WriteString("What one read costs the agent, on the quiet catalog before the observers start (one request at a time over plain HTTP, uncompressed, as many as fit in 2 s; Consul CPU is the agent's utime+stime over them):\n\n")
	b.WriteString("| Read | Request | Consul CPU per read | Wall per read | Answer |\n|---|---|---|---|---|\n")
	for _, c := range costs {
		fmt.Fprintf(&b, "| %s | `%s` | %s | %s | %s |\n", c.what, c.path, millis(c.CPU), millis(c.Wall), kb(c.Bytes))
	}
	if quietCPUPerMin > 0 {
		budget := time.Duration((targetChurnCPU - 1) * quietCPUPerMin / 60 * float64(time.Second))
		fmt.Fprintf(&b, "\nThe agent's quiet CPU here is %.2f s/min (the median of the observers' quiet windows). At one change a second, Consul CPU within %g× quiet leaves %s of agent CPU per change, for the change's own write and every read it causes.\n", quietCPUPerMin, targetChurnCPU, millis(budget))
	}
	return b.String()
}

func kb(n int64) string {
	if n < 10_000 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%s KB", thousands(int(n/1000)))
}
