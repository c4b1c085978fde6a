#!/usr/bin/env bash
# One command, one run, side by side on loopback: direct vs sluice vs HAProxy 2.6
# vs nginx stream, for redis (redis-benchmark), bulk TCP (iperf3), idle
# connection memory, DNS SRV discovery and UDP echo. Writes bench/RESULTS.md
# and prints it.
#
#   bash bench/run.sh              # builds sluice + the udpload example first
#   SKIP_BUILD=1 bash bench/run.sh # use the binaries already in target/release
#   KEEP=1 ...                     # keep the temp dir (configs, logs) afterwards
#   ONLY='scale|UDP' ...           # only the steps whose names match this regex
#
# Sizes can be turned down for a quick try, e.g. REQUESTS=20000 CONNS=5000
# IPERF_SECONDS=2 SCALE_SERVICES=100 SCALE_SECONDS=5 UDP_SECONDS=2.
#
# Pinning: the proxies run on PROXY_CPU (0), everything else (load
# generators, backends, BIND) on LOAD_CPU (1). So a proxy gets one core to
# itself and competes with no one; "direct" runs client and server on one core.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
REQUESTS=${REQUESTS:-200000}          # redis-benchmark -n for PING/GET
CONNS=${CONNS:-50000}                 # redis-benchmark -n for new connections/s
IPERF_SECONDS=${IPERF_SECONDS:-5}
IDLE_CONNS=${IDLE_CONNS:-2000}
PROPAGATION_ROUNDS=${PROPAGATION_ROUNDS:-10}
SCALE_SERVICES=${SCALE_SERVICES:-1000}
SCALE_INSTANCES=${SCALE_INSTANCES:-10}
SCALE_SECONDS=${SCALE_SECONDS:-20}
UDP_SECONDS=${UDP_SECONDS:-5}
FLOOD_SOURCES=${FLOOD_SOURCES:-100000}  # distinct UDP sources in the flood step
FLOOD_MAX_FLOWS=${FLOOD_MAX_FLOWS:-10000}

SLUICE=${SLUICE:-$REPO/target/release/sluice}    # overridable, e.g. to try another build
UDPLOAD=${UDPLOAD:-$REPO/target/release/examples/udpload}
HELPERS=$REPO/bench/helpers.py
NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
on_load_cpu() { taskset -c "$LOAD_CPU" "$@"; }
helper() { python3 "$HELPERS" "$@"; }

# ------------------------------------------------------------------ setup

