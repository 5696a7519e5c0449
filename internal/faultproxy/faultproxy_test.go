package faultproxy_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/faultproxy"
)

const (
	token    = "5f1c2d3e-0000-4000-8000-00000000f00d"
	webPath  = "/v1/health/service/web"
	waitLong = 10 * time.Second
)

// agentAndProxy starts an ACL-enabled agent with one "web" instance, so
// that every test also shows X-Consul-Token passing through the proxy.
func agentAndProxy(t *testing.T) (*consultest.Agent, *faultproxy.Proxy) {
	t.Helper()
	a := consultest.Start(t, consultest.WithACL(token))
	a.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "web", Port: 80})
	return a, faultproxy.Start(t, a.Addr)
}

// newClient returns a client of addr with its own connections: a reused
// connection would make net/http retry some failed requests by itself and
// blur the request counts.
func newClient(t *testing.T, addr, tok string) *api.Client {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	c, err := api.NewClient(&api.Config{Address: addr, Token: tok, HttpClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func webHealth(ctx context.Context, c *api.Client, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	if q == nil {
		q = &api.QueryOptions{}
	}
	return c.Health().Service("web", "", false, q.WithContext(ctx))
}

func TestFaults(t *testing.T) {
	t.Parallel()
	_, p := agentAndProxy(t)

	tests := []struct {
		fault   faultproxy.Fault
		timeout time.Duration // how long the client waits; default waitLong
		wantErr string        // part of the expected error; "" means success
		check   func(t *testing.T, entries []*api.ServiceEntry, meta *api.QueryMeta, took time.Duration)
	}{
		{fault: faultproxy.Fault{}, check: func(t *testing.T, e []*api.ServiceEntry, m *api.QueryMeta, _ time.Duration) {
			if len(e) != 1 || e[0].Service.Port != 80 {
				t.Errorf("entries = %v, want the one web instance", e)
			}
			if m.LastIndex <= 1 {
				t.Errorf("LastIndex = %d, want the agent's real index", m.LastIndex)
			}
		}},
		{fault: faultproxy.Status500, wantErr: "500 (No cluster leader)"},
		{fault: faultproxy.Status403, wantErr: "403 (Permission denied"},
		{fault: faultproxy.ACLNotFound, wantErr: "403 (ACL not found)"},
		{fault: faultproxy.Status429, wantErr: "429"},
		{fault: faultproxy.Status503, wantErr: "503"},
		{fault: faultproxy.Reset, wantErr: "connection reset by peer"},
		{fault: faultproxy.Truncate, wantErr: "unexpected EOF"},
		{fault: faultproxy.BadJSON, wantErr: "invalid character"},
		{fault: faultproxy.Hang, timeout: 300 * time.Millisecond, wantErr: context.DeadlineExceeded.Error()},
		{fault: faultproxy.IndexBackwards, check: func(t *testing.T, e []*api.ServiceEntry, m *api.QueryMeta, _ time.Duration) {
			if m.LastIndex != 1 {
				t.Errorf("LastIndex = %d, want 1", m.LastIndex)
			}
			if len(e) != 1 {
				t.Errorf("got %d entries, want the body unchanged (1 entry)", len(e))
			}
		}},
		{fault: faultproxy.Delay(200 * time.Millisecond), check: func(t *testing.T, e []*api.ServiceEntry, _ *api.QueryMeta, took time.Duration) {
			if took < 200*time.Millisecond {
				t.Errorf("answered after %s, want at least 200ms", took)
			}
			if len(e) != 1 {
				t.Errorf("got %d entries, want 1", len(e))
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.fault.String(), func(t *testing.T) {
			p.Set(webPath, tc.fault)
			defer p.Clear(webPath)
			timeout := tc.timeout
			if timeout == 0 {
				timeout = waitLong
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			before, total := p.Requests(webPath), p.TotalRequests()

			start := time.Now()
			entries, meta, err := webHealth(ctx, newClient(t, p.Addr, token), nil)
			took := time.Since(start)

			if tc.wantErr == "" && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
			}
			if tc.check != nil {
				tc.check(t, entries, meta, took)
			}
			if got := p.Requests(webPath) - before; got != 1 {
				t.Errorf("Requests(%s) grew by %d, want 1", webPath, got)
			}
			if got := p.TotalRequests() - total; got != 1 {
				t.Errorf("TotalRequests grew by %d, want 1", got)
			}
		})
	}
}

func TestPathMatching(t *testing.T) {
	t.Parallel()
	a, p := agentAndProxy(t)
	a.RegisterInstance(t, consultest.Instance{Node: "n1", Service: "db"})
	c := newClient(t, p.Addr, token)
	ctx := context.Background()

	healthOK := func(service string) bool {
		_, _, err := c.Health().Service(service, "", false, (&api.QueryOptions{}).WithContext(ctx))
		return err == nil
	}
	catalogOK := func() bool {
		_, _, err := c.Catalog().Services(nil)
		return err == nil
	}

	p.Set("/v1/health/*", faultproxy.Status500)
	p.Set("/v1/health/service/w*", faultproxy.Fault{}) // longer prefix wins
	p.Set(webPath, faultproxy.Status503)               // exact wins
	steps := []struct {
		name           string
		do             func()
		web, db, catlg bool // whether each request succeeds
	}{
		{"exact, prefix, longer prefix", func() {}, false, false, true},
		{"Clear exact", func() { p.Clear(webPath) }, true, false, true},
		{"Clear longer prefix", func() { p.Clear("/v1/health/service/w*") }, false, false, true},
		{"ClearAll", p.ClearAll, true, true, true},
	}
	for _, s := range steps {
		s.do()
		if got := healthOK("web"); got != s.web {
			t.Errorf("%s: web ok = %v, want %v", s.name, got, s.web)
		}
		if got := healthOK("db"); got != s.db {
			t.Errorf("%s: db ok = %v, want %v", s.name, got, s.db)
		}
		if got := catalogOK(); got != s.catlg {
			t.Errorf("%s: catalog ok = %v, want %v", s.name, got, s.catlg)
		}
	}
	if got, want := p.Requests(webPath), len(steps); got != want {
		t.Errorf("Requests(web) = %d, want %d", got, want)
	}
	if got, want := p.Requests("/v1/catalog/services"), len(steps); got != want {
		t.Errorf("Requests(catalog) = %d, want %d", got, want)
	}
	if got, want := p.TotalRequests(), 3*len(steps); got != want {
		t.Errorf("TotalRequests = %d, want %d", got, want)
	}
}

func TestPassThrough(t *testing.T) {
	t.Parallel()
	a, p := agentAndProxy(t)
	c := newClient(t, p.Addr, token)

	// The token is forwarded: without it the agent refuses writes.
	if _, err := newClient(t, p.Addr, "").Catalog().Register(&api.CatalogRegistration{Node: "x", Address: "127.0.0.1"}, nil); err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Errorf("anonymous write through the proxy: error %v, want Permission denied", err)
	}

	// A blocking query waits at the agent and comes back through the
	// proxy as soon as the service changes.
	_, meta, err := webHealth(context.Background(), c, nil)
	if err != nil {
		t.Fatal(err)
	}
	registered := make(chan error, 1)
	go func() {
		time.Sleep(200 * time.Millisecond)
		// Not a.RegisterInstance: t.Fatal must not run off the test goroutine.
		_, err := a.Client.Catalog().Register(&api.CatalogRegistration{
			Node: "n2", Address: "127.0.0.1", Service: &api.AgentService{Service: "web"},
		}, nil)
		registered <- err
	}()
	start := time.Now()
	entries, meta2, err := webHealth(context.Background(), c, &api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: waitLong})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-registered; err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 150*time.Millisecond || took > waitLong/2 {
		t.Errorf("blocking query returned after %s, want about 200ms", took)
	}
	if len(entries) != 2 || meta2.LastIndex <= meta.LastIndex {
		t.Errorf("after the change: %d entries at index %d, want 2 at an index above %d", len(entries), meta2.LastIndex, meta.LastIndex)
	}
}

// TestCloseReleasesRequests checks that Close ends held requests and
// blocking queries at once instead of waiting for them, so that test
// cleanup neither hangs nor leaks goroutines.
func TestCloseReleasesRequests(t *testing.T) {
	t.Parallel()
	_, p := agentAndProxy(t)
	c := newClient(t, p.Addr, token)
	_, meta, err := webHealth(context.Background(), c, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.Set("/v1/health/service/held", faultproxy.Hang)

	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, q := range []func() error{
		func() error {
			_, _, err := c.Health().Service("held", "", false, nil)
			return err
		},
		func() error {
			_, _, err := webHealth(context.Background(), c, &api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: time.Minute})
			return err
		},
	} {
		wg.Go(func() { errs <- q() })
	}
	// Wait until both requests are at the proxy.
	for deadline := time.Now().Add(waitLong); p.TotalRequests() < 3; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("requests did not reach the proxy")
		}
	}
	time.Sleep(100 * time.Millisecond) // let the blocking query reach the agent

	start := time.Now()
	p.Close()
	wg.Wait()
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Close and the requests took %s, want them released at once", took)
	}
	close(errs)
	for err := range errs {
		if err == nil {
			t.Error("a request released by Close succeeded, want an error")
		}
	}
	p.Close() // twice is fine
	if _, _, err := webHealth(context.Background(), c, nil); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("request after Close: %v, want connection refused", err)
	}
}

