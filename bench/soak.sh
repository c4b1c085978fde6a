#!/usr/bin/env bash
# Fault soak: sluice under everything at once for N minutes, to show that
# nothing at its edges takes it down or makes it leak. Not a timed test: it
# prints (and writes to bench/SOAK.md) failed connections, descriptors and
# RSS at the start, every 30 s, and at the end.
#
#   bash bench/soak.sh [MINUTES]       # default 5
#   SKIP_BUILD=1 bash bench/soak.sh 1  # use the binaries in target/release
#
# Running at once, on loopback:
# - BIND as the Consul DNS stand-in, with the 'redis' service's records
#   churned every 200 ms (one instance removed and added back in turn; every
#   instance keeps running, so no client may fail);
# - a hostile DNS server in front of BIND (bench/hostile_dns.rs) that gives
#   the 'hostile' service a different bad answer each time: garbage, forged
#   IDs, SERVFAIL, silence, 1,200 glueless targets never resolved, 0.0.0.0 /
#   broadcast / multicast glue, a record pointing at sluice itself, ...;
# - clients (bench/soak_client.py): 4 workers of short connections, 16 long
#   ones pinging every 50 ms, 200 idle ones, plus slowloris clients on the
#   admin endpoint and plain connections to the hostile listener;
# - a SIGHUP every second, alternating a valid changed file and a broken one.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
MINUTES=${1:-5}
SECONDS_TOTAL=$((MINUTES * 60))
SLUICE=$REPO/target/release/sluice
HOSTILE=$REPO/target/release/examples/hostile-dns
OUT=$REPO/bench/SOAK.md

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

need=()
command -v named >/dev/null || need+=(bind9)
command -v nsupdate >/dev/null || need+=(bind9-dnsutils)
command -v redis-server >/dev/null || need+=(redis-server)
if ((${#need[@]})); then
  sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -q && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release"
  cargo build --release --locked --bin sluice --example hostile-dns
fi

T=$(mktemp -d /tmp/sluice-soak.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for f in "$T"/redis-*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  integration/consul-dns.sh stop "$T/dns" || true
  [ "${KEEP:-0}" = 1 ] && echo "kept $T" >&2 || rm -rf "$T"
}
trap cleanup EXIT

read -r BIND_PORT HOSTILE_PORT REDIS_LISTENER HOSTILE_LISTENER ADMIN R1 R2 R3 R4 < <(python3 - <<'PY'
import socket
socks = []
for _ in range(9):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(*[s.getsockname()[1] for s in socks])
PY
)
REDIS_PORTS=("$R1" "$R2" "$R3" "$R4")

log "BIND on $BIND_PORT, redis on ${REDIS_PORTS[*]}"
integration/consul-dns.sh start "$T/dns" "$BIND_PORT"
n=0
for port in "${REDIS_PORTS[@]}"; do
  n=$((n + 1))
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --maxclients 10000 --pidfile "$T/redis-$port.pid" --logfile "$T/redis-$port.log"
  integration/consul-dns.sh add "$T/dns" redis "node$n" 127.0.0.1 "$port"
done

"$HOSTILE" "127.0.0.1:$HOSTILE_PORT" "127.0.0.1:$BIND_PORT" "127.0.0.2:$REDIS_LISTENER" "127.0.0.1:$R1" &
pids+=($!)

config() { # $1: balance of the redis listener
  cat <<TOML
dns = "127.0.0.1:$HOSTILE_PORT"
refresh = "200ms"
metrics = "127.0.0.1:$ADMIN"

[listeners.redis]
bind = "0.0.0.0:$REDIS_LISTENER"
service = "redis"
balance = "$1"

[listeners.hostile]
bind = "127.0.0.1:$HOSTILE_LISTENER"
service = "hostile"
connect_timeout = "200ms"
TOML
}
config round-robin >"$T/sluice.toml"
RUST_LOG=${RUST_LOG:-info} "$SLUICE" --config "$T/sluice.toml" 2>"$T/sluice.log" &
SLUICE_PID=$!
pids+=("$SLUICE_PID")
for _ in $(seq 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $REDIS_LISTENER), 1).close()" 2>/dev/null && break
  sleep 0.1
done

sample() { # label: one row of the results table
  local fds rss totals
  fds=$(ls "/proc/$SLUICE_PID/fd" | wc -l)
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$SLUICE_PID/status")
  totals=$(tail -n 1 "$T/client.jsonl" 2>/dev/null || echo '{}')
  python3 - "$1" "$fds" "$rss" "$totals" <<'PY'
import json, sys
label, fds, rss, totals = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4] or "{}")
g = lambda k: totals.get(k, 0)
print(f"| {label} | {g('short_ok') + g('long_ok')} | {g('short_failed') + g('long_failed')} | {fds} | {rss / 1024:.1f} MB |")
PY
}

