#!/usr/bin/env bash
# A stand-in for Consul's DNS interface: BIND 9 serving an authoritative
# `consul.` zone on 127.0.0.1:PORT with TTL 0, answering SRV queries the way
# Consul does, with records changed live through nsupdate.
#   <svc>.service.consul, _<svc>._tcp.service.consul, <tag>.<svc>.service.consul
#     SRV 1 1 <port> <node>.node.dc1.consul.  (A record as glue in the additional section)
#   NODE "-" gives Consul's address-style target <hex-ip>.addr.dc1.consul.
# usage: consul-dns.sh start DIR [PORT]
#        consul-dns.sh add|del DIR SERVICE NODE|- IPV4 PORT [TAG]
#        consul-dns.sh stop DIR
# needs: bind9 bind9-dnsutils (named, nsupdate, dig)
set -euo pipefail
cmd=$1; dir=$2; shift 2
case $cmd in
start)
  port=${1:-8600}; mkdir -p "$dir"; dir=$(cd "$dir" && pwd); echo "$port" >"$dir/port"
  cat >"$dir/named.conf" <<CONF
options { directory "$dir"; listen-on port $port { 127.0.0.1; }; listen-on-v6 { none; };
  recursion no; pid-file "$dir/named.pid"; dnssec-validation no; minimal-responses no;
  max-udp-size 4096; edns-udp-size 4096; notify no; };
controls { };
zone "consul" { type master; file "$dir/consul.zone"; allow-update { 127.0.0.1; }; journal "$dir/consul.zone.jnl"; };
CONF
  cat >"$dir/consul.zone" <<ZONE
\$TTL 0
@ IN SOA ns.consul. hostmaster.consul. ( 1 3600 600 86400 0 )
@ IN NS ns.consul.
ns IN A 127.0.0.1
ZONE
  rm -f "$dir/consul.zone.jnl"
  # -u only where we are root (CI); a developer's own user needs none.
  user=(); [ "$(id -u)" = 0 ] && user=(-u root)
  named -c "$dir/named.conf" "${user[@]}" -p "$port" 2>"$dir/named.err" || { cat "$dir/named.err" >&2; exit 1; }
  for _ in $(seq 100); do
    dig +short +time=1 +tries=1 @127.0.0.1 -p "$port" ns.consul A >/dev/null 2>&1 && exit 0
    sleep 0.1
  done
  echo "named did not start on port $port" >&2; exit 1;;
add|del)
  svc=$1 node=$2 ip=$3 sport=$4 tag=${5:-}; port=$(cat "$dir/port")
  if [ "$node" = - ]; then target=$(printf '%02x%02x%02x%02x' ${ip//./ }).addr.dc1.consul.
  else target=$node.node.dc1.consul.; fi
  names="$svc.service.consul. _$svc._tcp.service.consul."
  [ -n "$tag" ] && names="$names $tag.$svc.service.consul. _$svc._$tag.service.consul."
  {
    echo "server 127.0.0.1 $port"
    for n in $names; do
      if [ "$cmd" = add ]; then echo "update add $n 0 SRV 1 1 $sport $target"
      else echo "update delete $n SRV 1 1 $sport $target"; fi
    done
    [ "$cmd" = add ] && echo "update add $target 0 A $ip"
    echo send
  } | nsupdate;;
stop)
  [ -f "$dir/named.pid" ] && kill "$(cat "$dir/named.pid")" 2>/dev/null || true;;
*) echo "usage: $0 start|add|del|stop DIR ..." >&2; exit 2;;
esac