// TestSeen checks that the proxy keeps what each request carried, as sent,
// also when DropQuery takes parameters off before the agent sees them.
func TestSeen(t *testing.T) {
	t.Parallel()
	_, p := agentAndProxy(t)
	c, err := api.NewClient(&api.Config{Address: p.Addr, Token: token, Namespace: "team-a"})
	if err != nil {
		t.Fatal(err)
	}
	query := func() error {
		_, _, err := c.Health().Service("web", "", false, &api.QueryOptions{AllowStale: true})
		return err
	}
	// The OSS agent refuses a namespace: what DropQuery is for.
	if err := query(); err == nil || !strings.Contains(err.Error(), "Namespaces are a Consul Enterprise feature") {
		t.Errorf("query with a namespace, no fault: %v, want the agent's 400", err)
	}
	p.Set(webPath, faultproxy.DropQuery("ns"))
	if err := query(); err != nil {
		t.Errorf("query with a namespace, DropQuery(ns): %v", err)
	}

	seen := p.Seen()
	if len(seen) != 2 {
		t.Fatalf("Seen() holds %d requests, want 2: %+v", len(seen), seen)
	}
	for i, r := range seen {
		if r.Method != http.MethodGet || r.Path != webPath || !strings.HasPrefix(r.URI, webPath+"?") || r.Host != p.Addr || r.Proto != "HTTP/1.1" {
			t.Errorf("request %d: %s %s (path %s) to %s over %s", i, r.Method, r.URI, r.Path, r.Host, r.Proto)
		}
		if r.Query.Get("ns") != "team-a" || !r.Query.Has("stale") {
			t.Errorf("request %d: query %v, want ns=team-a and stale as sent", i, r.Query)
		}
		if got := r.Header.Get("X-Consul-Token"); got != token {
			t.Errorf("request %d: X-Consul-Token %q, want %q", i, got, token)
		}
	}
}

// TestSeenIsBounded checks that Seen keeps only the last MaxSeen requests.
func TestSeenIsBounded(t *testing.T) {
	t.Parallel()
	// No agent needed: a status fault answers at the proxy.
	p := faultproxy.Start(t, "127.0.0.1:1")
	p.Set("/x", faultproxy.Status500)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}
	const n = faultproxy.MaxSeen + 3
	for i := range n {
		resp, err := client.Get(fmt.Sprintf("%s/x?i=%d", p.URL, i))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	seen := p.Seen()
	if len(seen) != faultproxy.MaxSeen {
		t.Fatalf("Seen() holds %d requests, want %d", len(seen), faultproxy.MaxSeen)
	}
	for i, r := range seen {
		if want := strconv.Itoa(n - faultproxy.MaxSeen + i); r.Query.Get("i") != want {
			t.Fatalf("Seen()[%d] is request %s, want %s: oldest first", i, r.Query.Get("i"), want)
		}
	}
}
