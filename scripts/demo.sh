#!/usr/bin/env bash
# sluice on a working default that shows discovery: BIND answering like Consul
# DNS on 127.0.0.1:8600, three redis-server instances registered in it, and
# sluice on 127.0.0.1:6400 in front of them. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

DNS_PORT=${DNS_PORT:-8600}
LISTEN=${LISTEN:-127.0.0.1:6400}
REDIS_PORTS=(${REDIS_PORTS:-7001 7002 7003})

scripts/deps.sh
cargo build --release --locked

work=$(mktemp -d)
cleanup() {
  for pid in "$work"/redis-*.pid; do [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null; done
  integration/consul-dns.sh stop "$work/dns"
  rm -rf "$work"
}
trap cleanup EXIT

integration/consul-dns.sh start "$work/dns" "$DNS_PORT"
n=0
for port in "${REDIS_PORTS[@]}"; do
  n=$((n + 1))
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --pidfile "$work/redis-$port.pid" --logfile "$work/redis-$port.log"
  integration/consul-dns.sh add "$work/dns" redis "node$n" 127.0.0.1 "$port"
done

port=${LISTEN##*:}
cat <<INFO

  Consul DNS stand-in: 127.0.0.1:$DNS_PORT   (dig @127.0.0.1 -p $DNS_PORT redis.service.consul SRV)
  redis instances:     ${REDIS_PORTS[*]}
  sluice:              $LISTEN -> redis.service.consul

  Try, in another terminal:
    redis-cli -p $port ping
    for i in 1 2 3 4; do redis-cli -p $port info server | grep tcp_port; done   # takes turns
    integration/consul-dns.sh del $work/dns redis node1 127.0.0.1 ${REDIS_PORTS[0]}   # gone within 1s
    integration/consul-dns.sh add $work/dns redis node1 127.0.0.1 ${REDIS_PORTS[0]}   # back within 1s

INFO
target/release/sluice --dns "127.0.0.1:$DNS_PORT" "$LISTEN:redis"
