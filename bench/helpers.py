#!/usr/bin/env python3
"""The fiddly parts of bench/run.sh: parsing tool output, the probes that need
millisecond timing or thousands of sockets, generated configs, and the final
markdown. One subcommand per job; run.sh calls them as `helpers.py CMD ARGS`.
"""

import csv
import json
import re
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request


def free_ports(n):
    """N distinct ports free for TCP and UDP on 127.0.0.1, below the kernel's
    ephemeral range, so the many client connections of the run cannot take
    one of them before its listener binds it."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_low = int(f.read().split()[0])
    ports = []
    start = 20000
    end = ephemeral_low if ephemeral_low > start + 2 * n else 65536
    for port in range(start, end):
        if len(ports) == n:
            break
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        ports.append(port)
    if len(ports) < n:
        sys.exit(f"only {len(ports)} free ports found, {n} needed")
    print(" ".join(map(str, ports)))


def redis_csv(path, test):
    """`rps p50_ms p99_ms` of TEST from redis-benchmark --csv output."""
    with open(path) as f:
        for row in csv.DictReader(f):
            if row["test"] == test:
                print(row["rps"], row["p50_latency_ms"], row["p99_latency_ms"])
                return
    sys.exit(f"{path}: no row for {test}")


def iperf_gbps(path):
    with open(path) as f:
        doc = json.load(f)
    if "error" in doc:
        sys.exit(f"{path}: iperf3: {doc['error']}")
    print(f"{doc['end']['sum_received']['bits_per_second'] / 1e9:.2f}")


def json_get(path, *keys):
    with open(path) as f:
        doc = json.loads(f.read().strip().splitlines()[-1])
    print(" ".join(str(doc[k]) for k in keys))


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def idle_conns(port, n, ready_file):
    """Open N connections through the proxy on PORT, make each carry one
    PING/PONG (so the proxy has its backend side open and its buffers in use),
    write READY_FILE, then hold them idle until killed."""
    raise_nofile()
    conns = []
    for _ in range(int(n)):
        s = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
        s.sendall(b"PING\r\n")
        conns.append(s)
    for s in conns:
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = s.recv(64)
            if not chunk:
                sys.exit("idle-conns: connection closed before PONG")
            reply += chunk
        if not reply.startswith(b"+PONG"):
            sys.exit(f"idle-conns: unexpected reply {reply!r}")
    with open(ready_file, "w") as f:
        f.write(f"{len(conns)}\n")
    while True:
        time.sleep(3600)


def udp_flood(port, n):
    """Send one datagram from each of N source addresses (127.3.x.y), waiting
    up to 0.2 s for its echo: every source becomes a flow in the proxy, paced
    so none is dropped on the way in. Prints how many were answered."""
    answered = 0
    for i in range(int(n)):
        src = f"127.3.{(i >> 8) & 255}.{i & 255}" if i < 65536 else f"127.4.{(i >> 8) & 255}.{i & 255}"
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, 0))
        s.settimeout(0.2)
        s.sendto(b"flood", ("127.0.0.1", int(port)))
        try:
            s.recv(64)
            answered += 1
        except OSError:
            pass
        s.close()
    print(answered)


def consul_put(consul_port, path, body=None):
    """A PUT to the Consul (stand-in) agent API on 127.0.0.1:CONSUL_PORT."""
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(f"http://127.0.0.1:{consul_port}{path}", data=data, method="PUT")
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()


def consul_register(consul_port, instance_id, service, address, port):
    consul_put(consul_port, "/v1/agent/service/register",
               {"ID": instance_id, "Name": service, "Address": address, "Port": int(port)})


def consul_deregister(consul_port, instance_id):
    consul_put(consul_port, f"/v1/agent/service/deregister/{instance_id}")


# A withdrawn instance counts as gone after this many fresh connections in a
# row missed it (with two instances, round-robin would alternate).
GONE_AFTER = 20


def propagate(out_path, change, marker, consul_port, instance_id, port, *rest):
    """CHANGE is `add` or `del`: the redis instance on PORT, which alone holds
    MARKER, is registered (or deregistered) in DNS by the command after `--`,
    then in Consul (stand-in on CONSUL_PORT) as INSTANCE_ID. Then every
    NAME=PORT proxy (NAME=PORT=consul: it follows Consul) is probed with fresh
    connections (`GET sluice_bench_marker`). `add`: until one lands on the new
    instance; `del`: until GONE_AFTER in a row miss it, the first of which
    counts. Writes {"NAME": ms or null} to OUT_PATH; each proxy's clock starts
    when its registry's update (nsupdate, the HTTP PUT) has returned."""
    split = rest.index("--")
    proxies = [p.split("=") for p in rest[:split]]
    command = list(rest[split + 1:])
    request = "GET sluice_bench_marker\r\n".encode()
    result = {p[0]: None for p in proxies}
    subprocess.run(command, check=True)
    t_dns = time.monotonic()
    if change == "add":
        consul_register(consul_port, instance_id, "redis", "127.0.0.1", port)
    else:
        consul_deregister(consul_port, instance_id)
    t_consul = time.monotonic()

    def probe(name, port, registry="dns"):
        t0 = t_consul if registry == "consul" else t_dns
        missed_since, missed = None, 0
        while time.monotonic() - t0 < 10:
            try:
                sent = time.monotonic()
                with socket.create_connection(("127.0.0.1", int(port)), timeout=1) as s:
                    s.sendall(request)
                    reply = s.recv(256)
                on_marker = marker.encode() in reply
            except OSError:
                continue  # a backend just removed or not up yet: keep probing
            if change == "add" and on_marker:
                result[name] = round((sent - t0) * 1000, 1)
                return
            if change == "del":
                if on_marker:
                    missed_since, missed = None, 0
                else:
                    missed_since = missed_since or sent
                    missed += 1
                    if missed == GONE_AFTER:
                        result[name] = round(max(missed_since - t0, 0) * 1000, 1)
                        return
            time.sleep(0.002)

    threads = [threading.Thread(target=probe, args=p) for p in proxies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(out_path, "w") as f:
        json.dump(result, f)


def scale_nsupdate(dns_port, services, instances, first_port):
    """nsupdate input registering SERVICES × INSTANCES: svcN.service.consul SRV
    records (Consul's node-style targets, A glue), 250 records per UPDATE."""
    services, instances, first_port = int(services), int(instances), int(first_port)
    lines = [f"server 127.0.0.1 {dns_port}"]
    for k in range(instances):
        lines += [f"update add scale{k}.node.dc1.consul. 0 A 127.0.0.1"]
    lines.append("send")
    pending = 0
    for n in range(services):
        for k in range(instances):
            lines.append(f"update add svc{n}.service.consul. 0 SRV 1 1 {first_port + k} scale{k}.node.dc1.consul.")
            pending += 1
            if pending == 250:
                lines.append("send")
                pending = 0
    if pending:
        lines.append("send")
    print("\n".join(lines))


def scale_config(dns_port, metrics_port, *ports):
    """sluice TOML with one TCP listener per port, listener i → service svc<i>."""
    out = [
        f'dns = "127.0.0.1:{dns_port}"',
        'refresh = "1s"',
        'shutdown_grace = "1s"',
        f'metrics = "127.0.0.1:{metrics_port}"',
    ]
    for i, port in enumerate(ports):
        out += ["", f"[listeners.svc{i}]", f'bind = "127.0.0.1:{port}"', f'service = "svc{i}"']
    print("\n".join(out))


def lookups(metrics_url, result):
    """Sum of sluice_discovery_lookups_total{result=RESULT} over all queries."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("sluice_discovery_lookups_total{") and f'result="{result}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    print(int(total))


def haproxy_sent(sock_path, section):
    """DNS queries HAProxy has sent for `resolvers SECTION` (stats socket)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock_path)
        s.sendall(b"show resolvers " + section.encode() + b"\n")
        text = b""
        while chunk := s.recv(65536):
            text += chunk
    sent = [int(line.split()[1]) for line in text.decode().splitlines() if line.strip().startswith("sent:")]
    if not sent:
        sys.exit(f"no resolver counters in: {text!r}")
    print(sum(sent))