log "soaking for $MINUTES minute(s)"
python3 bench/soak_client.py "127.0.0.1:$REDIS_LISTENER" "$SECONDS_TOTAL" >"$T/client.jsonl" &
CLIENT_PID=$!
pids+=("$CLIENT_PID")

# SRV churn every 200 ms: the fourth instance leaves and returns, and so,
# more slowly, do the others in turn; every instance keeps running.
(
  i=0
  while :; do
    i=$((i + 1))
    integration/consul-dns.sh del "$T/dns" redis node4 127.0.0.1 "$R4"
    sleep 0.2
    integration/consul-dns.sh add "$T/dns" redis node4 127.0.0.1 "$R4"
    sleep 0.2
    k=$(( (i % 3) + 1 )); port=${REDIS_PORTS[$((k - 1))]}
    integration/consul-dns.sh del "$T/dns" redis "node$k" 127.0.0.1 "$port"
    sleep 0.2
    integration/consul-dns.sh add "$T/dns" redis "node$k" 127.0.0.1 "$port"
  done
) >/dev/null 2>&1 &
pids+=($!)

# SIGHUP storm: a valid file that changes the redis listener, then a broken one.
(
  while :; do
    config least-conn >"$T/sluice.toml"; kill -HUP "$SLUICE_PID"; sleep 0.5
    printf '[listeners.redis]\nbind = "nonsense"\nrefresh = "99999999999y"\n' >"$T/sluice.toml"; kill -HUP "$SLUICE_PID"; sleep 0.5
    config round-robin >"$T/sluice.toml"; kill -HUP "$SLUICE_PID"; sleep 0.5
  done
) >/dev/null 2>&1 &
pids+=($!)

# Edge clients: slowloris on the admin endpoint, connections to the hostile listener.
python3 - "$ADMIN" "$HOSTILE_LISTENER" "$SECONDS_TOTAL" >/dev/null 2>&1 <<'PY' &
import socket, sys, threading, time
admin, hostile, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + seconds
def slowloris():
    while time.monotonic() < end:
        try:
            s = socket.create_connection(("127.0.0.1", admin), 2)
            for b in b"GET /metrics HTTP/1.1\r\nHost: x\r\n":
                s.send(bytes([b])); time.sleep(1)
        except OSError:
            time.sleep(0.5)
def hostile_client():
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", hostile), 2) as s:
                s.settimeout(2); s.sendall(b"PING\r\n"); s.recv(64)
        except OSError:
            pass
        time.sleep(0.05)
for target in [slowloris] * 100 + [hostile_client] * 4:
    threading.Thread(target=target, daemon=True).start()
time.sleep(seconds)
PY
pids+=($!)

rows=()
sleep 10
rows+=("$(sample "start (10 s)")")
elapsed=10
while [ "$elapsed" -lt "$((SECONDS_TOTAL - 30))" ]; do
  sleep 30
  elapsed=$((elapsed + 30))
  rows+=("$(sample "$elapsed s")")
  echo "${rows[-1]}" >&2
done
wait "$CLIENT_PID" || true
rows+=("$(sample "end ($SECONDS_TOTAL s)")")
kill -0 "$SLUICE_PID" 2>/dev/null || { echo "sluice died" >&2; cat "$T/sluice.log" >&2; exit 1; }

final=$(tail -n 1 "$T/client.jsonl")
reloads=$(grep -c "configuration reloaded" "$T/sluice.log" || true)
rejected=$(grep -c "reload rejected" "$T/sluice.log" || true)
warnings=$(grep -c " WARN " "$T/sluice.log" || true)
{
  echo "# Soak: $MINUTES minute(s) of churn, SIGHUP storms, hostile DNS and edge clients"
  echo
  echo "\`bash bench/soak.sh $MINUTES\` on $(date -u +%Y-%m-%d), $(nproc) cores. Requests = PINGs answered +PONG;"
  echo "failed = PINGs without one (short and long connections); descriptors and RSS are sluice's."
  echo
  echo "| when | requests ok | failed | descriptors | RSS |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Client totals at the end: \`$final\`"
  echo
  echo "Reloads applied: $reloads; reloads rejected (broken file): $rejected; warning lines logged: $warnings."
} | tee "$OUT"
