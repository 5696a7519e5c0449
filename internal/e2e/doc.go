// Package e2e holds the end-to-end tests: the adapter binary between a real Consul agent and a real Prometheus running the repository's prometheus.yml, its http_sd variant, or the sharded http_sd jobs the README describes.
package e2e
