#!/usr/bin/env python3
"""The fiddly parts of bench/run.sh: parsing tool output, the probes that need
millisecond timing or thousands of sockets, generated configs, and the final
markdown. One subcommand per job; run.sh calls them as `helpers.py CMD ARGS`.
"""

import csv
import json
import os
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


def propagate(out_path, marker, *rest):
    """Run the DNS update command after `--`, then probe every NAME=PORT proxy
    with fresh connections (`GET marker`) until one lands on the new instance,
    which alone holds the key. Writes {"NAME": ms or null} to OUT_PATH; the clock
    starts when the update command (nsupdate) has returned."""
    split = rest.index("--")
    proxies = dict(p.split("=") for p in rest[:split])
    command = list(rest[split + 1:])
    request = "GET sluice_bench_marker\r\n".encode()
    result = {name: None for name in proxies}
    subprocess.run(command, check=True)
    t0 = time.monotonic()

    def probe(name, port):
        while time.monotonic() - t0 < 10:
            try:
                with socket.create_connection(("127.0.0.1", int(port)), timeout=1) as s:
                    s.sendall(request)
                    reply = s.recv(256)
                if marker.encode() in reply:
                    result[name] = round((time.monotonic() - t0) * 1000, 1)
                    return
            except OSError:
                pass  # a backend just removed or not up yet: keep probing
            time.sleep(0.002)

    threads = [threading.Thread(target=probe, args=item) for item in proxies.items()]
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


# ---------------------------------------------------------------- rendering


def fnum(v, digits=0):
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}"


