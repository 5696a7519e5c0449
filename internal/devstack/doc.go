// Package devstack holds only the tests of the dev stack: docker-compose.yml, Dockerfile, prometheus.yml and consul.json.
package devstack