RESERVED_NAMES = {"direct", "haproxy", "nginx", "pp", "scale", "meta", "failed"}


def variants(spec):
    """Parse SLUICE_VARIANTS: space-separated NAME:EXTRA, where EXTRA is TOML
    lines separated by ';' (spaces allowed: a word `NAME:...` with NAME made of
    letters, digits, '_' and '-' starts the next variant). Prints one
    `NAME<TAB>EXTRA` line per variant, EXTRA's lines trimmed, joined by ';'."""
    found = []
    for word in spec.split():
        m = re.match(r"([A-Za-z][A-Za-z0-9_-]*):(.*)$", word)
        if m:
            found.append([m.group(1), m.group(2)])
        elif found:
            found[-1][1] += " " + word
        else:
            sys.exit(f"SLUICE_VARIANTS: {word!r} comes before any NAME:")
    if not found:
        sys.exit("SLUICE_VARIANTS: no variant (e.g. 'sluice: sluice-copy:splice = false')")
    names = [name for name, _ in found]
    for name in names:
        if name in RESERVED_NAMES or names.count(name) > 1:
            sys.exit(f"SLUICE_VARIANTS: the name {name!r} is taken")
    for name, extra in found:
        lines = [line.strip() for line in extra.split(";") if line.strip()]
        print(f"{name}\t{';'.join(lines)}")


