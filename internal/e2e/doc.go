// Package e2e holds the end-to-end tests: the adapter binary between a real Consul agent and a real Prometheus running the repository's prometheus.yml.
package e2e
