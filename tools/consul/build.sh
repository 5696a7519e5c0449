#!/usr/bin/env bash
# Builds the Consul agent the tests, the demo and the benchmarks run against,
# once per version, into a cache outside the repository, and prints its path.
# The first build downloads about 2.5 GB of modules and takes ~10 minutes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "require" && $2 == "github.com/hashicorp/consul" { print $3 }' "$here/go.mod")
cache=${XDG_CACHE_HOME:-$HOME/.cache}/consul-sd-adapter
bin=$cache/consul-$version
if [ ! -x "$bin" ]; then
  mkdir -p "$cache"
  echo "building consul $version into $bin (first time only: ~10 min, ~2.5 GB of modules)" >&2
  start=$(date +%s)
  echo "  downloading the modules it needs, then compiling..." >&2
  (cd "$here" && GOFLAGS=-mod=mod go build -o "$bin.tmp" github.com/hashicorp/consul)
  mv "$bin.tmp" "$bin"
  echo "  built in $(( $(date +%s) - start ))s" >&2
fi
echo "$bin"