def strace_summary(path, conns):
    """From `strace -c` output: `SYSCALL<TAB>calls per connection` for every
    syscall, and `total`, over CONNS connections."""
    conns = int(conns)
    if conns <= 0:
        sys.exit(f"{path}: no connection counted")
    calls = {}
    with open(path) as f:
        for line in f:
            fields = line.split()
            # % time, seconds, usecs/call, calls, [errors,] syscall
            if len(fields) in (5, 6) and fields[3].isdigit():
                calls[fields[-1]] = int(fields[3])
    if "total" not in calls:
        sys.exit(f"{path}: no strace summary")
    for name, n in sorted(calls.items(), key=lambda item: -item[1]):
        print(f"{name}\t{n / conns:.3f}")


# ---------------------------------------------------------------- rendering


def fnum(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def compact(v, digits=0):
    """A spread bound, short: 85,123 → 85.1k, 1,078.6 → 1,079; small numbers as fnum."""
    if abs(v) >= 10000:
        return f"{v / 1000:,.1f}k"
    return fnum(v, 0 if abs(v) >= 100 else digits)


def plural(n, word):
    return f"{n} {word}" if n == 1 else f"{n or '?'} {word}s"


def median(values):
    nums = [v for v in values if v is not None]
    return statistics.median(nums) if nums else None


def cell(values, digits=0, expect=None):
    """`median (min–max)` of the rounds' VALUES (None: a round without a
    number). One value, or a spread that rounds away: just the median. Fewer
    numbers than EXPECT rounds: `k of n` in the parentheses."""
    nums = [v for v in values if v is not None]
    if not nums:
        return "–"
    notes = []
    low, high = compact(min(nums), digits), compact(max(nums), digits)
    if low != high:
        notes.append(f"{low}–{high}")
    if expect and len(nums) < expect:
        notes.append(f"{len(nums)} of {expect}")
    text = fnum(statistics.median(nums), digits)
    return f"{text} ({', '.join(notes)})" if notes else text


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}"


