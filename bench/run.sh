#!/usr/bin/env bash
# Side by side on loopback: direct vs sluice (one or more variants) vs
# HAProxy 2.6 vs nginx stream, for redis (redis-benchmark), new connections,
# bulk TCP (iperf3), idle connection memory, UDP echo, the PROXY protocol's
# cost, syscalls per connection, DNS SRV discovery and a 1000-service scale
# run. Writes bench/RESULTS.md and prints it.
#
#   bash bench/run.sh              # builds sluice + the udpload example first
#   SKIP_BUILD=1 bash bench/run.sh # use the binaries already in target/release
#   KEEP=1 ...                     # keep the temp dir (configs, logs, raw results) afterwards
#   ONLY='scale|UDP' ...           # only the steps whose names match this regex
#
# Rounds: one run is not trustworthy here (±20% run to run), so every
# comparison (redis, new connections, iperf3, UDP echo, idle RSS, PROXY
# protocol) runs ROUNDS rounds, and round r takes the targets in their order
# rotated by r (round 0: direct sluice haproxy nginx, round 1: sluice haproxy
# nginx direct, ...), so no target always goes first or last. RESULTS.md
# reports each cell as median (min–max) over the rounds; ratios are of medians.
#
# Knobs (environment; defaults in brackets):
#   ROUNDS [5]              rounds of every comparison
#   SLUICE_VARIANTS         ["sluice:"] space-separated NAME:EXTRA; EXTRA is TOML
#                           lines separated by ';', added to the variant's own redis
#                           and iperf listeners (all in the one sluice process), e.g.
#                           'sluice: sluice-copy:splice = false'
#   REQUESTS [200000]       redis-benchmark -n for PING/GET (50 connections)
#   CONNS [50000]           redis-benchmark -n for new connections/s (and PROXY protocol)
#   IPERF_SECONDS [5]       UDP_SECONDS [5]
#   IDLE_CONNS ["2000 10000"]  idle connections held for the RSS measure (each size
#                           needs 2×N descriptors and a few in a proxy: a size beyond
#                           the open-file hard limit is measured at the largest
#                           hundred that fits instead, and RESULTS.md says so)
#   STRACE_CONNS [2000]     new connections under strace -c (syscalls per connection)
#   PROPAGATION_ROUNDS [10] SCALE_ROUNDS [3] SCALE_SERVICES [1000] SCALE_INSTANCES [10]
#   SCALE_SECONDS [20]      FLOOD_SOURCES [100000] FLOOD_MAX_FLOWS [10000]
#   PROXY_CPU [0] LOAD_CPU [1]
#
# A quick try: ROUNDS=2 REQUESTS=5000 CONNS=2000 IPERF_SECONDS=1 IDLE_CONNS="200 500"
# SCALE_SERVICES=50 SCALE_SECONDS=3 SCALE_ROUNDS=1 UDP_SECONDS=1 FLOOD_SOURCES=2000
# PROPAGATION_ROUNDS=2.
#
# Pinning: the proxies run on PROXY_CPU, everything else (load generators,
# backends, BIND) on LOAD_CPU. So a proxy gets one core to itself and
# competes with no one; "direct" runs client and server on one core.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
ROUNDS=${ROUNDS:-5}
SLUICE_VARIANTS=${SLUICE_VARIANTS:-sluice:}
REQUESTS=${REQUESTS:-200000}
CONNS=${CONNS:-50000}
IPERF_SECONDS=${IPERF_SECONDS:-5}
IDLE_CONNS=${IDLE_CONNS:-2000 10000}
STRACE_CONNS=${STRACE_CONNS:-2000}
PROPAGATION_ROUNDS=${PROPAGATION_ROUNDS:-10}
SCALE_ROUNDS=${SCALE_ROUNDS:-3}
SCALE_SERVICES=${SCALE_SERVICES:-1000}
SCALE_INSTANCES=${SCALE_INSTANCES:-10}
SCALE_SECONDS=${SCALE_SECONDS:-20}
UDP_SECONDS=${UDP_SECONDS:-5}
FLOOD_SOURCES=${FLOOD_SOURCES:-100000}
FLOOD_MAX_FLOWS=${FLOOD_MAX_FLOWS:-10000}

SLUICE=${SLUICE:-$REPO/target/release/sluice}    # overridable, e.g. to try another build
UDPLOAD=${UDPLOAD:-$REPO/target/release/examples/udpload}
CONSUL_STANDIN=$REPO/target/release/examples/consul-standin
HELPERS=$REPO/bench/helpers.py
NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { echo "bench/run.sh: $*" >&2; exit 1; }
on_load_cpu() { taskset -c "$LOAD_CPU" "$@"; }
helper() { python3 "$HELPERS" "$@"; }

for knob in ROUNDS REQUESTS CONNS IPERF_SECONDS STRACE_CONNS PROPAGATION_ROUNDS SCALE_ROUNDS \
  SCALE_SERVICES SCALE_INSTANCES SCALE_SECONDS FLOOD_SOURCES FLOOD_MAX_FLOWS; do
  [[ ${!knob} =~ ^[1-9][0-9]*$ ]] || die "$knob must be a positive integer, not '${!knob}'"
