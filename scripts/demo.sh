#!/usr/bin/env bash
# Runs the dev stack of docker-compose.yml from local binaries, for machines
# without Docker: a Consul dev agent with the example services of consul.json,
# the adapter writing .demo/prometheus/sd/custom_sd.json, and Prometheus
# reading it through the repository's prometheus.yml, unchanged. Where the
# stack gives the adapter flags, the demo gives it a configuration file of
# one entry, .demo/consul-sd-adapter.yml, to show that way too.
#
# Waits until Prometheus has picked up the example services, prints what it
# sees, then runs until Ctrl-C and stops all three.
#
# DEMO_CHECK=1: exit after the summary instead, 0 if Prometheus found every
# example service and agrees with Consul about which ones are up, non-zero
# otherwise (for smoke tests).
set -euo pipefail

# Ctrl-C signals the terminal's whole foreground process group, make
# included, and make then reports the recipe as failed whatever the script
# does. With job control a foreground command gets a process group of its
# own and the terminal with it: the demo runs as one, so Ctrl-C reaches only
# the demo, which stops everything and exits 0.
if [ -z "${DEMO_JOB:-}" ] && [ -t 0 ]; then
  set -m
  DEMO_JOB=1 bash "$0" "$@"
  exit
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

demo=.demo
wait_seconds=${DEMO_WAIT_SECONDS:-60}
consul_addr=127.0.0.1:8500
prom_addr=127.0.0.1:9090
adapter_addr=127.0.0.1:9841

say() { echo "demo: $*" >&2; }
die() { echo "demo: $*" >&2; exit 1; }

command -v curl >/dev/null || die "curl is required"
command -v python3 >/dev/null || die "python3 is required"

