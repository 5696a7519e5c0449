package consulsd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

func TestRetryDelay(t *testing.T) {
	limit := 30 * time.Second
	for failures, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 5: 16 * time.Second, 6: limit, 100: limit} {
		for range 20 {
			got := retryDelay(failures, limit)
			if got > want || got < want*4/5 {
				t.Fatalf("retryDelay(%d) = %v, want within 20%% below %v", failures, got, want)
			}
		}
	}
}

func TestFailureReason(t *testing.T) {
	var syntax json.SyntaxError
	tests := []struct {
		err  error
		want string
	}{
		{context.DeadlineExceeded, reasonTimeout},
		{fmt.Errorf("querying: %w", context.DeadlineExceeded), reasonTimeout},
		{api.StatusError{Code: 500, Body: "boom"}, reasonHTTPStatus},
		{fmt.Errorf("wrapped: %w", api.StatusError{Code: 403}), reasonHTTPStatus},
		{&syntax, reasonDecode},
		{io.ErrUnexpectedEOF, reasonDecode},
		{errors.New("connection refused"), reasonConnection},
		{fmt.Errorf("listing services: %w", errACLFiltered), reasonACL},
	}
	for _, tc := range tests {
		if got := failureReason(tc.err); got != tc.want {
			t.Errorf("failureReason(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestWanted(t *testing.T) {
	tests := []struct {
		name     string
		cfg      Config
		service  string
		tags     []string
		expected bool
	}{
		{"any service by default", Config{}, "web", nil, true},
		{"consul's own service left out by default", Config{}, "consul", nil, false},
		{"consul's own service when allow-listed", Config{Services: []string{"consul"}}, "consul", nil, true},
		{"not on the allow-list", Config{Services: []string{"db"}}, "web", nil, false},
		{"has every required tag", Config{Tags: []string{"a", "b"}}, "web", []string{"b", "a", "c"}, true},
		{"misses a required tag", Config{Tags: []string{"a", "b"}}, "web", []string{"a"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := &Discovery{cfg: tc.cfg}
			if got := d.wanted(tc.service, tc.tags); got != tc.expected {
				t.Errorf("wanted(%q, %v) = %v, want %v", tc.service, tc.tags, got, tc.expected)
			}
		})
	}
}

func TestEndpointOf(t *testing.T) {
	for path, want := range map[string]string{
		"/v1/health/service/web":  "/v1/health/service",
		"/v1/catalog/services":    "/v1/catalog/services",
		"/v1/catalog/service/db":  "/v1/catalog/service",
		"/v1/health/service/a/b/": "/v1/health/service",
	} {
		if got := endpointOf(path); got != want {
			t.Errorf("endpointOf(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestCatalogStateBefore(t *testing.T) {
	base := catalogState{services: 10, nodes: 10, checks: 10}
	tests := []struct {
		s    catalogState
		want bool
	}{
		{base, false},
		{catalogState{services: 11, nodes: 12, checks: 10}, false},
		{catalogState{services: 9, nodes: 12, checks: 12}, true},
		{catalogState{services: 10, nodes: 9, checks: 10}, true},
		{catalogState{services: 10, nodes: 10, checks: 1}, true},
	}
	for _, tc := range tests {
		if got := tc.s.before(base); got != tc.want {
			t.Errorf("%+v.before(%+v) = %v, want %v", tc.s, base, got, tc.want)
		}
	}
}

// TestNotServed: only an answer that says the node dump is not there at
// all turns locating off for good; a token Consul does not know, or a
// server error, fails the round as any other read would.
func TestNotServed(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{api.StatusError{Code: 404, Body: "Not Found"}, true},
		{fmt.Errorf("reading the node dump: %w", api.StatusError{Code: 403, Body: "Forbidden"}), true},
		{api.StatusError{Code: 403, Body: "ACL not found"}, false},
		{api.StatusError{Code: 500, Body: "No cluster leader"}, false},
		{errors.New("connection refused"), false},
		{nil, false},
	} {
		if got := notServed(tc.err); got != tc.want {
			t.Errorf("notServed(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