done
read -ra IDLE_SIZES <<<"$IDLE_CONNS"
for n in "${IDLE_SIZES[@]}"; do [[ $n =~ ^[1-9][0-9]*$ ]] || die "IDLE_CONNS: '$n' is not a count"; done


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
  command -v strace >/dev/null || need+=(strace)
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
    cargo build --release --locked --bin sluice --example udpload --example consul-standin
  fi
  [ -x "$SLUICE" ] || die "missing $SLUICE"
  [ -x "$UDPLOAD" ] || die "missing $UDPLOAD"
  [ -x "$CONSUL_STANDIN" ] || die "missing $CONSUL_STANDIN"
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

# record KEY VALUE: one result, read by `helpers.py render`. A key measured
# in several rounds is recorded once per round; render takes the median.
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

# rotate R WORD...: the words, one a line, rotated left by R.
rotate() {
  local r=$1; shift
  local words=("$@") i
  for ((i = 0; i < $#; i++)); do printf '%s\n' "${words[(i + r) % $#]}"; done
}

# rounds LABEL TARGETS_ARRAY FN [ARG...]: ROUNDS rounds of the step
# `FN ARG... TARGET` for every target of the named array; round r takes the
# targets rotated by r. ROUND (0-based) is set for the measurement.
rounds() {
  local label=$1 fn=$3 r t
  local -n targets_=$2
  shift 3
  for ((r = 0; r < ROUNDS; r++)); do
    ROUND=$r
    for t in $(rotate "$r" "${targets_[@]}"); do
      step "$label: $t [round $((r + 1))/$ROUNDS]" "$fn" "$@" "$t"
    done
  done
}

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

# redis_info FIELD: a field of the backend redis's INFO (connected_clients,
# total_connections_received, ...). The asking connection counts itself.
redis_info() { redis-cli -p "$REDIS_PORT" info | tr -d '\r' | sed -n "s/^$1://p"; }

# wait_redis_clients OP N: until the backend's client count is OP N (-le or
# -ge; 30 s). -le: the proxy has closed the backend side of the connections
# just closed; -ge: it has opened the backend side of those just made.
wait_redis_clients() {
  local now
  for _ in $(seq 300); do
    now=$(redis_info connected_clients)
    test "$now" "$1" "$2" && return 0
    sleep 0.1
  done
  echo "the backend has $now clients (waited for $1 $2)" >&2; return 1
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

max() { local m=$1 v; for v in "$@"; do ((v > m)) && m=$v; done; echo "$m"; }

# ------------------------------------------------------------ processes

# Every port, picked once in the main shell (take_port in a step's subshell
# would not advance), below the ephemeral range (see helpers.py).
allocate_ports() {
  local v p
  read -ra PORTS <<<"$(helper free-ports $((28 + 3 * ${#VARIANTS[@]} + PROPAGATION_ROUNDS + SCALE_SERVICES)))"
  PORT_INDEX=0
  take_port REDIS_PORT; take_port IPERF_PORT; take_port ECHO_PORT; take_port DNS_PORT
  take_port SL_UDP; take_port SL_FLOOD; take_port SL_PP_V2; take_port SL_PP_PLAIN
  take_port CONSUL_PORT; take_port SL_CONSUL_REDIS
  for v in "${VARIANTS[@]}"; do
    take_port p; SL_REDIS[$v]=$p
    take_port p; SL_IPERF[$v]=$p
  done
  take_port HP_REDIS; take_port HP_IPERF
  take_port NG_REDIS; take_port NG_IPERF; take_port NG_UDP; take_port NG_PP; take_port NG_PLAIN
  # The idle step's own instances, one target at a time, a port each.
  for v in "${VARIANTS[@]}" haproxy nginx; do take_port p; IDLE_AT[$v]=$p; done
  PROPAGATION_PORTS=() SCALE_PORTS=()
  for _ in $(seq "$PROPAGATION_ROUNDS"); do take_port p; PROPAGATION_PORTS+=("$p"); done
  take_port SCALE_METRICS_PORT
  for _ in $(seq "$SCALE_SERVICES"); do take_port p; SCALE_PORTS+=("$p"); done
}
take_port() { printf -v "$1" '%s' "${PORTS[PORT_INDEX]}"; PORT_INDEX=$((PORT_INDEX + 1)); }
declare -A SL_REDIS=() SL_IPERF=() IDLE_AT=()

start_backends() {
  spawn "$LOAD_CPU" "$T/redis.log" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
    --save '' --appendonly no --daemonize no --dir "$T" --maxclients "$(max 10000 $((IDLE_MAX + 1000)))"
  spawn "$LOAD_CPU" "$T/iperf3-server.log" iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT"
  spawn "$LOAD_CPU" "$T/udpecho.log" "$UDPLOAD" echo "127.0.0.1:$ECHO_PORT"
  wait_tcp "$REDIS_PORT"; wait_tcp "$IPERF_PORT"
}

# BIND as Consul's DNS interface; SRV records for the three backends.
start_dns() {
  on_load_cpu integration/consul-dns.sh start "$T/dns" "$DNS_PORT"
  dns add redis redis1 127.0.0.1 "$REDIS_PORT"
  dns add iperf iperf1 127.0.0.1 "$IPERF_PORT"
  dns add udpecho udpecho1 127.0.0.1 "$ECHO_PORT"
}

# The stand-in for Consul's HTTP API (test-support/src/consul_standin.rs), with
# the redis backend registered, for the sluice listener that watches it.
start_consul() {
  spawn "$LOAD_CPU" "$T/consul.log" "$CONSUL_STANDIN" "$CONSUL_PORT"
  wait_tcp "$CONSUL_PORT"
  helper consul-register "$CONSUL_PORT" redis1 redis 127.0.0.1 "$REDIS_PORT"
}

# tcp_listener NAME PORT LINES: a [listeners.NAME] table bound to
# 127.0.0.1:PORT, with LINES (TOML, separated by ';', empty ones skipped).
tcp_listener() {
  local line lines
  printf '\n[listeners.%s]\nbind = "127.0.0.1:%s"\n' "$1" "$2"
  IFS=';' read -ra lines <<<"$3"
  for line in "${lines[@]}"; do
    if [ -n "$line" ]; then echo "$line"; fi
  done
}

# sluice_toml WITH_NEW: the one sluice process's configuration: per variant a
# redis and an iperf listener (its extra lines appended), the UDP listeners,
# and with WITH_NEW=1 the listeners that need a recent sluice: the two of the
# PROXY protocol step, and redis through Consul's HTTP API (propagation step).
sluice_toml() {
  local v
  [ "$1" = 1 ] && echo "consul = \"127.0.0.1:$CONSUL_PORT\""
  cat <<EOF
dns = "127.0.0.1:$DNS_PORT"
refresh = "1s"
shutdown_grace = "1s"

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
  for v in "${VARIANTS[@]}"; do
    tcp_listener "redis-$v" "${SL_REDIS[$v]}" "service = \"redis\";${VARIANT_EXTRA[$v]}"
    tcp_listener "iperf-$v" "${SL_IPERF[$v]}" "service = \"iperf\";${VARIANT_EXTRA[$v]}"
  done
  if [ "$1" = 1 ]; then
    # PROXY protocol cost: sluice → nginx (reading the header, or not) → redis.
    tcp_listener pp-v2 "$SL_PP_V2" "backends = [\"127.0.0.1:$NG_PP\"];proxy_protocol = \"v2\""
    tcp_listener pp-plain "$SL_PP_PLAIN" "backends = [\"127.0.0.1:$NG_PLAIN\"]"
    tcp_listener redis-consul "$SL_CONSUL_REDIS" "service = \"redis\";discovery = \"consul\""
  fi
}

# Sets NEW_OK=1 if this sluice takes the listeners of a recent sluice
# (sluice_toml), else 0 and NEW_WHY; a configuration refused without them (a
# bad variant) stops the run.
start_sluice() {
  sluice_toml 1 >"$T/sluice.toml"
  if "$SLUICE" --check --config "$T/sluice.toml" >"$T/sluice-check.log" 2>&1; then
    NEW_OK=1
  else
    NEW_OK=0
    # shellcheck disable=SC2016  # the backquotes are sluice's, in its message
    NEW_WHY=$(grep -m1 -o 'unknown field `[a-z_]*`' "$T/sluice-check.log" || sed -n '$p' "$T/sluice-check.log")
    sluice_toml 0 >"$T/sluice.toml"
    "$SLUICE" --check --config "$T/sluice.toml" || die "sluice refuses $T/sluice.toml (SLUICE_VARIANTS?)"
    log "this sluice refuses the PROXY protocol and Consul listeners ($NEW_WHY): they will be skipped"
  fi
  spawn "$PROXY_CPU" "$T/sluice.log" "$SLUICE" --config "$T/sluice.toml"
  SLUICE_PID=$SPAWNED
  local v
  for v in "${VARIANTS[@]}"; do wait_tcp "${SL_REDIS[$v]}"; done
}

# haproxy_head MAXCONN MAXPIPES [GLOBAL_LINE...]: the global and defaults
# sections every HAProxy here shares (one thread, TCP, splice where it
# pays off, the timeouts), with GLOBAL_LINEs added to global.
haproxy_head() {
  local line
  printf 'global\n    nbthread 1\n    maxconn %s\n    maxpipes %s\n' "$1" "$2"
  for line in "${@:3}"; do printf '    %s\n' "$line"; done
  cat <<EOF

defaults
    mode tcp
    option splice-auto
    timeout connect 2s
    timeout client 10m
    timeout server 10m
    maxconn $1
EOF
}

# run_haproxy CFG LOG: check CFG, then start HAProxy on it, pinned (SPAWNED).
run_haproxy() {
  haproxy -c -q -f "$1"
  spawn "$PROXY_CPU" "$2" haproxy -db -f "$1"
}

# (HP_* and NG_* ports are set by allocate_ports, through take_port.)
# HAProxy follows the SRV records itself (server-template + resolvers), the
# way one would run it against Consul without a config templater. maxpipes
# 1500 is what maxconn 6000 gives by default, written out.
# shellcheck disable=SC2153
start_haproxy() {
  local srv_opts="resolvers consul init-addr none resolve-prefer ipv4"
  {
    # the stats socket only for "show resolvers" (DNS queries sent), read by
    # the propagation step
    haproxy_head 6000 1500 "stats socket $T/haproxy.sock mode 600 level admin"
    cat <<EOF

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
  } >"$T/haproxy.cfg"
  run_haproxy "$T/haproxy.cfg" "$T/haproxy.log"
  HAPROXY_PID=$SPAWNED
  wait_tcp "$HP_REDIS"
}

# nginx_head DIR WORKER_CONNECTIONS: the start of an nginx configuration
# (one worker, the stream module) with its files in DIR; the caller writes
# the stream block.
nginx_head() {
  cat <<EOF
load_module $NGINX_STREAM_MODULE;
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;

events { worker_connections $2; }
EOF
}

# run_nginx DIR: check DIR/nginx.conf, then start nginx on it, pinned
# (SPAWNED: the master). All its files under DIR (-p prefix, -e log).
run_nginx() {
  nginx -q -t -p "$1" -e "$1/error.log" -c "$1/nginx.conf"
  spawn "$PROXY_CPU" "$1/stderr.log" nginx -p "$1" -e "$1/error.log" -c "$1/nginx.conf"
}

# Open-source nginx cannot follow SRV records: static upstreams, as a
# templater would write them.
# shellcheck disable=SC2153
start_nginx() {
  mkdir -p "$T/nginx"
  {
    nginx_head "$T/nginx" 8000
    cat <<EOF

stream {
    proxy_connect_timeout 2s;

    upstream redis   { server 127.0.0.1:$REDIS_PORT; }
    upstream iperf   { server 127.0.0.1:$IPERF_PORT; }
    upstream udpecho { server 127.0.0.1:$ECHO_PORT; }

    server { listen 127.0.0.1:$NG_REDIS; proxy_pass redis; proxy_timeout 10m; }
    server { listen 127.0.0.1:$NG_IPERF; proxy_pass iperf; proxy_timeout 10m; }

    # The backends of sluice's pp-v2 and pp-plain listeners (PROXY protocol cost).
    server { listen 127.0.0.1:$NG_PP proxy_protocol; proxy_pass redis; proxy_timeout 10m; }
    server { listen 127.0.0.1:$NG_PLAIN; proxy_pass redis; proxy_timeout 10m; }

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
  } >"$T/nginx/nginx.conf"
  run_nginx "$T/nginx"
  NGINX_PID=$SPAWNED
  wait_tcp "$NG_REDIS"
}

# ----------------------------------------------------------- measurements
# Each takes the target's name last and finds its ports in the maps set up
# in main (REDIS_AT, IPERF_AT, UDP_AT, PID_OF) or allocate_ports (IDLE_AT).

# a. redis-benchmark PING and GET, 50 connections. -t ping runs PING_INLINE
# and PING_MBULK; PING_MBULK (RESP, what client libraries send) is "PING".
measure_redis() {
  local name=$1 out=$T/redis-$1-$ROUND.csv row rps p50 p99
  on_load_cpu redis-benchmark -h 127.0.0.1 -p "${REDIS_AT[$name]}" -c 50 -n "$REQUESTS" -t ping,get --csv \
    >"$out" 2>"$out.err"
  row=$(helper redis-csv "$out" PING_MBULK)
  read -r rps p50 p99 <<<"$row"
  record "$name.ping.rps" "$rps"; record "$name.ping.p50" "$p50"; record "$name.ping.p99" "$p99"
  row=$(helper redis-csv "$out" GET)
  read -r rps p50 p99 <<<"$row"
  record "$name.get.rps" "$rps"; record "$name.get.p50" "$p50"; record "$name.get.p99" "$p99"
}

# b. New connections per second through PORT: -k 0 reconnects for every
# request. Only ping_mbulk (plain -t ping would run inline too, doubling the
# connections and the TIME_WAIT sockets for no extra information).
newconn_rps() {  # newconn_rps PORT OUT_CSV: prints the rate
  local row
  on_load_cpu redis-benchmark -h 127.0.0.1 -p "$1" -k 0 -c 50 -n "$CONNS" -t ping_mbulk --csv >"$2" 2>"$2.err"
  row=$(helper redis-csv "$2" PING_MBULK)
  echo "${row%% *}"
}
measure_newconn() {
  local name=$1 rps
  rps=$(newconn_rps "${REDIS_AT[$name]}" "$T/newconn-$name-$ROUND.csv")
  record "$name.newconn.rps" "$rps"
  sleep 1  # let the closing sockets settle before the next target
}

# c. One iperf3 stream; the receiver's rate.
measure_iperf() {
  local name=$1 out=$T/iperf-$1-$ROUND.json gbps
  on_load_cpu iperf3 -c 127.0.0.1 -p "${IPERF_AT[$name]}" -t "$IPERF_SECONDS" -J >"$out" || true  # error is in the JSON
  gbps=$(helper iperf-gbps "$out")
  record "$name.iperf.gbps" "$gbps"
}

# d. Memory per idle proxied connection. Every (size, target, round) gets a
# proxy process of its own that has never held connections: a long-running
# one reuses the memory an earlier round freed, and from round 2 on showed
# ~0 KB per connection. Its RSS (all its processes) is taken after one
# warm-up connection through to redis has come and gone (so the one-time
# allocations of a first connection are in the base), and again while N
# connections, each having carried one PING, sit idle.
#
# Each instance is sized for its N (maxconn, max_connections, nginx's
# worker_connections): N + IDLE_SLACK connections. HAProxy gets only
# IDLE_MAXPIPES pipes: idle connections move no bytes to splice, and it
# makes pipes on demand, so maxpipes only reserves descriptors (2 each).
IDLE_SLACK=10
IDLE_MAXPIPES=10

# idle_fds N: descriptors a proxy needs for N idle connections: HAProxy's
# own reckoning (2 per connection and per pipe, + 14), which it will not
# start without; sluice and nginx need 2 per connection and a few.
idle_fds() { echo $((2 * ($1 + IDLE_SLACK) + 2 * IDLE_MAXPIPES + 14)); }

# idle_proxy N TARGET PORT DIR: start a fresh TARGET (a sluice variant,
# haproxy or nginx) for N idle connections, on 127.0.0.1:PORT in front of
# the redis backend (a static address), its files in DIR. SPAWNED: its pid.
idle_proxy() {
  local n=$1 name=$2 port=$3 dir=$4
  local conns=$((n + IDLE_SLACK)) backend=127.0.0.1:$REDIS_PORT
  case $name in
    haproxy)
      {
        haproxy_head "$conns" "$IDLE_MAXPIPES"
        printf '\nlisten redis\n    bind 127.0.0.1:%s\n    server redis %s\n' "$port" "$backend"
      } >"$dir/haproxy.cfg"
      run_haproxy "$dir/haproxy.cfg" "$dir/haproxy.log"
      ;;
    nginx)
      {
        # both sides of every connection, the listener, the master's channel
        nginx_head "$dir" $((2 * conns + 10))
        printf '\nstream {\n    proxy_connect_timeout 2s;\n    upstream redis { server %s; }\n' "$backend"
        printf '    server { listen 127.0.0.1:%s; proxy_pass redis; proxy_timeout 10m; }\n}\n' "$port"
      } >"$dir/nginx.conf"
      run_nginx "$dir"
      ;;
    *)
      {
        echo 'shutdown_grace = "1s"'
        tcp_listener redis "$port" "backends = [\"$backend\"];max_connections = $conns;${VARIANT_EXTRA[$name]}"
      } >"$dir/sluice.toml"
      "$SLUICE" --check --config "$dir/sluice.toml" >"$dir/sluice-check.log"
      spawn "$PROXY_CPU" "$dir/sluice.log" "$SLUICE" --config "$dir/sluice.toml"
      ;;
  esac
}

measure_idle_rss() {
  local n=$1 name=$2 port=${IDLE_AT[$2]} dir=$T/idle/$2-$1-$ROUND clients0 pid probe='' before after
  mkdir -p "$dir"
  clients0=$(redis_info connected_clients)
  idle_proxy "$n" "$name" "$port" "$dir"
  pid=$SPAWNED
  # Whatever happens, the instance and the connections go before the next step.
  trap 'kill $probe "$pid" 2>/dev/null || true' EXIT
  wait_redis "$port"                     # the warm-up connection: PING, PONG, closed
  wait_redis_clients -le "$clients0"     # ... on the backend side too
  sleep 1  # let the proxy settle (freed handshake buffers)
  before=$(rss_kb "$pid")
  spawn "$LOAD_CPU" "$dir/idle-conns.log" python3 "$HELPERS" idle-conns "$port" "$n" "$dir/ready"
  probe=$SPAWNED
  for _ in $(seq 1200); do [ -s "$dir/ready" ] && break; kill -0 "$probe" 2>/dev/null || break; sleep 0.1; done
  [ -s "$dir/ready" ] || { cat "$dir/idle-conns.log" >&2; echo "idle connections not established" >&2; return 1; }
  wait_redis_clients -ge $((clients0 + n))  # the backend holds all N
  sleep 1  # likewise
  after=$(rss_kb "$pid")
  kill "$probe"; wait "$probe" 2>/dev/null || true
  wait_redis_clients -le "$clients0" || true  # the proxy closed their backend side (its exit would too)
  kill "$pid"; wait "$pid" 2>/dev/null || true  # its port is free for the next round
  trap - EXIT
  record "$name.rss.base_mb.$n" "$(awk -v b="$before" 'BEGIN {printf "%.1f", b / 1024}')"
  record "$name.rss.per_conn_kb.$n" "$(awk -v a="$after" -v b="$before" -v n="$n" \
    'BEGIN {printf "%.2f", (a - b) / n}')"
}

# e. Discovery propagation: a new redis instance that alone holds the key
# sluice_bench_marker is registered in DNS (nsupdate to BIND) and in Consul
# (the stand-in's HTTP API); helpers.py makes both changes itself, starts
# each proxy's clock when its registry's change has returned, then probes
# every target of PROPAGATION_TARGETS at once with fresh connections until
# each lands on the new instance. Then the instance is deregistered, and
# timed until each stops sending connections to it.
#
# To add a target: start it, add its name to PROPAGATION_TARGETS and its
# redis listener's port to PROPAGATION_AT (in main), with `=consul` after
# the port if it follows Consul's HTTP API rather than DNS.
propagation_dns() {  # add|del ROUND PORT
  integration/consul-dns.sh "$1" "$T/dns" redis "extra$2" 127.0.0.1 "$3"
}
measure_propagation() {
  mkdir -p "$T/propagation"
  local round port jitter q0 q1 t0 t1 name change probes=()
  for name in "${PROPAGATION_TARGETS[@]}"; do probes+=("$name=${PROPAGATION_AT[$name]}"); done
  export T
  export -f propagation_dns
  q0=$(helper haproxy-sent "$T/haproxy.sock" consul); t0=$(date +%s.%N)
  for round in $(seq "$PROPAGATION_ROUNDS"); do
    port=${PROPAGATION_PORTS[round - 1]}
    spawn "$LOAD_CPU" "$T/redis-$port.log" redis-server --port "$port" --bind 127.0.0.1 \
      --save '' --appendonly no --daemonize no --dir "$T"
    local rpid=$SPAWNED
    wait_tcp "$port"
    redis-cli -p "$port" set sluice_bench_marker "new-$port" >/dev/null
    for change in add del; do
      # A random 0-1 s pause, so that the change falls at a random point of
      # the proxies' 1 s polling cycles rather than at the same one every round.
      printf -v jitter '0.%03d' $((RANDOM % 1000))
      sleep "$jitter"
      helper propagate "$T/propagation/$round-$change.json" "$change" "new-$port" "$CONSUL_PORT" \
        "extra$round" "$port" "${probes[@]}" \
        -- bash -c 'set -euo pipefail; propagation_dns "$@"' _ "$change" "$round" "$port"
      echo "   round $round, $change: $(cat "$T/propagation/$round-$change.json")" >&2
      for name in "${PROPAGATION_TARGETS[@]}"; do
        record "$name.propagation.$change.ms" "$(helper json-get "$T/propagation/$round-$change.json" "$name")"
      done
    done
    kill "$rpid"; wait "$rpid" 2>/dev/null || true
  done
  # HAProxy's own polling rate, to compare with sluice's (scale step): SRV
  # queries per name per second, over its two names (redis, iperf).
  q1=$(helper haproxy-sent "$T/haproxy.sock" consul); t1=$(date +%s.%N)
  record haproxy.dns_qps_per_name "$(awk -v q="$((q1 - q0))" -v t0="$t0" -v t1="$t1" \
    'BEGIN {printf "%.2f", q / 2 / (t1 - t0)}')"
}

# f. A second sluice following SCALE_SERVICES services × SCALE_INSTANCES
# instances, one listener each, refresh 1s: its CPU share of one core in a
# steady state, and how many lookups it really did meanwhile (/metrics).
# The records are registered once; each round starts a fresh sluice.
scale_register() {
  # SRV targets point at ports nothing listens on: no connection is made here.
  helper scale-nsupdate "$DNS_PORT" "$SCALE_SERVICES" "$SCALE_INSTANCES" 30000 >"$T/scale.nsupdate"
  nsupdate -v "$T/scale.nsupdate"   # -v: TCP, the batches are larger than a UDP datagram
  local last=$((SCALE_SERVICES - 1)) got
  got=$(dig +short +tcp @127.0.0.1 -p "$DNS_PORT" "svc$last.service.consul" SRV | wc -l)
  [ "$got" = "$SCALE_INSTANCES" ] || { echo "svc$last has $got SRV records" >&2; return 1; }
  helper scale-config "$DNS_PORT" "$SCALE_METRICS_PORT" "${SCALE_PORTS[@]}" >"$T/scale.toml"
  "$SLUICE" --check --config "$T/scale.toml"
  touch "$T/scale.ready"
}
measure_scale() {
  [ -e "$T/scale.ready" ] || { echo "the scale records are not registered" >&2; return 1; }
  local last=$((SCALE_SERVICES - 1))
  spawn "$PROXY_CPU" "$T/scale-$ROUND.log" "$SLUICE" --config "$T/scale.toml"
  local pid=$SPAWNED
  wait_tcp "$SCALE_METRICS_PORT"; wait_tcp "${SCALE_PORTS[last]}"
  sleep 5  # first lookups of every service, allocations settle
  local url=http://127.0.0.1:$SCALE_METRICS_PORT/metrics hz t0 t1 c0 c1 l0 l1
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
  record scale.dns_qps_per_name "$(awk -v l="$((l1 - l0))" -v t0="$t0" -v t1="$t1" -v n="$SCALE_SERVICES" \
    'BEGIN {printf "%.2f", l / n / (t1 - t0)}')"
  record scale.rss_mb "$(awk -v k="$(rss_kb "$pid")" 'BEGIN {printf "%.1f", k / 1024}')"
  kill "$pid"; wait "$pid" 2>/dev/null || true  # its ports are free for the next round
}

# g. UDP echo through the proxy: 8 flows, 8 datagrams in flight each.
measure_udp() {
  local name=$1 port=${UDP_AT[$1]} out=$T/udp-$1-$ROUND.json row dps p50 p99 lost received
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

# i. The PROXY protocol's cost: new connections/s through sluice → nginx →
# redis, with sluice sending a v2 header (nginx `listen ... proxy_protocol`)
# or not (a plain nginx server). KIND is plain or v2.
measure_pp() {
  local kind=$1 port=${PP_AT[$1]} rps
  wait_redis "$port"  # the chain works (nginx accepts sluice's header)
  rps=$(newconn_rps "$port" "$T/pp-$kind-$ROUND.csv")
  record "pp.$kind.newconn.rps" "$rps"
  sleep 1
}
pp_unsupported() { echo "this sluice has no PROXY protocol listeners ($NEW_WHY)" >&2; return 1; }

# j. Syscalls per proxied connection: strace -c -f on the whole proxy process
# (every thread) while STRACE_CONNS new connections pass; the connections are
# counted at the backend (INFO total_connections_received; the two INFO
# connections themselves taken out). Not a timing measure: once, unpinned.
measure_syscalls() {
  local name=$1 pid=${PID_OF[$1]} out=$T/strace-$1.txt err=$T/strace-$1.err spid c0 c1 sc v
  c0=$(redis_info total_connections_received)
  strace -c -f -p "$pid" -o "$out" 2>"$err" &
  spid=$!
  track "$spid"
  # Whatever happens, strace lets go of the proxy before the next step.
  trap 'kill -INT "$spid" 2>/dev/null || true' EXIT
  for _ in $(seq 100); do grep -q attached "$err" && break; sleep 0.05; done
  grep -q attached "$err" || { cat "$err" >&2; return 1; }
  sleep 0.5  # every thread attached
  on_load_cpu redis-benchmark -h 127.0.0.1 -p "${REDIS_AT[$name]}" -k 0 -c 10 -n "$STRACE_CONNS" \
    -t ping_mbulk -q >"$T/strace-$name.bench" 2>&1
  c1=$(redis_info total_connections_received)
  kill -INT "$spid"; wait "$spid" 2>/dev/null || true  # strace detaches and writes its summary
  trap - EXIT
  helper strace-summary "$out" $((c1 - c0 - 1)) >"$T/strace-$name.tsv"
  while IFS=$'\t' read -r sc v; do record "$name.syscalls.$sc" "$v"; done <"$T/strace-$name.tsv"
  record "$name.syscalls.conns" $((c1 - c0 - 1))
}

record_meta() {
  local v
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
  record meta.strace "$(strace -V | sed -n 1p)"
  record meta.proxy_cpu "$PROXY_CPU"
  record meta.load_cpu "$LOAD_CPU"
  record meta.rounds "$ROUNDS"
  record meta.variants "${VARIANTS[*]}"
  for v in "${VARIANTS[@]}"; do record "meta.variant.$v" "${VARIANT_EXTRA[$v]}"; done
  record meta.tcp_targets "${TCP_TARGETS[*]}"
  record meta.idle_conns "${IDLE_ROWS[*]}"
  record meta.idle_slack "$IDLE_SLACK"
  record meta.nofile "$NOFILE"
  record meta.strace_targets "${STRACE_TARGETS[*]}"
  record meta.strace_conns "$STRACE_CONNS"
  record meta.propagation_targets "${PROPAGATION_TARGETS[*]}"
  record meta.propagation_rounds "$PROPAGATION_ROUNDS"
  record meta.scale "$SCALE_SERVICES×$SCALE_INSTANCES"
  record meta.scale_rounds "$SCALE_ROUNDS"
  record meta.scale_seconds "$SCALE_SECONDS"
  record meta.flood_max_flows "$FLOOD_MAX_FLOWS"
  record meta.pp "$([ "$NEW_OK" = 1 ] && echo ok || echo "$NEW_WHY")"
  record meta.params "redis-benchmark -c 50 -n $REQUESTS (new conns: -k 0 -n $CONNS), iperf3 -t $IPERF_SECONDS, UDP ${UDP_SECONDS}s."
}

# ------------------------------------------------------------------- main

install_deps
build
# Sluice variants: VARIANTS (names, in order) and VARIANT_EXTRA[name] (TOML
# lines joined by ';'). helpers.py checks the names.
variant_lines=$(helper variants "$SLUICE_VARIANTS")
VARIANTS=()
declare -A VARIANT_EXTRA=()
while IFS=$'\t' read -r name extra; do
  VARIANTS+=("$name"); VARIANT_EXTRA[$name]=$extra
done <<<"$variant_lines"
# Thousands of idle connections and 1000 listeners need more than the usual
# 1024 fds; everything started from here on inherits this (the hard limit if
# lower). An idle-connection count N that a proxy cannot hold within it
# (idle_fds) is measured at the largest hundred that fits instead, which
# RESULTS.md says: better a row for 9,900 labelled so than none for 10,000.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
IDLE_FIT=$(((NOFILE - $(idle_fds 0)) / 2 / 100 * 100))
IDLE_RUN=() IDLE_ROWS=() IDLE_MAX=0  # sizes measured; rows of RESULTS.md (skipped ones too)
for n in "${IDLE_SIZES[@]}"; do
  m=$n
  if (($(idle_fds "$n") > NOFILE)); then
    why="a proxy holding $n needs $(idle_fds "$n") descriptors (HAProxy will not start with fewer),"
    why+=" the open-file limit here is $NOFILE"
    m=$IDLE_FIT
    if ((m <= 0)) || [[ " ${IDLE_RUN[*]} " == *" $m "* ]]; then
      ((m <= 0)) || why+="; the largest hundred that fits, $m, is measured already"
      log "idle RSS with $n connections skipped: $why"
      record "meta.idle_skipped.$n" "$why"
      IDLE_ROWS+=("$n")
      continue
    fi
    log "idle RSS with $n connections: $why; measuring $m instead"
    record "meta.idle_asked.$m" "$n"
    record "meta.idle_why.$m" "$why"
  fi
  IDLE_RUN+=("$m"); IDLE_ROWS+=("$m"); IDLE_MAX=$(max "$IDLE_MAX" "$m")
done

allocate_ports
log "starting backends, BIND, sluice (${VARIANTS[*]}), HAProxy, nginx (temp dir $T)"
start_backends
start_dns
start_consul
start_sluice
start_haproxy
start_nginx

# Targets of each comparison, in round 0's order (rounds takes the arrays by name).
TCP_TARGETS=(direct "${VARIANTS[@]}" haproxy nginx)
# shellcheck disable=SC2034
IDLE_TARGETS=("${VARIANTS[@]}" haproxy nginx)
# shellcheck disable=SC2034
UDP_TARGETS=(direct sluice nginx)
STRACE_TARGETS=("${VARIANTS[@]}" haproxy)
# shellcheck disable=SC2034
PP_KINDS=(plain v2)
declare -A REDIS_AT=([direct]=$REDIS_PORT [haproxy]=$HP_REDIS [nginx]=$NG_REDIS)
declare -A IPERF_AT=([direct]=$IPERF_PORT [haproxy]=$HP_IPERF [nginx]=$NG_IPERF)
declare -A PID_OF=([haproxy]=$HAPROXY_PID [nginx]=$NGINX_PID)
declare -A UDP_AT=([direct]=$ECHO_PORT [sluice]=$SL_UDP [nginx]=$NG_UDP)
declare -A PP_AT=([plain]=$SL_PP_PLAIN [v2]=$SL_PP_V2)
for v in "${VARIANTS[@]}"; do
  REDIS_AT[$v]=${SL_REDIS[$v]}; IPERF_AT[$v]=${SL_IPERF[$v]}; PID_OF[$v]=$SLUICE_PID
done
# Discovery propagation: every target follows the "redis" service (see e.).
PROPAGATION_TARGETS=("${VARIANTS[0]}" haproxy)
declare -A PROPAGATION_AT=([${VARIANTS[0]}]=${REDIS_AT[${VARIANTS[0]}]} [haproxy]=$HP_REDIS)
if [ "$NEW_OK" = 1 ]; then
  PROPAGATION_TARGETS=("${VARIANTS[0]}" sluice-consul haproxy)
  PROPAGATION_AT[sluice-consul]="$SL_CONSUL_REDIS=consul"
fi

# Each proxy has found the redis backend (HAProxy resolves asynchronously).
for t in "${TCP_TARGETS[@]}"; do wait_redis "${REDIS_AT[$t]}"; done
record_meta

# Idle memory (its own proxy instances) first, while the machine is quiet.
for n in "${IDLE_RUN[@]}"; do rounds "idle RSS ($n conns)" IDLE_TARGETS measure_idle_rss "$n"; done
rounds "redis PING/GET" TCP_TARGETS measure_redis
rounds "new connections/s" TCP_TARGETS measure_newconn
rounds "iperf3" TCP_TARGETS measure_iperf
rounds "UDP echo" UDP_TARGETS measure_udp
if [ "$NEW_OK" = 1 ]; then
  rounds "PROXY protocol cost" PP_KINDS measure_pp
else
  step "PROXY protocol cost" pp_unsupported
fi
for t in "${STRACE_TARGETS[@]}"; do step "syscalls per connection: $t" measure_syscalls "$t"; done
step "UDP flood: $FLOOD_SOURCES sources" measure_udp_flood
step "discovery propagation: ${PROPAGATION_TARGETS[*]}" measure_propagation
# Last: it adds SCALE_SERVICES × SCALE_INSTANCES records to the zone.
step "scale: $SCALE_SERVICES×$SCALE_INSTANCES services, registering" scale_register
for ((ROUND = 0; ROUND < SCALE_ROUNDS; ROUND++)); do
  step "scale: $SCALE_SERVICES×$SCALE_INSTANCES services, CPU [round $((ROUND + 1))/$SCALE_ROUNDS]" measure_scale
done

record meta.duration "$((SECONDS / 60)) min $((SECONDS % 60)) s"
helper render "$RESULTS" "$REPO/bench/RESULTS.md"
log "wrote bench/RESULTS.md"