# who_listens ADDR describes what holds ADDR's port: the process, as far as
# ss may tell, and what it answers over HTTP.
who_listens() {
  local addr=$1 line pid name unit version what=
  line=$(ss -Hltnp "sport = :${addr##*:}" 2>/dev/null | head -n 1 || true)
  pid=$(grep -o 'pid=[0-9]*' <<<"$line" | head -n 1 | cut -d= -f2 || true)
  name=$(grep -o 'users:(("[^"]*"' <<<"$line" | head -n 1 | cut -d'"' -f2 || true)
  if [ -n "$pid" ]; then
    what="$name (pid $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c 1-120 | sed 's/ *$//'))"
    # A system service, such as the Prometheus that Debian's package starts.
    unit=$(grep -o 'system\.slice/[^/]*\.service' "/proc/$pid/cgroup" 2>/dev/null | head -n 1 | cut -d/ -f2 || true)
    if [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$repo" ]; then
      what="$what, left over from an earlier demo (kill $pid)"
    elif [ -n "$unit" ]; then
      what="$what, the system's $unit (systemctl stop $unit)"
    fi
  fi
  if version=$(curl -fsS --max-time 2 "http://$addr/api/v1/status/buildinfo" 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["data"]["version"])' 2>/dev/null); then
    what="${what:-a process} that answers as Prometheus $version"
  elif curl -fsS --max-time 2 -o /dev/null "http://$addr/v1/status/leader" 2>/dev/null; then
    what="${what:-a process} that answers as Consul"
  fi
  echo "${what:-a process that ss does not show (of another user, or in a container)}"
}

# Every address is fixed because consul.json registers the stack under them;
# finding one taken is better said now than as a crash in some log.
for addr in "$consul_addr" "$prom_addr" "$adapter_addr"; do
  if (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null; then
    die "$addr is already in use by $(who_listens "$addr"); the demo needs it (consul.json registers its services there): stop that and retry"
  fi
done

# --- binaries ---------------------------------------------------------------

say "locating Consul (tools/consul/build.sh builds it on first use, ~10 min)"
consul=$(tools/consul/build.sh)

if ! command -v prometheus >/dev/null; then
  sudo=
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "prometheus is not installed and there is no sudo; install Debian's prometheus package"
    sudo=sudo
  fi
  say "prometheus not found; installing Debian's package: apt-get update && apt-get install -y prometheus"
  $sudo apt-get update
  # The package tries to start its own service; that fails harmlessly
  # without systemd, and the demo runs its own Prometheus anyway.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y prometheus
fi
prometheus=$(command -v prometheus)

say "building the adapter"
mkdir -p "$demo/bin"
# make demo passes the Makefile's LDFLAGS (version, revision); without them
# the binary takes its version from what go build records.
go build -ldflags "${LDFLAGS:-}" -o "$demo/bin/consul-sd-adapter" ./cmd/consul-sd-adapter

# --- work directory ---------------------------------------------------------

# Start from nothing each time: a stale custom_sd.json or TSDB would show
# targets from an earlier run.
rm -rf "$demo/prometheus" "$demo"/*.log
mkdir -p "$demo/prometheus/sd"
# prometheus.yml reads sd/custom_sd.json relative to its own directory, so
# next to the copy that is .demo/prometheus/sd/, where the adapter writes.
cp prometheus.yml "$demo/prometheus/prometheus.yml"
# One entry, named after prometheus.yml's job; its file is relative to the
# configuration's directory, .demo/. Short intervals, as in prometheus.yml.
adapter_config=$demo/consul-sd-adapter.yml
entry=consul-sd
cat >"$adapter_config" <<EOF
discovery_configs:
  - name: $entry
    file: prometheus/sd/custom_sd.json
    consul_sd_configs:
      - server: $consul_addr
        refresh_interval: 5s
EOF
checked=$("$demo/bin/consul-sd-adapter" --config.check --config.file="$adapter_config") ||
  die "the adapter refuses $adapter_config (its error is above)"
say "$checked"

# --- processes --------------------------------------------------------------

pids=()
stop() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  pids=()
}
trap stop EXIT
# Ctrl-C is how the demo is meant to end: a clean stop, exit 0.
trap 'echo >&2; say "stopping Consul, the adapter and Prometheus"; exit 0' INT
trap 'exit 143' TERM

# Fails with the tail of a process's log if it has already exited.
alive() {
  local pid=$1 name=$2 log=$3
  if ! kill -0 "$pid" 2>/dev/null; then
    say "$name exited; last lines of $log:"
    tail -n 20 "$log" >&2 || true
    exit 1
  fi
}

say "starting Consul ($consul), log $demo/consul.log"
"$consul" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -config-file=consul.json \
  >"$demo/consul.log" 2>&1 &
consul_pid=$!
pids+=("$consul_pid")

# The adapter would retry on its own; waiting for a leader only keeps its
# log free of connection errors from the first seconds.
leader=
for _ in $(seq 60); do
  alive "$consul_pid" consul "$demo/consul.log"
  leader=$(curl -fsS "http://$consul_addr/v1/status/leader" 2>/dev/null || true)
  [ -n "$leader" ] && [ "$leader" != '""' ] && break
  sleep 0.5
done

say "starting consul-sd-adapter, log $demo/adapter.log"
"$demo/bin/consul-sd-adapter" \
  --config.file="$adapter_config" \
  --web.listen-address="$adapter_addr" \
  >"$demo/adapter.log" 2>&1 &
adapter_pid=$!
pids+=("$adapter_pid")

say "starting Prometheus ($prometheus), log $demo/prometheus.log"
"$prometheus" \
  --config.file="$demo/prometheus/prometheus.yml" \
  --storage.tsdb.path="$demo/prometheus/data" \
  --web.listen-address="$prom_addr" \
  >"$demo/prometheus.log" 2>&1 &
prom_pid=$!
pids+=("$prom_pid")

# --- wait for Prometheus to see the services --------------------------------

# Reads a saved answer of Prometheus's /api/v1/targets and consul.json's
# services, prints one line per target, and exits 0 once every example
# service instance is a target whose scrape result agrees with its Consul
# health (passing = up, critical = down), 1 while that is not so yet.
summarize() {
  python3 - "$repo/consul.json" "$1" <<'EOF'
import json, sys

services = json.load(open(sys.argv[1]))["services"]
want = {(s["name"], "%s:%d" % (s["address"], s["port"])) for s in services}

targets = json.load(open(sys.argv[2]))["data"]["activeTargets"]
seen = {}
for t in targets:
    labels, found = t["labels"], t["discoveredLabels"]
    key = (labels.get("job", ""), labels.get("instance", ""))
    seen[key] = (t["health"], found.get("__meta_consul_health", "?"))

ok = True
for job, instance in sorted(seen):
    scrape, consul = seen[(job, instance)]
    print("  %-18s %-16s prometheus=%-7s consul=%s" % (job, instance, scrape, consul))
for key in sorted(want - set(seen)):
    print("  %-18s %-16s not a target yet" % key)
    ok = False
for key in want & set(seen):
    scrape, consul = seen[key]
    if (scrape, consul) not in {("up", "passing"), ("down", "critical")}:
        ok = False
sys.exit(0 if ok else 1)
EOF
}

say "waiting up to ${wait_seconds}s for Prometheus to scrape the services of consul.json"
ready=false
summary=
deadline=$((SECONDS + wait_seconds))
while [ "$SECONDS" -lt "$deadline" ]; do
  alive "$consul_pid" consul "$demo/consul.log"
  alive "$adapter_pid" consul-sd-adapter "$demo/adapter.log"
  alive "$prom_pid" prometheus "$demo/prometheus.log"
  if curl -fsS -o "$demo/targets.json" "http://$prom_addr/api/v1/targets" 2>/dev/null; then
    if summary=$(summarize "$demo/targets.json"); then
      ready=true
      break
    fi
  fi
  sleep 2
done

# Prometheus's targets page is /targets, except where only the classic UI
# is built (Debian's 2.42 package): there it is /classic/targets.
prom_targets=http://$prom_addr/api/v1/targets
for path in /targets /classic/targets; do
  if curl -fsS --max-time 5 -o /dev/null "http://$prom_addr$path" 2>/dev/null; then
    prom_targets=http://$prom_addr$path
    break
  fi
done

echo
echo "Targets as Prometheus sees them (web-1 and web-2 listen nowhere, so they are down):"
echo "${summary:-  (Prometheus did not answer)}"
echo
echo "  Prometheus  $prom_targets"
echo "  adapter     http://$adapter_addr/  (its entries; also /metrics)"
echo "              http://$adapter_addr/status/$entry  (status page of entry $entry)"
echo "              http://$adapter_addr/targets/$entry  (its targets for http_sd; ?shards=N&shard=K for one hashmod shard)"
echo "  config      $adapter_config  (one entry, $entry; edit it, then kill -HUP $adapter_pid to reload)"
echo "  Consul      http://$consul_addr/ui"
echo "  logs        $demo/consul.log $demo/adapter.log $demo/prometheus.log"
echo

if [ "$ready" != true ]; then
  say "after ${wait_seconds}s Prometheus still does not show every service of consul.json with the health Consul reports"
fi

if [ "${DEMO_CHECK:-0}" = 1 ]; then
  [ "$ready" = true ] || exit 1
  say "DEMO_CHECK: ok"
  exit 0
fi

say "running; Ctrl-C stops Consul, the adapter and Prometheus"
# wait returns as soon as any one of them exits (or on Ctrl-C, via the trap).
wait -n "${pids[@]}" || true
alive "$consul_pid" consul "$demo/consul.log"
alive "$adapter_pid" consul-sd-adapter "$demo/adapter.log"
alive "$prom_pid" prometheus "$demo/prometheus.log"
