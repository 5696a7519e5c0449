// Package faultproxy is an HTTP reverse proxy for tests that sits between a
// client and a real Consul agent and injects failures per request path:
// error statuses, hanging requests, reset connections, truncated or
// malformed bodies, an index that goes backwards, and delays.
//
// Requests without a fault are forwarded unchanged and streamed as they
// come, so blocking queries work through the proxy. The proxy counts the
// requests and keeps what each carried (Seen): what a client sends, which
// the agent may ignore, can be checked there.
package faultproxy
