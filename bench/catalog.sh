#!/usr/bin/env bash
# The catalog's listeners ([catalog]) measured: how long from a service's
# registration (with a sluice.listen tag) to the first connection proxied
# through the port it claims, and what a catalog of SERVICES services with
# TAGGED of them claiming ports costs sluice (CPU while the catalog changes
# once a second, and RSS), against the Consul stand-in with a redis backend.
# Writes bench/CATALOG.md and prints it.
#
#   bash bench/catalog.sh                # builds sluice and the stand-in first
#   SKIP_BUILD=1 bash bench/catalog.sh   # use the binaries in target/release
#   ROUNDS [10] SERVICES [1000] TAGGED [200] CHURN_SECONDS [20]
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
export ROUNDS=${ROUNDS:-10} SERVICES=${SERVICES:-1000} TAGGED=${TAGGED:-200} CHURN_SECONDS=${CHURN_SECONDS:-20}
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release --locked -q --bin sluice --example consul-standin
fi
dir=$(mktemp -d)
trap 'kill $(cat "$dir"/*.pid 2>/dev/null) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$dir"' EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

redis_port=$(free_port)
redis-server --port "$redis_port" --save '' --appendonly no --daemonize yes \
  --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
target/release/examples/consul-standin > "$dir/consul.out" &
echo $! > "$dir/consul.pid"
until grep -q listening "$dir/consul.out"; do sleep 0.05; done
consul=$(awk '/listening/ {print $2}' "$dir/consul.out")
metrics=$(free_port)
cat > "$dir/sluice.toml" <<TOML
consul = "$consul"
metrics = "127.0.0.1:$metrics"
[catalog]
bind = "127.0.0.1"
ports = "20000-39999"
TOML
target/release/sluice --config "$dir/sluice.toml" > "$dir/sluice.log" 2>&1 &
echo $! > "$dir/sluice.pid"
until grep -qw ready "$dir/sluice.log"; do sleep 0.05; done

python3 - "$consul" "$redis_port" "$(cat "$dir/sluice.pid")" > bench/CATALOG.md <<'PY'
import json, os, socket, statistics, sys, time, urllib.request
consul, redis, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rounds, services, tagged, seconds = (int(os.environ[k]) for k in ("ROUNDS", "SERVICES", "TAGGED", "CHURN_SECONDS"))

def register(sid, name, tags):
    body = json.dumps({"ID": sid, "Name": name, "Address": "127.0.0.1", "Port": redis, "Tags": tags}).encode()
    request = urllib.request.Request(f"http://{consul}/v1/agent/service/register", body, method="PUT")
    urllib.request.urlopen(request).read()

def proxied(port):
    """Whether a PING through 127.0.0.1:port reaches redis."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False

def cpu_seconds():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def rss_kib():
    return next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS"))

latencies = []
for r in range(rounds):
    port = 20000 + r
    # Into a held query, as a registration meets a watch at rest (a change
    # right after another waits for the watch's 100 ms minimum gap).
    time.sleep(0.3)
    start = time.monotonic()
    register(f"first-{r}", f"first-{r}", [f"sluice.listen={port}"])
    while not proxied(port):
        time.sleep(0.001)
        if time.monotonic() - start > 30:
            sys.exit(f"port {port} not served 30 s after its registration")
    latencies.append((time.monotonic() - start) * 1000)

rss_before = rss_kib()
start = time.monotonic()
for i in range(services):
    tags = [f"sluice.listen={30000 + i}"] if i < tagged else ["other"]
    register(f"svc-{i}", f"svc-{i}", tags)
while not proxied(30000 + tagged - 1):
    time.sleep(0.01)
loaded = time.monotonic() - start
cpu_start, rss_loaded = cpu_seconds(), rss_kib()
for second in range(seconds):
    register(f"svc-{tagged}", f"svc-{tagged}", [f"churn-{second}"])  # an untagged service changes
    time.sleep(1)
cpu = (cpu_seconds() - cpu_start) / seconds

print("# The Consul catalog's listeners\n")
print(f"Registration of a service with `sluice.listen=PORT` to the first PING proxied through PORT, "
      f"{rounds} rounds: median {statistics.median(latencies):.1f} ms "
      f"(min {min(latencies):.1f}, max {max(latencies):.1f}).\n")
print(f"A catalog of {services} services, {tagged} claiming a port: all registered and the last port "
      f"serving in {loaded:.1f} s (one registration at a time over HTTP); then, with the catalog changing "
      f"once a second for {seconds} s, sluice used {cpu * 100:.1f} % of one CPU; RSS "
      f"{rss_before / 1024:.1f} MiB before the catalog, {rss_loaded / 1024:.1f} MiB with its {tagged + rounds} listeners.")
PY
cat bench/CATALOG.md