install_deps() {
  local need=()
  command -v haproxy >/dev/null || need+=(haproxy)
  command -v nginx >/dev/null || need+=(nginx)
  [ -e "$NGINX_STREAM_MODULE" ] || need+=(libnginx-mod-stream)
  command -v iperf3 >/dev/null || need+=(iperf3)
  command -v redis-server >/dev/null || need+=(redis-server)
  { command -v redis-benchmark && command -v redis-cli; } >/dev/null || need+=(redis-tools)
  command -v named >/dev/null || need+=(bind9)
  { command -v nsupdate && command -v dig; } >/dev/null || need+=(bind9-dnsutils)
  command -v python3 >/dev/null || need+=(python3)
  command -v taskset >/dev/null || need+=(util-linux)
  ((${#need[@]})) || return 0
  log "installing ${need[*]}"
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  local install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}")
  "${install[@]}" || { "${sudo[@]}" apt-get update -q && "${install[@]}"; }
}

build() {
  if [ "${SKIP_BUILD:-0}" = 1 ]; then
    log "SKIP_BUILD=1: using the binaries in target/release"
  else
    log "cargo build --release"
    cargo build --release --locked --bin sluice --example udpload
  fi
  [ -x "$SLUICE" ] || { echo "missing $SLUICE" >&2; exit 1; }
  [ -x "$UDPLOAD" ] || { echo "missing $UDPLOAD" >&2; exit 1; }
}

T=$(mktemp -d /tmp/sluice-bench.XXXXXX)
RESULTS=$T/results.tsv
: >"$RESULTS"
: >"$T/pids"

# Every process we start goes into $T/pids (a file, because measurements run
# in subshells); the EXIT trap ends exactly those, by id.
track() { echo "$1" >>"$T/pids"; }
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  set +e
  [ -n "${STEP_PID:-}" ] && kill "$STEP_PID" 2>/dev/null
  while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$T/pids"
  [ -f "$T/dns/named.pid" ] && integration/consul-dns.sh stop "$T/dns"
  for _ in $(seq 30); do  # up to 3 s for graceful exits, then SIGKILL
    local alive=0
    while read -r pid; do kill -0 "$pid" 2>/dev/null && alive=1; done <"$T/pids"
    ((alive)) || break
    sleep 0.1
  done
  while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done <"$T/pids"
  if [ "$rc" = 0 ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$T"; else echo "configs and logs kept in $T" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# spawn CPU LOG CMD...: start CMD in the background pinned to CPU, output to
# LOG. taskset execs CMD, so $! is CMD's own pid: SPAWNED, and tracked.
spawn() {
  local cpu=$1 out=$2
  shift 2
  taskset -c "$cpu" "$@" >"$out" 2>&1 </dev/null &
  SPAWNED=$!
  track "$SPAWNED"
}

# record KEY VALUE: one result, read by `helpers.py render`.
record() { printf '%s\t%s\n' "$1" "$2" >>"$RESULTS"; }

# step NAME CMD...: run one measurement in a background subshell (so `set -e`
# holds inside it, which it would not in `cmd || ...`); a failed measurement
# is reported and marked, and the run goes on with the next one.
step() {
  local name=$1; shift
  if [ -n "${ONLY:-}" ] && ! [[ $name =~ $ONLY ]]; then return 0; fi
  log "$name"
  ("$@") &
  STEP_PID=$!
  if ! wait "$STEP_PID"; then
    echo "!! step '$name' failed; continuing" >&2
    record "failed.$name" failed
  fi
  STEP_PID=
}

# Ports for everything, picked once, below the ephemeral range (see helpers.py).
read -ra PORTS <<<"$(helper free-ports $((20 + PROPAGATION_ROUNDS + SCALE_SERVICES)))"
PORT_INDEX=0
take_port() { printf -v "$1" '%s' "${PORTS[PORT_INDEX]}"; PORT_INDEX=$((PORT_INDEX + 1)); }

wait_tcp() {  # wait_tcp PORT: until something accepts on 127.0.0.1:PORT (10 s)
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listening on 127.0.0.1:$1" >&2; return 1
}

wait_redis() {  # wait_redis PORT: until a PING through it gets PONG (15 s)
  for _ in $(seq 150); do
    [ "$(redis-cli -p "$1" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.1
  done
  echo "no PONG through 127.0.0.1:$1" >&2; return 1
}

dns() { integration/consul-dns.sh "$1" "$T/dns" "${@:2}"; }

# PIDs of a process and all its descendants (nginx: master + worker).
proc_tree() {
  echo "$1"
  local child
  for child in $(pgrep -P "$1" || true); do proc_tree "$child"; done
}
rss_kb() {
  local total=0 pid kb
  for pid in $(proc_tree "$1"); do
    kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    total=$((total + ${kb:-0}))
  done
  echo "$total"
}
# utime + stime of a process (all its threads), in clock ticks. The command
# name in field 2 may contain spaces, so cut everything up to ") " first.
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

# ------------------------------------------------------------ processes

start_backends() {
  take_port REDIS_PORT; take_port IPERF_PORT; take_port ECHO_PORT
  spawn "$LOAD_CPU" "$T/redis.log" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
    --save '' --appendonly no --daemonize no --dir "$T" --maxclients 10000
  spawn "$LOAD_CPU" "$T/iperf3-server.log" iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT"
  spawn "$LOAD_CPU" "$T/udpecho.log" "$UDPLOAD" echo "127.0.0.1:$ECHO_PORT"
  wait_tcp "$REDIS_PORT"; wait_tcp "$IPERF_PORT"
}

# BIND as Consul's DNS interface; SRV records for the three backends.
start_dns() {
  take_port DNS_PORT
  on_load_cpu integration/consul-dns.sh start "$T/dns" "$DNS_PORT"
  dns add redis redis1 127.0.0.1 "$REDIS_PORT"
  dns add iperf iperf1 127.0.0.1 "$IPERF_PORT"
  dns add udpecho udpecho1 127.0.0.1 "$ECHO_PORT"
}

start_sluice() {
  take_port SL_REDIS; take_port SL_IPERF; take_port SL_UDP; take_port SL_FLOOD
  cat >"$T/sluice.toml" <<EOF
dns = "127.0.0.1:$DNS_PORT"
refresh = "1s"
shutdown_grace = "1s"

[listeners.redis]
bind = "127.0.0.1:$SL_REDIS"
service = "redis"

[listeners.iperf]
bind = "127.0.0.1:$SL_IPERF"
service = "iperf"

[listeners.udpecho]
bind = "127.0.0.1:$SL_UDP"
protocol = "udp"
service = "udpecho"

[listeners.udpflood]
bind = "127.0.0.1:$SL_FLOOD"
protocol = "udp"
service = "udpecho"
max_flows = $FLOOD_MAX_FLOWS
EOF
  "$SLUICE" --check --config "$T/sluice.toml"
  spawn "$PROXY_CPU" "$T/sluice.log" "$SLUICE" --config "$T/sluice.toml"
  SLUICE_PID=$SPAWNED
  wait_tcp "$SL_REDIS"
}

# HAProxy follows the SRV records itself (server-template + resolvers), the
# way one would run it against Consul without a config templater.
start_haproxy() {
  take_port HP_REDIS; take_port HP_IPERF
  local srv_opts="resolvers consul init-addr none resolve-prefer ipv4"
  cat >"$T/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 6000
    # only for "show resolvers" (DNS queries sent), read by the propagation step
    stats socket $T/haproxy.sock mode 600 level admin

defaults
    mode tcp
    option splice-auto
    timeout connect 2s
    timeout client 10m
    timeout server 10m
    maxconn 6000

resolvers consul
    nameserver bind 127.0.0.1:$DNS_PORT
    accepted_payload_size 8192
    hold valid 1s
    timeout resolve 1s
    timeout retry 1s
    resolve_retries 3

listen redis
    bind 127.0.0.1:$HP_REDIS
    server-template s 10 _redis._tcp.service.consul $srv_opts

listen iperf
    bind 127.0.0.1:$HP_IPERF
    server-template s 10 _iperf._tcp.service.consul $srv_opts
EOF
  haproxy -c -q -f "$T/haproxy.cfg"
  spawn "$PROXY_CPU" "$T/haproxy.log" haproxy -db -f "$T/haproxy.cfg"
  HAPROXY_PID=$SPAWNED
  wait_tcp "$HP_REDIS"
}

# Open-source nginx cannot follow SRV records: static upstreams, as a
# templater would write them. All files under $T/nginx (-p prefix, -e log).
start_nginx() {
  take_port NG_REDIS; take_port NG_IPERF; take_port NG_UDP
  mkdir -p "$T/nginx"
  cat >"$T/nginx/nginx.conf" <<EOF
load_module $NGINX_STREAM_MODULE;
worker_processes 1;
daemon off;
pid $T/nginx/nginx.pid;
error_log $T/nginx/error.log warn;

events { worker_connections 8000; }

stream {
    proxy_connect_timeout 2s;

    upstream redis   { server 127.0.0.1:$REDIS_PORT; }
    upstream iperf   { server 127.0.0.1:$IPERF_PORT; }
    upstream udpecho { server 127.0.0.1:$ECHO_PORT; }

    server { listen 127.0.0.1:$NG_REDIS; proxy_pass redis; proxy_timeout 10m; }
    server { listen 127.0.0.1:$NG_IPERF; proxy_pass iperf; proxy_timeout 10m; }

    # One reply per datagram (echo). A client address keeps its session (its
    # upstream socket) while datagrams flow, like a sluice flow; idle 30 s ends it.
    server {
        listen 127.0.0.1:$NG_UDP udp;
        proxy_pass udpecho;
        proxy_responses 1;
        proxy_timeout 30s;
    }
}
EOF
  nginx -q -t -p "$T/nginx" -e "$T/nginx/error.log" -c "$T/nginx/nginx.conf"
  spawn "$PROXY_CPU" "$T/nginx/stderr.log" nginx -p "$T/nginx" -e "$T/nginx/error.log" -c "$T/nginx/nginx.conf"
  NGINX_PID=$SPAWNED
  wait_tcp "$NG_REDIS"
}

# ----------------------------------------------------------- measurements

# a. redis-benchmark PING and GET, 50 connections. -t ping runs PING_INLINE
# and PING_MBULK; PING_MBULK (RESP, what client libraries send) is "PING".
measure_redis() {
  local name=$1 port=$2 out=$T/redis-$1.csv row rps p50 p99
  on_load_cpu redis-benchmark -h 127.0.0.1 -p "$port" -c 50 -n "$REQUESTS" -t ping,get --csv \
    >"$out" 2>"$T/redis-$name.err"
  row=$(helper redis-csv "$out" PING_MBULK)
  read -r rps p50 p99 <<<"$row"
  record "$name.ping.rps" "$rps"; record "$name.ping.p50" "$p50"; record "$name.ping.p99" "$p99"
  row=$(helper redis-csv "$out" GET)
  read -r rps p50 p99 <<<"$row"
  record "$name.get.rps" "$rps"; record "$name.get.p50" "$p50"; record "$name.get.p99" "$p99"
}

# b. New connections per second: -k 0 reconnects for every request. Only
# ping_mbulk (plain -t ping would run inline too, doubling the connections
# and the TIME_WAIT sockets for no extra information).
measure_newconn() {
  local name=$1 port=$2 out=$T/newconn-$1.csv row rps p50 p99
  on_load_cpu redis-benchmark -h 127.0.0.1 -p "$port" -k 0 -c 50 -n "$CONNS" -t ping_mbulk --csv \
    >"$out" 2>"$T/newconn-$name.err"
  row=$(helper redis-csv "$out" PING_MBULK)
  read -r rps p50 p99 <<<"$row"
  record "$name.newconn.rps" "$rps"
  sleep 1  # let the closing sockets settle before the next target
}

# c. One iperf3 stream; the receiver's rate.
measure_iperf() {
  local name=$1 port=$2 out=$T/iperf-$1.json gbps
  on_load_cpu iperf3 -c 127.0.0.1 -p "$port" -t "$IPERF_SECONDS" -J >"$out" || true  # error is in the JSON
  gbps=$(helper iperf-gbps "$out")
  record "$name.iperf.gbps" "$gbps"
}

# d. Memory per idle proxied connection: proxy RSS (all its processes) before
# and while IDLE_CONNS connections, each having carried one PING, sit idle.
measure_idle_rss() {
  local name=$1 port=$2 pid=$3 before after ready=$T/idle-$1.ready probe
  before=$(rss_kb "$pid")
  spawn "$LOAD_CPU" "$T/idle-$name.log" python3 "$HELPERS" idle-conns "$port" "$IDLE_CONNS" "$ready"
  probe=$SPAWNED
  for _ in $(seq 600); do [ -s "$ready" ] && break; kill -0 "$probe" || break; sleep 0.1; done
  [ -s "$ready" ] || { echo "idle connections not established" >&2; return 1; }
  sleep 1  # let the proxy settle (lazy allocations, freed handshake buffers)
  after=$(rss_kb "$pid")
  kill "$probe"; wait "$probe" 2>/dev/null || true
  record "$name.rss.base_mb" "$(awk -v b="$before" 'BEGIN {printf "%.1f", b / 1024}')"
  record "$name.rss.per_conn_kb" "$(awk -v a="$after" -v b="$before" -v n="$IDLE_CONNS" \
    'BEGIN {printf "%.2f", (a - b) / n}')"
  sleep 1  # closed connections drain before the next proxy is measured
}

# e. Discovery propagation, sluice and HAProxy at once: a new redis instance
# that alone holds the key sluice_bench_marker is registered; helpers.py runs
# the nsupdate itself and starts the clock when it returns, then probes both
# proxies with fresh connections until each lands on the new instance.
measure_propagation() {
  mkdir -p "$T/propagation"
  local round port stats jitter q0 q1 t0 t1
  q0=$(helper haproxy-sent "$T/haproxy.sock" consul); t0=$(date +%s.%N)
  for round in $(seq "$PROPAGATION_ROUNDS"); do
    port=${PROPAGATION_PORTS[round - 1]}
    spawn "$LOAD_CPU" "$T/redis-$port.log" redis-server --port "$port" --bind 127.0.0.1 \
      --save '' --appendonly no --daemonize no --dir "$T"
    local rpid=$SPAWNED
    wait_tcp "$port"
    redis-cli -p "$port" set sluice_bench_marker "new-$port" >/dev/null
    # A random 0-1 s pause, so that the update falls at a random point of the
    # proxies' 1 s polling cycles rather than at the same one every round.
    printf -v jitter '0.%03d' $((RANDOM % 1000))
    sleep "$jitter"
    helper propagate "$T/propagation/$round.json" "new-$port" sluice="$SL_REDIS" haproxy="$HP_REDIS" \
      -- integration/consul-dns.sh add "$T/dns" redis "extra$round" 127.0.0.1 "$port"
    echo "   round $round: $(cat "$T/propagation/$round.json")" >&2
    # Back to one instance; give both proxies time to drop the extra one.
    dns del redis "extra$round" 127.0.0.1 "$port"
    sleep 2.5
    kill "$rpid"; wait "$rpid" 2>/dev/null || true
  done
  # HAProxy's own polling rate, to compare with sluice's (scale step): SRV
  # queries per name per second, over its two names (redis, iperf).
  q1=$(helper haproxy-sent "$T/haproxy.sock" consul); t1=$(date +%s.%N)
  record haproxy.dns_qps_per_name "$(awk -v q="$((q1 - q0))" -v t0="$t0" -v t1="$t1" \
    'BEGIN {printf "%.2f", q / 2 / (t1 - t0)}')"
  for name in sluice haproxy; do
    stats=$(helper propagation-stats "$T/propagation" "$name")
    read -r median min max <<<"$stats"
    record "$name.propagation.median_ms" "$median"
    record "$name.propagation.min_ms" "$min"
    record "$name.propagation.max_ms" "$max"
  done
}

# f. A second sluice following SCALE_SERVICES services × SCALE_INSTANCES
# instances, one listener each, refresh 1s: its CPU share of one core in a
# steady state, and how many lookups it really did meanwhile (/metrics).
measure_scale() {
  local metrics_port=$SCALE_METRICS_PORT ports=("${SCALE_PORTS[@]}")
  # SRV targets point at ports nothing listens on: no connection is made here.
  helper scale-nsupdate "$DNS_PORT" "$SCALE_SERVICES" "$SCALE_INSTANCES" 30000 >"$T/scale.nsupdate"
  nsupdate -v "$T/scale.nsupdate"   # -v: TCP, the batches are larger than a UDP datagram
  local last=$((SCALE_SERVICES - 1)) got
  got=$(dig +short +tcp @127.0.0.1 -p "$DNS_PORT" "svc$last.service.consul" SRV | wc -l)
  [ "$got" = "$SCALE_INSTANCES" ] || { echo "svc$last has $got SRV records" >&2; return 1; }

  helper scale-config "$DNS_PORT" "$metrics_port" "${ports[@]}" >"$T/scale.toml"
  "$SLUICE" --check --config "$T/scale.toml"
  spawn "$PROXY_CPU" "$T/scale.log" "$SLUICE" --config "$T/scale.toml"
  local pid=$SPAWNED
  wait_tcp "$metrics_port"; wait_tcp "${ports[last]}"
  sleep 5  # first lookups of every service, allocations settle
  local url=http://127.0.0.1:$metrics_port/metrics hz t0 t1 c0 c1 l0 l1
  hz=$(getconf CLK_TCK)
  l0=$(helper lookups "$url" ok)
  c0=$(cpu_ticks "$pid"); t0=$(date +%s.%N)
  sleep "$SCALE_SECONDS"
  c1=$(cpu_ticks "$pid"); t1=$(date +%s.%N)
  l1=$(helper lookups "$url" ok)
  record scale.cpu_percent "$(awk -v c="$((c1 - c0))" -v hz="$hz" -v t0="$t0" -v t1="$t1" \
    'BEGIN {printf "%.2f", 100 * c / hz / (t1 - t0)}')"
  record scale.lookups_per_sec "$(awk -v l="$((l1 - l0))" -v t0="$t0" -v t1="$t1" \
    'BEGIN {printf "%.0f", l / (t1 - t0)}')"
  record sluice.dns_qps_per_name "$(awk -v l="$((l1 - l0))" -v t0="$t0" -v t1="$t1" -v n="$SCALE_SERVICES" \
    'BEGIN {printf "%.2f", l / n / (t1 - t0)}')"
  record scale.rss_mb "$(awk -v k="$(rss_kb "$pid")" 'BEGIN {printf "%.1f", k / 1024}')"
  kill "$pid"
}

# g. UDP echo through the proxy: 8 flows, 8 datagrams in flight each.
measure_udp() {
  local name=$1 port=$2 out=$T/udp-$1.json row dps p50 p99 lost received
  on_load_cpu "$UDPLOAD" load "127.0.0.1:$port" --clients 8 --window 8 --seconds "$UDP_SECONDS" --size 64 >"$out"
  row=$(helper json-get "$out" datagrams_per_sec p50_us p99_us lost received)
  read -r dps p50 p99 lost received <<<"$row"
  [ "$received" -gt 0 ] || { echo "no datagram came back through 127.0.0.1:$port" >&2; return 1; }
  record "$name.udp.dps" "$dps"; record "$name.udp.p50_us" "$p50"
  record "$name.udp.p99_us" "$p99"; record "$name.udp.lost" "$lost"
}

# h. A flood of UDP sources into one sluice listener: the flow table stays at
# max_flows and memory with it.
measure_udp_flood() {
  local before after answered
  before=$(rss_kb "$SLUICE_PID")
  answered=$(on_load_cpu python3 "$HELPERS" udp-flood "$SL_FLOOD" "$FLOOD_SOURCES")
  after=$(rss_kb "$SLUICE_PID")
  record sluice.flood.sources "$FLOOD_SOURCES"
  record sluice.flood.answered "$answered"
  record sluice.flood.rss_before_mb "$(awk -v b="$before" 'BEGIN {printf "%.1f", b / 1024}')"
  record sluice.flood.rss_after_mb "$(awk -v a="$after" 'BEGIN {printf "%.1f", a / 1024}')"
  record sluice.flood.kb_per_flow "$(awk -v a="$after" -v b="$before" -v n="$FLOOD_MAX_FLOWS" \
    'BEGIN {printf "%.2f", (a - b) / n}')"
}

record_meta() {
  record meta.date "$(date -u '+%Y-%m-%d %H:%M UTC')"
  record meta.nproc "$(nproc)"
  record meta.kernel "$(uname -r)"
  record meta.cpu "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | sed -n 1p)"
  record meta.sluice "$("$SLUICE" --version)"
  record meta.haproxy "$(haproxy -v 2>&1 | sed -n 1p)"
  record meta.nginx "$(nginx -v 2>&1)"
  record meta.redis "$(redis-server --version)"
  record meta.iperf3 "$(iperf3 --version | sed -n 1p)"
  record meta.named "$(named -v)"
  record meta.proxy_cpu "$PROXY_CPU"
  record meta.load_cpu "$LOAD_CPU"
  record meta.propagation_rounds "$PROPAGATION_ROUNDS"
  record meta.scale "$SCALE_SERVICES×$SCALE_INSTANCES"
  record meta.flood_max_flows "$FLOOD_MAX_FLOWS"
  record meta.params "redis-benchmark -c 50 -n $REQUESTS (new conns: -k 0 -n $CONNS), iperf3 -t $IPERF_SECONDS, $IDLE_CONNS idle connections, scale CPU over ${SCALE_SECONDS}s, UDP ${UDP_SECONDS}s."
}

# ------------------------------------------------------------------- main

install_deps
build
# 2000 idle connections and 1000 listeners need more than the usual 1024 fds;
# everything started from here on inherits this (the hard limit if lower:
# HAProxy maxconn 6000 needs ~15k with splice pipes).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

log "starting backends, BIND, sluice, HAProxy, nginx (temp dir $T)"
start_backends
start_dns
start_sluice
start_haproxy
start_nginx
# Each proxy has found the redis backend (HAProxy resolves asynchronously).
for port in "$REDIS_PORT" "$SL_REDIS" "$HP_REDIS" "$NG_REDIS"; do wait_redis "$port"; done
record_meta

# Ports for the measurements that start processes of their own (taken here,
# in the main shell: take_port in a step's subshell would not advance).
PROPAGATION_PORTS=() SCALE_PORTS=()
for _ in $(seq "$PROPAGATION_ROUNDS"); do take_port p; PROPAGATION_PORTS+=("$p"); done
take_port SCALE_METRICS_PORT
for _ in $(seq "$SCALE_SERVICES"); do take_port p; SCALE_PORTS+=("$p"); done

TARGETS=(direct sluice haproxy nginx)
declare -A REDIS_AT=([direct]=$REDIS_PORT [sluice]=$SL_REDIS [haproxy]=$HP_REDIS [nginx]=$NG_REDIS)
declare -A IPERF_AT=([direct]=$IPERF_PORT [sluice]=$SL_IPERF [haproxy]=$HP_IPERF [nginx]=$NG_IPERF)
declare -A PID_OF=([sluice]=$SLUICE_PID [haproxy]=$HAPROXY_PID [nginx]=$NGINX_PID)
declare -A UDP_AT=([direct]=$ECHO_PORT [sluice]=$SL_UDP [nginx]=$NG_UDP)

# Idle memory first, while the proxies are fresh (no allocator high-water mark yet).
for t in sluice haproxy nginx; do step "idle RSS: $t" measure_idle_rss "$t" "${REDIS_AT[$t]}" "${PID_OF[$t]}"; done
for t in "${TARGETS[@]}"; do step "redis PING/GET: $t" measure_redis "$t" "${REDIS_AT[$t]}"; done
for t in "${TARGETS[@]}"; do step "new connections/s: $t" measure_newconn "$t" "${REDIS_AT[$t]}"; done
for t in "${TARGETS[@]}"; do step "iperf3: $t" measure_iperf "$t" "${IPERF_AT[$t]}"; done
for t in direct sluice nginx; do step "UDP echo: $t" measure_udp "$t" "${UDP_AT[$t]}"; done
step "UDP flood: $FLOOD_SOURCES sources" measure_udp_flood
step "discovery propagation: sluice vs haproxy" measure_propagation
# Last: it adds SCALE_SERVICES × SCALE_INSTANCES records to the zone.
step "scale: $SCALE_SERVICES×$SCALE_INSTANCES services, CPU" measure_scale

helper render "$RESULTS" "$REPO/bench/RESULTS.md"
log "wrote bench/RESULTS.md"