def table(header, rows):
    return [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


class Results:
    """results.tsv: KEY<TAB>VALUE lines, a key once per round. meta.* keys
    are text; others numbers, or None for a round without one ("failed",
    "None": a probe that never got there)."""

    def __init__(self, path):
        self.values, self.meta, self.failed = {}, {}, {}
        with open(path) as f:
            for line in f:
                key, _, value = line.rstrip("\n").partition("\t")
                if key.startswith("meta."):
                    self.meta[key[5:]] = value
                elif key.startswith("failed."):
                    # one entry per step, rounds counted: "iperf3: nginx [round 2/5]"
                    name = re.sub(r" \[round \d+/\d+\]$", "", key[7:])
                    self.failed[name] = self.failed.get(name, 0) + 1
                else:
                    try:
                        number = float(value)
                    except ValueError:
                        number = None
                    self.values.setdefault(key, []).append(number)

    def all(self, key):
        return self.values.get(key, [])

    def median(self, key):
        return median(self.all(key))

    def cell(self, key, digits=0, expect=None):
        return cell(self.all(key), digits, expect)

    def words(self, key, default=""):
        return self.meta.get(key, default).split()

    def count(self, key):
        return int(self.meta.get(key) or 0) or None


KEPT_FROM = "## Removed experiments"


def kept_by_hand(out_path):
    """What a run must not overwrite: out_path from its KEPT_FROM heading on
    (the write-ups of experiments that lost and were deleted), or ''."""
    try:
        with open(out_path) as f:
            old = f.read()
    except FileNotFoundError:
        return ""
    at = old.find(KEPT_FROM)
    return "" if at < 0 else "\n" + old[at:]


def render(results_path, out_path):
    R = Results(results_path)
    meta = R.meta
    rounds = R.count("rounds")
    variants = R.words("variants", "sluice")
    tcp = R.words("tcp_targets") or ["direct", *variants, "haproxy", "nginx"]
    idle_sizes = R.words("idle_conns")

    def names(ts):
        return " ".join(ts)

    def variant_extra(v):
        extra = meta.get(f"variant.{v}")
        return f"`{extra.replace(';', '; ')}`" if extra else "defaults"

    md = [
        "# sluice benchmark",
        "",
        f"- date: {meta.get('date', '?')}; the run took {meta.get('duration', '?')}",
        f"- machine: {meta.get('nproc', '?')} CPUs, {meta.get('cpu', '?')}, kernel {meta.get('kernel', '?')}",
        f"- sluice: `{meta.get('sluice', '?')}`; variants, each with its own listeners in the one sluice process: "
        + "; ".join(f"{v} ({variant_extra(v)})" for v in variants),
        f"- HAProxy: `{meta.get('haproxy', '?')}` (nbthread 1, SRV via `resolvers`, `option splice-auto`)",
        f"- nginx: `{meta.get('nginx', '?')}` (worker_processes 1, stream module, static upstreams)",
        f"- redis: `{meta.get('redis', '?')}`; iperf3: `{meta.get('iperf3', '?')}`; BIND: `{meta.get('named', '?')}`; "
        f"`{meta.get('strace', '?')}`",
        f"- pinning: proxies on CPU {meta.get('proxy_cpu', '?')} (`taskset`); load generators, backends and "
        f"BIND on CPU {meta.get('load_cpu', '?')}. \"direct\" = client straight to the backend, no proxy.",
        f"- method: everything on loopback; every comparison ran **{plural(rounds, 'round')}**, and round r took the "
        f"targets in their order rotated by r (round 1: {names(tcp)}; round 2: {names(tcp[1:] + tcp[:1])}; …), "
        "so no target always ran first or last. Each cell is the **median (min–max)** over the rounds "
        "(one number when the spread rounds away, `k of n` when only k rounds gave a number); "
        "ratios are of medians.",
        f"- {meta.get('params', '')}",
        "",
        "## TCP",
        "",
    ]
    ref = [("haproxy", "haproxy"), ("direct", "direct")]
    header = [""] + tcp + [f"{v} ÷ {r}" for v in variants for r, _ in ref]

    slack = meta.get("idle_slack", "?")
    raise_limit = "raise the hard limit: `ulimit -Hn`, `LimitNOFILE=`, `docker run --ulimit nofile=`"

    def idle(n):
        """N idle connections, and what was asked for when N stands in for more."""
        asked = meta.get(f"idle_asked.{n}")
        return f"{int(n):,} idle" + (f", for {int(asked):,}: see below" if asked else "")

    rows = [
        ("redis PING ops/s (50 connections)", "ping.rps", 0, rounds),
        ("redis GET ops/s", "get.rps", 0, rounds),
        ("redis PING p99 ms", "ping.p99", 3, rounds),
        ("redis GET p99 ms", "get.p99", 3, rounds),
        ("new connections/s (redis-benchmark -k 0)", "newconn.rps", 0, rounds),
        ("iperf3 single stream Gbit/s", "iperf.gbps", 2, rounds),
        *((f"RSS per idle proxied connection, KB ({idle(n)})", f"rss.per_conn_kb.{n}", 1, rounds)
          for n in idle_sizes),
        *((f"proxy RSS before the idle connections, MB (instance for {int(n):,})", f"rss.base_mb.{n}", 1, rounds)
          for n in idle_sizes),
    ]
    body = []
    for label, key, digits, expect in rows:
        line = [label] + [R.cell(f"{t}.{key}", digits, expect) for t in tcp]
        line += [ratio(R.median(f"{v}.{key}"), R.median(f"{r}.{key}")) for v in variants for r, _ in ref]
        body.append(line)
    md += table(header, body)
    md += [
        "",
        "Ratios: above 1 is better for ops/s, conn/s and Gbit/s, worse for latency and RSS.",
        "",
        "Idle memory: every size, target and round has a proxy process of its own, started for that "
        f"measurement alone and sized for its N plus {slack} (sluice: one listener with a static backend, the "
        "variant's settings and max_connections; HAProxy: nbthread 1, one `listen` with a static `server`, "
        "maxconn; nginx: worker_processes 1, a static upstream, worker_connections), pinned like the others. "
        "Its RSS (VmRSS, all its processes) is taken once one warm-up connection has carried a PING through "
        "to redis and closed, so one-time allocations (thread stacks, first-connection buffers) are in the "
        "base row; then N connections that have each carried one PING/PONG are held idle, the backend "
        "holding all N, and the cell is (RSS then − base) ÷ N. A fresh process every time, because a "
        "long-running one reuses the memory an earlier round freed and shows ~0 from the second round on. "
        "What a proxy allocates up front for its configured maximum (nginx's connection table, HAProxy's "
        "descriptor table) is in its base row, not in the per-connection one.",
    ]
    for n in idle_sizes:
        if meta.get(f"idle_skipped.{n}"):
            md += ["", f"RSS with {int(n):,} idle connections: not measured, {meta[f'idle_skipped.{n}']} "
                   f"({raise_limit})."]
        if meta.get(f"idle_asked.{n}"):
            md += ["", f"{int(n):,} idle connections instead of the {int(meta[f'idle_asked.{n}']):,} asked for: "
                   f"{meta.get(f'idle_why.{n}', '?')}; {int(n):,} is the largest hundred that fits "
                   f"(for the full count, {raise_limit})."]

    md += ["", "## PROXY protocol cost", ""]
    md += table(
        ["", "plain", "PROXY v2", "v2 ÷ plain"],
        [["new connections/s, client → sluice → nginx → redis", R.cell("pp.plain.newconn.rps", 0, rounds),
          R.cell("pp.v2.newconn.rps", 0, rounds), ratio(R.median("pp.v2.newconn.rps"), R.median("pp.plain.newconn.rps"))]],
    )
    md += [
        "",
        "sluice listeners with static backends: one with `proxy_protocol = \"v2\"` in front of an nginx stream "
        "server `listen ... proxy_protocol`, one without in front of a plain one; same redis-benchmark as "
        "new connections/s, the two alternating first.",
    ]
    if meta.get("pp", "ok") != "ok":
        md.append(f"Not measured: this sluice refuses the PROXY protocol listeners ({meta['pp']}).")

    strace_targets = R.words("strace_targets")
    md += ["", f"## Syscalls per proxied connection (strace -c -f, {meta.get('strace_conns', '?')} new connections)", ""]
    per = {t: {k.split(".", 2)[2]: R.median(k) for k in R.values if k.startswith(f"{t}.syscalls.")}
           for t in strace_targets}
    top = set()
    for t in strace_targets:
        calls = sorted((sc for sc in per[t] if sc not in ("total", "conns")), key=lambda sc: -per[t][sc])
        top.update(calls[:8])
    order = sorted(top, key=lambda sc: -max(per[t].get(sc) or 0 for t in strace_targets))
    body = [["**total**"] + [f"**{fnum(per[t].get('total'), 2)}**" for t in strace_targets]]
    body += [[f"`{sc}`"] + [fnum(per[t].get(sc, 0.0), 2) for t in strace_targets] for sc in order]

    def other(t):
        total = per[t].get("total")
        return None if total is None else total - sum(per[t].get(sc) or 0 for sc in order)

    body.append(["other"] + [fnum(other(t), 2) for t in strace_targets])
    body.append(["connections counted"] + [fnum(per[t].get("conns")) for t in strace_targets])
    md += table(["syscalls per connection"] + strace_targets, body)
    md += [
        "",
        "Every thread of the proxy traced while redis-benchmark -k 0 -c 10 ping_mbulk runs; calls divided by "
        "the connections the backend received. Background work in that window (sluice's and HAProxy's DNS "
        "polling, timers) is included; it is small against thousands of connections. Not a timing measure: "
        "run once, unpinned.",
    ]

    prop = R.words("propagation_targets") or [variants[0], "haproxy"]
    others = [t for t in prop if t != "haproxy"]
    prop_rounds = R.count("propagation_rounds")
    scale_rounds = R.count("scale_rounds")
    md += ["", "## Discovery", ""]
    header = [""] + prop + [f"{t} ÷ haproxy" for t in others]

    def drow(label, cells, meds):
        return [label] + cells + [ratio(meds.get(t), meds.get("haproxy")) for t in others]

    def only_first(key, digits):
        return [R.cell(key, digits, scale_rounds) if i == 0 else "–" for i in range(len(prop))]

    qps_key = {t: ("scale.dns_qps_per_name" if i == 0 else f"{t}.dns_qps_per_name") for i, t in enumerate(prop)}
    body = [
        drow(f"new instance → first connection on it, ms ({plural(prop_rounds, 'round')})",
             [R.cell(f"{t}.propagation.add.ms", 0, prop_rounds) for t in prop],
             {t: R.median(f"{t}.propagation.add.ms") for t in prop}),
        drow(f"deregistered instance → no new connection on it, ms ({plural(prop_rounds, 'round')})",
             [R.cell(f"{t}.propagation.del.ms", 0, prop_rounds) for t in prop],
             {t: R.median(f"{t}.propagation.del.ms") for t in prop}),
        drow("SRV queries per name per second (polling rate)",
             [R.cell(qps_key[t], 2) for t in prop], {t: R.median(qps_key[t]) for t in prop}),
        [f"{meta.get('scale', '1000×10')} services×instances, refresh 1s: CPU % of one core "
         f"({plural(scale_rounds, 'round')} of {meta.get('scale_seconds', '?')} s)"]
        + only_first("scale.cpu_percent", 1) + ["–"] * len(others),
        ["… successful SRV lookups/s during that time"] + only_first("scale.lookups_per_sec", 0) + ["–"] * len(others),
        ["… RSS, MB"] + only_first("scale.rss_mb", 1) + ["–"] * len(others),
    ]
    md += table(header, body)
    md += [
        "",
        "Propagation: sluice and HAProxy poll SRV records (refresh 1 s, BIND as Consul's DNS interface);",
        "sluice-consul is sluice with `discovery = \"consul\"`, watching the Consul HTTP API stand-in with",
        "blocking queries. Each proxy's clock starts when its registry's change has returned (nsupdate, or the",
        "`/v1/agent/service/register` PUT); probes open a fresh connection through each proxy every ~2 ms and",
        "count from when the first that lands on the new instance was sent (removal: the first of "
        f"{GONE_AFTER} in a row that miss it). Each change lands at a random point of the 1 s polling cycles. Cells: "
        "median (min–max). Polling rate: sluice's from the scale run, HAProxy's from `show resolvers` during the "
        "propagation rounds.",
        "",
        "## UDP (echo, 8 client flows × 8 datagrams in flight, 64-byte payloads)",
        "",
        "HAProxy has no UDP proxying, so it is not in this table.",
        "",
    ]
    udp = ["direct", "sluice", "nginx"]
    body = []
    for label, key, digits in [
        ("datagrams/s", "udp.dps", 0),
        ("p50 µs", "udp.p50_us", 1),
        ("p99 µs", "udp.p99_us", 1),
        ("lost", "udp.lost", 0),
    ]:
        body.append([label] + [R.cell(f"{t}.{key}", digits, rounds) for t in udp]
                    + [ratio(R.median(f"sluice.{key}"), R.median(f"{r}.{key}")) for r in ("nginx", "direct")])
    md += table([""] + udp + ["sluice ÷ nginx", "sluice ÷ direct"], body)
    flows = meta.get("flood_max_flows", "?")
    g = R.median
    md += [
        "",
        f"UDP flood: {fnum(g('sluice.flood.sources'))} datagrams from as many source addresses into a sluice",
        f"listener with max_flows = {flows}: {fnum(g('sluice.flood.answered'))} answered; sluice RSS",
        f"{fnum(g('sluice.flood.rss_before_mb'), 1)} MB before, {fnum(g('sluice.flood.rss_after_mb'), 1)} MB after",
        f"({fnum(g('sluice.flood.kb_per_flow'), 2)} KB per tracked flow; the table stays at max_flows).",
    ]
    if R.failed:
        md += ["", "Failed steps (see the log): " + ", ".join(
            name + (f" ({n} rounds)" if n > 1 else "") for name, n in sorted(R.failed.items()))]
    text = "\n".join(md) + "\n" + kept_by_hand(out_path)
    with open(out_path, "w") as f:
        f.write(text)
    print(text)


COMMANDS = {
    "udp-flood": udp_flood,
    "free-ports": lambda n: free_ports(int(n)),
    "redis-csv": redis_csv,
    "iperf-gbps": iperf_gbps,
    "json-get": json_get,
    "idle-conns": idle_conns,
    "propagate": propagate,
    "consul-register": consul_register,
    "scale-nsupdate": scale_nsupdate,
    "scale-config": scale_config,
    "lookups": lookups,
    "haproxy-sent": haproxy_sent,
    "variants": variants,
    "strace-summary": strace_summary,
    "render": render,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit("usage: helpers.py " + "|".join(COMMANDS) + " ARGS...")
    COMMANDS[sys.argv[1]](*sys.argv[2:])
