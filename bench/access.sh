#!/usr/bin/env bash
# What access rules cost: new connections per second through a listener
# with no rules and through one with RULES allow/deny prefixes (the source
# matching the last-sorted one), side by side in one sluice, rounds
# alternating which goes first. Writes bench/ACCESS.md and prints it.
#
#   bash bench/access.sh                 # builds sluice first
#   SKIP_BUILD=1 ROUNDS=8 RULES=10000 bash bench/access.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
ROUNDS=${ROUNDS:-6}
RULES=${RULES:-10000}
CONNS=${CONNS:-20000}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --locked -q --bin sluice
dir=$(mktemp -d)
trap 'kill $(cat "$dir"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$dir"' EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
redis=$(free_port) open=$(free_port) ruled=$(free_port)
taskset -c "$LOAD_CPU" redis-server --port "$redis" --save '' --appendonly no --daemonize yes \
  --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
python3 - "$RULES" > "$dir/rules.toml" <<'PY'
import sys
n = int(sys.argv[1])
# Disjoint /24s in 10.0.0.0/8 and 100.64.0.0/10, denied; loopback allowed last.
deny = [f'"10.{i // 256 % 256}.{i % 256}.0/24"' for i in range(n // 2)]
allow = [f'"100.{64 + i // 256 % 64}.{i % 256}.0/24"' for i in range(n - n // 2 - 1)] + ['"127.0.0.0/8"']
print("allow = [" + ", ".join(allow) + "]")
print("deny = [" + ", ".join(deny) + "]")
PY
{
  printf '[listeners.open]\nbind = "127.0.0.1:%s"\nbackends = ["127.0.0.1:%s"]\n' "$open" "$redis"
  printf '[listeners.ruled]\nbind = "127.0.0.1:%s"\nbackends = ["127.0.0.1:%s"]\n' "$ruled" "$redis"
  cat "$dir/rules.toml"
} > "$dir/sluice.toml"
taskset -c "$PROXY_CPU" target/release/sluice --config "$dir/sluice.toml" > "$dir/sluice.log" 2>&1 &
echo $! > "$dir/sluice.pid"
until grep -qw ready "$dir/sluice.log"; do sleep 0.1; done
rate() { taskset -c "$LOAD_CPU" redis-benchmark -p "$1" -c 50 -n "$CONNS" -k 0 -t ping_mbulk -q --csv 2>/dev/null | tail -1 | cut -d, -f2 | tr -d '"'; }
for round in $(seq 0 $((ROUNDS - 1))); do
  order="open ruled"
  (( round % 2 )) && order="ruled open"
  for name in $order; do
    port=$open
    [ "$name" = ruled ] && port=$ruled
    echo "$name $(rate "$port")"
  done
done > "$dir/raw"
python3 - "$dir/raw" "$RULES" > bench/ACCESS.md <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
cell = {name: [float(r[1]) for r in rows if r[0] == name] for name in ("open", "ruled")}
med = {name: statistics.median(v) for name, v in cell.items()}
print("# What access rules cost\n")
print(f"New connections per second (redis-benchmark -k 0, 50 clients), {len(rows) // 2} rounds alternating "
      f"which listener goes first; median (min–max).\n")
print("| listener | new connections/s |\n|---|---:|")
print(f"| no rules | {med['open']:.0f} ({min(cell['open']):.0f}–{max(cell['open']):.0f}) |")
print(f"| {sys.argv[2]} allow/deny prefixes | {med['ruled']:.0f} ({min(cell['ruled']):.0f}–{max(cell['ruled']):.0f}) |")
print(f"\nRatio ruled ÷ open: {med['ruled'] / med['open']:.3f}.")
PY
cat bench/ACCESS.md
