# Every target sets up what it needs on a fresh machine (Go modules, the
# Consul agent built from tools/consul, Debian's prometheus package, and
# for make test Debian's chromium).

GO          ?= go
BINARY      := consul-sd-adapter
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION    ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
VERSION_PKG := github.com/prometheus/common/version
LDFLAGS     := -X $(VERSION_PKG).Version=$(VERSION) -X $(VERSION_PKG).Revision=$(REVISION) \
               -X $(VERSION_PKG).Branch=main -X $(VERSION_PKG).BuildUser=make
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all build test lint demo docker bench soak consul prometheus chromium deps clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BINARY) ./cmd/consul-sd-adapter

# The Consul agent the tests run against; built once per version into
# ~/.cache (the first build takes ~10 minutes and prints what it does).
consul:
	@tools/consul/build.sh >/dev/null

# Debian's Prometheus, for the end-to-end test and the demo.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
		echo "installing Debian's prometheus package"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; }

# Debian's Chromium, for the status page test in a real headless browser.
chromium:
	@command -v chromium >/dev/null || { \
		echo "installing Debian's chromium package"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; }

# What the demo and the benchmarks need; the tests need Chromium too.
deps: consul prometheus
	$(GO) mod download

test: deps chromium
	CONSUL_BIN="$$(tools/consul/build.sh)" $(GO) test -count=1 ./...

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

demo: deps
	LDFLAGS='$(LDFLAGS)' bash scripts/demo.sh

# The image of docker-compose.yml, stamped with the version data of make build.
docker:
	VERSION='$(VERSION)' REVISION='$(REVISION)' docker compose build

bench: deps
	CONSUL_BIN="$$(tools/consul/build.sh)" $(GO) run ./internal/bench $(BENCH_FLAGS)

# Hours-long behaviour in minutes: the adapter against a churning catalog,
# checked for correctness, failures and leaks. SOAK_FLAGS="-duration=2m".
soak: consul
	CONSUL_BIN="$$(tools/consul/build.sh)" $(GO) run ./internal/soak $(SOAK_FLAGS)

clean:
	rm -rf $(BINARY) .demo
