#!/usr/bin/env bash
# A stand-in for a Kubernetes cluster DNS (CoreDNS's kubernetes plugin): BIND 9
# serving an authoritative `cluster.local.` zone on 127.0.0.1:PORT with TTL 5
# (CoreDNS's default), holding the records of headless Services, changed live
# through nsupdate. For an endpoint IP:PORT of SERVICE in NAMESPACE, on the
# Service's TCP port named PORTNAME, as CoreDNS answers them
# (kubernetes/dns docs/specification.md 2.4; coredns plugin/backend_lookup.go):
#   _<portname>._tcp.<svc>.<ns>.svc.cluster.local.  SRV 0 <weight> <port> <host>.<svc>.<ns>.svc.cluster.local.
#   <svc>.<ns>.svc.cluster.local.                   SRV (every port name) and A <ip> (every endpoint)
#   <host>.<svc>.<ns>.svc.cluster.local.            SRV (the endpoint's ports) and A <ip>
#   <host> is the dashed IP (10-1-2-3), as for pods without spec.hostname;
#   <weight> is 100 / the records of that name, rounded down, at least 1;
#   the A records of SRV targets come in the additional section.
# usage: cluster-dns.sh start DIR [PORT]
#        cluster-dns.sh add|del DIR SERVICE NAMESPACE IPV4 PORT [PORTNAME]   (PORTNAME: redis)
#        cluster-dns.sh stop DIR
# needs: bind9 bind9-dnsutils (named, nsupdate, dig)
set -euo pipefail
ttl=5
cmd=$1; dir=$2; shift 2
case $cmd in
start)
  port=${1:-53}; mkdir -p "$dir"; dir=$(cd "$dir" && pwd); echo "$port" >"$dir/port"
  # minimal-responses no-auth: A records of SRV targets in the additional
  # section, but no NS in the authority section, which CoreDNS does not send.
  cat >"$dir/named.conf" <<CONF
options { directory "$dir"; listen-on port $port { 127.0.0.1; }; listen-on-v6 { none; };
  recursion no; pid-file "$dir/named.pid"; dnssec-validation no; minimal-responses no-auth;
  max-udp-size 4096; edns-udp-size 4096; notify no; };
controls { };
zone "cluster.local" { type master; file "$dir/cluster.zone"; allow-update { 127.0.0.1; }; journal "$dir/cluster.zone.jnl"; };
CONF
  # CoreDNS's SOA and NS for the zone: ns.dns.<zone>, minimum = the TTL.
  cat >"$dir/cluster.zone" <<ZONE
\$TTL $ttl
@ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. ( 1 7200 1800 86400 $ttl )
@ IN NS ns.dns.cluster.local.
ns.dns IN A 127.0.0.1
ZONE
  rm -f "$dir/cluster.zone.jnl" "$dir"/*.endpoints
  # -u only where we are root (CI); a developer's own user needs none.
  user=(); [ "$(id -u)" = 0 ] && user=(-u root)
  named -c "$dir/named.conf" "${user[@]}" -p "$port" 2>"$dir/named.err" || { cat "$dir/named.err" >&2; exit 1; }
  for _ in $(seq 100); do
    dig +short +time=1 +tries=1 @127.0.0.1 -p "$port" ns.dns.cluster.local A >/dev/null 2>&1 && exit 0
    sleep 0.1
  done
  echo "named did not start on port $port" >&2; exit 1;;
add|del)
  svc=$1 ns=$2 ip=$3 sport=$4 pname=${5:-redis}; port=$(cat "$dir/port")
  [[ $ip =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || { echo "not an IPv4 address: $ip" >&2; exit 2; }
  base=$svc.$ns.svc.cluster.local.
  # The service's endpoints, one "IP PORT PORTNAME" a line, before and after.
  eps=$dir/$svc.$ns.endpoints; touch "$eps"
  before=$(cat "$eps")
  if [ "$cmd" = add ]; then after=$(printf '%s\n%s\n' "$before" "$ip $sport $pname" | sed '/^$/d' | sort -u)
  else after=$(grep -vxF "$ip $sport $pname" <<<"$before" || true); fi
  # Endpoints whose field $1 is $2 (all of them for field 0), and CoreDNS's
  # weight for a name with that many SRV records.
  count() { awk -v f="$1" -v v="$2" 'NF && (f == 0 || $f == v)' <<<"$after" | wc -l; }
  weight() { local n; n=$(count "$@"); echo $((100 / n > 0 ? 100 / n : 1)); }
  # Every name of the service is deleted and written again from `after` in
  # one update, which BIND applies atomically: weights depend on how many
  # endpoints there are, and an A record stays while any endpoint has its IP.
  {
    echo "server 127.0.0.1 $port"
    echo "update delete $base"
    while read -r i _ p; do
      [ -n "$i" ] || continue
      echo "update delete ${i//./-}.$base"; echo "update delete _$p._tcp.$base"
    done <<<"$before"
    while read -r i sp p; do
      [ -n "$i" ] || continue
      host=${i//./-}.$base
      echo "update add _$p._tcp.$base $ttl SRV 0 $(weight 3 "$p") $sp $host"
      echo "update add $base $ttl SRV 0 $(weight 0 -) $sp $host"
      echo "update add $host $ttl SRV 0 $(weight 1 "$i") $sp $host"
      echo "update add $host $ttl A $i"
      echo "update add $base $ttl A $i"
    done <<<"$after"
    echo send
  } | nsupdate
  echo "$after" >"$eps";;
stop)
  [ -f "$dir/named.pid" ] && kill "$(cat "$dir/named.pid")" 2>/dev/null || true;;
*) echo "usage: $0 start|add|del|stop DIR ..." >&2; exit 2;;
esac
