// Package parity holds the parity test: for the same consul_sd_configs
// entry, against the same real Consul agent, the adapter's file must list
// the targets Prometheus's own Consul SD (run through internal/promconsul)
// discovers, label for label, apart from the adapter's documented
// differences.
package parity
