// Package consultest starts a real Consul agent (`consul agent -dev`) for
// integration tests and offers helpers to fill its catalog.
//
// The agent binary is built once per Consul version by tools/consul/build.sh
// (`make consul`); tests fail, rather than skip, when it is missing, so that a
// green run always means the integration tests really ran.
//
// A single dev agent can stand in for a whole cluster: RegisterInstance writes
// through the catalog API, so any number of fake nodes with their own
// metadata, addresses and health can be created without running more agents.
// What one agent cannot stand in for takes several: StartCluster runs a
// datacenter as it is deployed (three servers and a client agent),
// StartFederation two datacenters federated over the WAN.
package consultest
