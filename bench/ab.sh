#!/usr/bin/env bash
# Two builds of sluice side by side, for a change that must not cost speed
# (a refactor): the same redis and iperf3 backends behind each, each sluice
# pinned to PROXY_CPU, the load on LOAD_CPU, rounds alternating which goes
# first. Writes bench/AB.md and prints it.
#
#   bash bench/ab.sh REV                 # REV (e.g. main~3) against the work tree
#   ROUNDS=10 bash bench/ab.sh REV       # more rounds [5]
#
# Rows: redis-benchmark PING keep-alive (200,000 requests, 50 connections),
# new connections per second (20,000 PINGs, -k 0), iperf3 bulk (3 s).
# Cells: median (min–max) over the rounds; the ratio is after ÷ before.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
REV=${1:?usage: bench/ab.sh REV}
ROUNDS=${ROUNDS:-5}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
dir=$(mktemp -d)
trap 'kill $(cat "$dir"/*.pid 2>/dev/null) 2>/dev/null || true; git worktree remove --force "$dir/src" 2>/dev/null || true; rm -rf "$dir"' EXIT

git worktree add --detach "$dir/src" "$REV" >/dev/null
(cd "$dir/src" && CARGO_TARGET_DIR="$REPO/target/ab-before" cargo build --release --locked -q)
cargo build --release --locked -q
BEFORE=$REPO/target/ab-before/release/sluice
AFTER=$REPO/target/release/sluice

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
iperf_port=$(free_port)
taskset -c "$LOAD_CPU" redis-server --port "$redis_port" --save '' --appendonly no \
  --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
taskset -c "$LOAD_CPU" iperf3 -s -p "$iperf_port" -D --pidfile "$dir/iperf.pid"

# start NAME BINARY: a sluice with a redis and an iperf listener; waits for both.
start() {
  local redis iperf
  redis=$(free_port)
  iperf=$(free_port)
  printf '[listeners.redis]\nbind = "127.0.0.1:%s"\nbackends = ["127.0.0.1:%s"]\n[listeners.iperf]\nbind = "127.0.0.1:%s"\nbackends = ["127.0.0.1:%s"]\n' \
    "$redis" "$redis_port" "$iperf" "$iperf_port" > "$dir/$1.toml"
  taskset -c "$PROXY_CPU" "$2" --config "$dir/$1.toml" > "$dir/$1.log" 2>&1 &
  echo $! > "$dir/$1.pid"
  echo "$redis $iperf" > "$dir/$1.ports"
  for _ in $(seq 100); do
    grep -qw ready "$dir/$1.log" && return
    sleep 0.1
  done
  echo "$1 did not start: $(cat "$dir/$1.log")" >&2
  exit 1
}
start before "$BEFORE"
start after "$AFTER"

requests() { taskset -c "$LOAD_CPU" redis-benchmark -p "$1" -c 50 -t ping_mbulk -q --csv "${@:2}" 2>/dev/null | tail -1 | cut -d, -f2 | tr -d '"'; }
for round in $(seq 0 $((ROUNDS - 1))); do
  order="before after"
  (( round % 2 )) && order="after before"
  for build in $order; do
    read -r redis iperf < "$dir/$build.ports"
    ping=$(requests "$redis" -n 200000)
    connections=$(requests "$redis" -n 20000 -k 0)
    bulk=$(taskset -c "$LOAD_CPU" iperf3 -c 127.0.0.1 -p "$iperf" -t 3 -J |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9)')
    echo "$build $ping $connections $bulk"
  done
done > "$dir/raw"

python3 - "$dir/raw" "$REV" "$(git rev-parse --short HEAD)" > bench/AB.md <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
print(f"# {sys.argv[2]} (before) against {sys.argv[3]} and the work tree (after)\n")
print(f"{len(rows) // 2} rounds, alternating which build goes first; median (min–max).\n")
print("| | before | after | after ÷ before |\n|---|---:|---:|---:|")
for column, name, unit in [(1, "PING keep-alive", "req/s"), (2, "new connections", "/s"), (3, "iperf3", "Gbit/s")]:
    cells = []
    for build in ("before", "after"):
        values = [float(r[column]) for r in rows if r[0] == build]
        cells.append((statistics.median(values), min(values), max(values)))
    shown = ["%.4g (%.4g–%.4g)" % c for c in cells]
    print(f"| {name} ({unit}) | {shown[0]} | {shown[1]} | {cells[1][0] / cells[0][0]:.2f} |")
PY
cat bench/AB.md