def render(results_path, out_path):
    r, meta = {}, {}
    with open(results_path) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("\t")
            if key.startswith("meta."):
                meta[key[5:]] = value
            else:
                try:
                    r[key] = float(value)
                except ValueError:
                    r[key] = None  # "failed", "n/a"

    def g(k):
        return r.get(k)

    tcp_targets = ["direct", "sluice", "haproxy", "nginx"]
    md = [
        "# sluice benchmark",
        "",
        f"- date: {meta.get('date', '?')}",
        f"- machine: {meta.get('nproc', '?')} CPUs, {meta.get('cpu', '?')}, kernel {meta.get('kernel', '?')}",
        f"- sluice: `{meta.get('sluice', '?')}`",
        f"- HAProxy: `{meta.get('haproxy', '?')}` (nbthread 1, SRV via `resolvers`, `option splice-auto`)",
        f"- nginx: `{meta.get('nginx', '?')}` (worker_processes 1, stream module, static upstreams)",
        f"- redis: `{meta.get('redis', '?')}`; iperf3: `{meta.get('iperf3', '?')}`; BIND: `{meta.get('named', '?')}`",
        f"- pinning: proxies on CPU {meta.get('proxy_cpu', '?')} (`taskset`); load generators, backends and "
        f"BIND on CPU {meta.get('load_cpu', '?')}. \"direct\" = client straight to the backend, no proxy.",
        f"- everything on loopback, one run of `bench/run.sh`; {meta.get('params', '')}",
        "",
        "## TCP",
        "",
        "| | direct | sluice | haproxy | nginx | sluice/haproxy |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def row(label, key, digits=0):
        vals = [g(f"{t}.{key}") for t in tcp_targets]
        cells = [fnum(v, digits) for v in vals]
        md.append(f"| {label} | " + " | ".join(cells) + f" | {ratio(vals[1], vals[2])} |")

    def row_pair(label, k1, k2, digits=3):
        cells, ratios = [], []
        for t in tcp_targets:
            cells.append(f"{fnum(g(f'{t}.{k1}'), digits)} / {fnum(g(f'{t}.{k2}'), digits)}")
        ratios = f"{ratio(g(f'sluice.{k1}'), g(f'haproxy.{k1}'))} / {ratio(g(f'sluice.{k2}'), g(f'haproxy.{k2}'))}"
        md.append(f"| {label} | " + " | ".join(cells) + f" | {ratios} |")

    row("redis PING ops/s (50 connections)", "ping.rps")
    row_pair("redis PING p50 / p99 ms", "ping.p50", "ping.p99")
    row("redis GET ops/s", "get.rps")
    row_pair("redis GET p50 / p99 ms", "get.p50", "get.p99")
    row("new connections/s (redis-benchmark -k 0)", "newconn.rps")
    row("iperf3 single stream Gbit/s", "iperf.gbps", 2)
    row("RSS per idle proxied connection, KB", "rss.per_conn_kb", 1)
    row("proxy RSS before idle test, MB", "rss.base_mb", 1)
    md += [
        "",
        "Ratios are sluice ÷ HAProxy: above 1 is better for ops/s, conn/s and Gbit/s, worse for latency and RSS.",
        "",
        "## Discovery",
        "",
        "| | sluice | haproxy | sluice/haproxy |",
        "|---|---:|---:|---:|",
    ]
    s_med, h_med = g("sluice.propagation.median_ms"), g("haproxy.propagation.median_ms")
    spread = lambda t: f"{fnum(g(f'{t}.propagation.min_ms'))}–{fnum(g(f'{t}.propagation.max_ms'))}"
    md.append(
        f"| new instance → first connection on it, ms (median of {meta.get('propagation_rounds', '?')}; "
        f"min–max) | {fnum(s_med)} ({spread('sluice')}) | {fnum(h_med)} ({spread('haproxy')}) | "
        f"{ratio(s_med, h_med)} |"
    )
    s_q, h_q = g("sluice.dns_qps_per_name"), g("haproxy.dns_qps_per_name")
    md.append(f"| SRV queries per name per second (polling rate) | {fnum(s_q, 2)} | {fnum(h_q, 2)} | {ratio(s_q, h_q)} |")
    md.append(
        f"| {meta.get('scale', '1000×10')} services×instances, refresh 1s: CPU % of one core | "
        f"{fnum(g('scale.cpu_percent'), 1)} | – | – |"
    )
    md.append(f"| … successful SRV lookups/s during that time | {fnum(g('scale.lookups_per_sec'))} | – | – |")
    md.append(f"| … RSS, MB | {fnum(g('scale.rss_mb'), 1)} | – | – |")
    md += [
        "",
        "Propagation: the clock starts when nsupdate has returned; probes open a fresh connection through",
        "each proxy every ~2 ms until one reaches the new redis instance; the update lands at a random point",
        "of the 1 s polling cycles. Polling rate: sluice's from the scale run, HAProxy's from `show resolvers`",
        "during the propagation rounds.",
        "",
        "## UDP (echo, 8 client flows × 8 datagrams in flight, 64-byte payloads)",
        "",
        "HAProxy has no UDP proxying, so it is not in this table.",
        "",
        "| | direct | sluice | nginx | sluice/nginx |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, key, d in [
        ("datagrams/s", "udp.dps", 0),
        ("p50 µs", "udp.p50_us", 1),
        ("p99 µs", "udp.p99_us", 1),
        ("lost", "udp.lost", 0),
    ]:
        vals = [g(f"{t}.{key}") for t in ("direct", "sluice", "nginx")]
        md.append(f"| {label} | " + " | ".join(fnum(v, d) for v in vals) + f" | {ratio(vals[1], vals[2])} |")
    flows = meta.get("flood_max_flows", "?")
    md += [
        "",
        f"UDP flood: {fnum(g('sluice.flood.sources'))} datagrams from as many source addresses into a sluice",
        f"listener with max_flows = {flows}: {fnum(g('sluice.flood.answered'))} answered; sluice RSS",
        f"{fnum(g('sluice.flood.rss_before_mb'), 1)} MB before, {fnum(g('sluice.flood.rss_after_mb'), 1)} MB after",
        f"({fnum(g('sluice.flood.kb_per_flow'), 2)} KB per tracked flow; the table stays at max_flows).",
    ]
    failed = sorted(k for k, v in r.items() if v is None)
    if failed:
        md += ["", "Not measured (step failed, see the log): " + ", ".join(k.removeprefix("failed.") for k in failed)]
    text = "\n".join(md) + "\n"
    with open(out_path, "w") as f:
        f.write(text)
    print(text)


def median_ms(path_glob_dir, name):
    """median min max of NAME over the propagation round files in a directory."""
    values = []
    for fn in sorted(os.listdir(path_glob_dir)):
        with open(os.path.join(path_glob_dir, fn)) as f:
            v = json.load(f).get(name)
        if v is not None:
            values.append(v)
    if not values:
        sys.exit(f"no propagation measured for {name}")
    print(statistics.median(values), min(values), max(values))


COMMANDS = {
    "udp-flood": udp_flood,
    "free-ports": lambda n: free_ports(int(n)),
    "redis-csv": redis_csv,
    "iperf-gbps": iperf_gbps,
    "json-get": json_get,
    "idle-conns": idle_conns,
    "propagate": propagate,
    "propagation-stats": median_ms,
    "scale-nsupdate": scale_nsupdate,
    "scale-config": scale_config,
    "lookups": lookups,
    "haproxy-sent": haproxy_sent,
    "render": render,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit("usage: helpers.py " + "|".join(COMMANDS) + " ARGS...")
    COMMANDS[sys.argv[1]](*sys.argv[2:])
