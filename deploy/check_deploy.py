#!/usr/bin/env python3
"""Checks of deploy/ that no packaged tool does; run by deploy/check.sh.

    check_deploy.py systemd UNIT TOML
    check_deploy.py kubernetes DIR OUT_TOML
    check_deploy.py nomad JOB OUT_TOML
    check_deploy.py grafana DASHBOARD QUERIES_TXT OUT_DIR

Each prints one line per problem and exits 1 if there was any. The TOML that
a deployment hands sluice is written to OUT_TOML so that check.sh can give it
to `sluice --check`. `grafana` writes every panel expression to QUERIES_TXT
(one a line, Grafana variables left in) and, into OUT_DIR, rules.yml (for
`promtool check rules`: does each expression parse) and tests.yml (for
`promtool test rules`: does each return data from series shaped like
sluice's /metrics).

Needs Python >= 3.11 (tomllib); `kubernetes` and `grafana` need PyYAML,
`nomad` needs python-hcl2 (check.sh installs both in a venv).
"""

import json
import re
import sys
import textwrap
import tomllib

# --- the metrics contract ----------------------------------------------------
# name -> labels sluice puts on it (Prometheus adds the target's instance and job).
METRICS = {
    "sluice_listener_connections_total": {"listener"},
    "sluice_listener_active_connections": {"listener"},
    "sluice_udp_flows_active": {"listener"},
    "sluice_backend_connections_total": {"listener", "backend"},
    "sluice_backend_active_connections": {"listener", "backend"},
    "sluice_backend_connect_failures_total": {"listener", "backend"},
    "sluice_backend_ejections_total": {"listener", "backend"},
    "sluice_bytes_total": {"listener", "direction"},
    "sluice_backends": {"listener", "state"},
    "sluice_discovery_lookups_total": {"query", "result"},
    "sluice_discovery_last_success_timestamp_seconds": {"query"},
    "sluice_connection_duration_seconds_bucket": {"listener", "le"},
    "sluice_connection_duration_seconds_sum": {"listener"},
    "sluice_connection_duration_seconds_count": {"listener"},
    "sluice_build_info": {"version"},
    "process_cpu_seconds_total": set(),
    "process_resident_memory_bytes": set(),
    "process_open_fds": set(),
    "process_max_fds": set(),
}
COUNTERS = {m for m in METRICS if m.endswith(("_total", "_bucket", "_sum", "_count"))}
LABEL_VALUES = {
    "direction": {"client_to_backend", "backend_to_client"},
    "state": {"healthy", "unhealthy"},
    "result": {"ok", "error", "empty"},
}
TARGET_LABELS = {"instance", "job"}
DURATION_BUCKETS = ["0.001", "0.01", "0.1", "1", "10", "60", "600", "3600", "+Inf"]

problems = []


def problem(msg):
    problems.append(msg)
    print(f"  - {msg}")


def finish():
    sys.exit(1 if problems else 0)


def seconds(text):
    """humantime / systemd durations as used here: 500ms, 30s, 1m, 1min, 2h, 1h30m."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
    text = str(text).strip()
    if re.fullmatch(r"\d+", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def check_sluice_toml(text, where):
    """Parses a sluice config; returns it (a dict) or None."""
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problem(f"{where}: not valid TOML: {e}")
        return None
    listeners = cfg.get("listeners", {})
    if not listeners:
        problem(f"{where}: no [listeners.*] table")
    for name, l in listeners.items():
        sources = [k for k in ("service", "srv", "backends") if k in l]
        if len(sources) != 1:
            problem(f"{where}: listener {name}: exactly one of service/srv/backends, got {sources}")
        if "bind" not in l:
            problem(f"{where}: listener {name}: no bind")
    return cfg


def listener_ports(cfg):
    """{(port, protocol)} of a sluice config's listeners."""
    out = set()
    for l in cfg.get("listeners", {}).values():
        port = int(l["bind"].rsplit(":", 1)[1])
        out.add((port, l.get("protocol", "tcp")))
    return out


def shutdown_grace(cfg):
    return seconds(cfg.get("shutdown_grace", "30s"))


# --- systemd -----------------------------------------------------------------
def cmd_systemd(unit_path, toml_path):
    sections, cur = {}, None
    for n, raw in enumerate(open(unit_path, encoding="utf-8"), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            cur = sections.setdefault(line[1:-1], {})
            continue
        if cur is None or "=" not in line:
            problem(f"{unit_path}:{n}: not a key=value line in a section: {line!r}")
            continue
        k, v = line.split("=", 1)
        cur.setdefault(k.strip(), []).append(v.strip())
    svc = sections.get("Service", {})
    for s in ("Unit", "Service", "Install"):
        if s not in sections:
            problem(f"{unit_path}: no [{s}] section")
    want = {
        "Type": "notify",
        "ExecStart": "/usr/local/bin/sluice --config /etc/sluice/sluice.toml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure",
        "DynamicUser": "yes",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "LimitNOFILE": "1048576",
    }
    for k, v in want.items():
        got = svc.get(k)
        if got is None:
            problem(f"{unit_path}: [Service] has no {k}= (want {v})")
        elif got[-1] != v:
            problem(f"{unit_path}: [Service] {k}={got[-1]}, want {v}")
    families = " ".join(svc.get("RestrictAddressFamilies", [])).split()
    for fam in ("AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"):
        if fam not in families:
            problem(f"{unit_path}: RestrictAddressFamilies= lacks {fam}")
    if "WatchdogSec" in svc:
        problem(f"{unit_path}: WatchdogSec= is set, but sluice sends no WATCHDOG=1")
    cfg = check_sluice_toml(open(toml_path, encoding="utf-8").read(), toml_path)
    if cfg is not None and "TimeoutStopSec" in svc:
        stop, grace = seconds(svc["TimeoutStopSec"][-1]), shutdown_grace(cfg)
        if stop <= grace:
            problem(f"{unit_path}: TimeoutStopSec={stop:g}s is not above shutdown_grace={grace:g}s")
    elif "TimeoutStopSec" not in svc:
        problem(f"{unit_path}: no TimeoutStopSec= (the default 90s is unrelated to shutdown_grace)")
    finish()


# --- Kubernetes --------------------------------------------------------------
def cmd_kubernetes(directory, out_toml):
    import glob
    import yaml

    docs = []
    for path in sorted(glob.glob(f"{directory}/*.yaml")):
        for d in yaml.safe_load_all(open(path, encoding="utf-8")):
            if d is not None:
                docs.append((path, d))
    by_kind = {}
    for path, d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
    namespaces = {d["metadata"]["name"] for d in by_kind.get("Namespace", [])}
    for path, d in docs:
        ns = d["metadata"].get("namespace")
        if d["kind"] != "Namespace" and ns not in namespaces:
            problem(f"{path}: {d['kind']}/{d['metadata']['name']} in namespace {ns!r}, "
                    f"not one of {sorted(namespaces)}")
    (ds,) = by_kind.get("DaemonSet", [None]) or [None]
    if ds is None:
        problem(f"{directory}: no DaemonSet")
        finish()
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args = c.get("args", [])

    def arg(flag):
        return args[args.index(flag) + 1] if flag in args else None

    config_path = arg("--config") or "/etc/sluice/sluice.toml"
    metrics = arg("--metrics")
    mount = next((m for m in c.get("volumeMounts", [])
                  if config_path.startswith(m["mountPath"].rstrip("/") + "/")), None)
    cfg = None
    if mount is None:
        problem(f"DaemonSet: no volumeMount holds --config {config_path}")
    else:
        vol = next((v for v in pod.get("volumes", []) if v["name"] == mount["name"]), None)
        cm_name = (vol or {}).get("configMap", {}).get("name")
        cm = next((m for m in by_kind.get("ConfigMap", []) if m["metadata"]["name"] == cm_name), None)
        key = config_path[len(mount["mountPath"].rstrip("/")) + 1:]
        if cm is None or key not in cm.get("data", {}):
            problem(f"DaemonSet: --config {config_path} is key {key!r} of ConfigMap {cm_name!r}, "
                    "which does not exist")
        else:
            text = cm["data"][key]
            open(out_toml, "w", encoding="utf-8").write(text)
            cfg = check_sluice_toml(text, f"ConfigMap {cm_name} key {key}")
    ports = {p.get("name"): p for p in c.get("ports", [])}
    if metrics is None:
        problem("DaemonSet: no --metrics argument (or `metrics` in the config) for the probes")
        metrics_port = None
    else:
        metrics_port = int(metrics.rsplit(":", 1)[1])
    declared = {(p["containerPort"], p.get("protocol", "TCP").lower()) for p in c.get("ports", [])}
    if metrics_port is not None and (metrics_port, "tcp") not in declared:
        problem(f"DaemonSet: admin port {metrics_port} is not a containerPort")
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/healthz")):
        get = c.get(probe, {}).get("httpGet")
        if not get:
            problem(f"DaemonSet: no {probe}.httpGet")
            continue
        if get.get("path") != path:
            problem(f"DaemonSet: {probe} path {get.get('path')!r}, want {path}")
        port = get.get("port")
        port = ports[port]["containerPort"] if isinstance(port, str) and port in ports else port
        if port != metrics_port:
            problem(f"DaemonSet: {probe} port {port} is not the admin port {metrics_port}")
    ann = ds["spec"]["template"]["metadata"].get("annotations", {})
    if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/port") != str(metrics_port):
        problem(f"DaemonSet: prometheus.io annotations {ann} do not point at port {metrics_port}")
    sc, psc = c.get("securityContext", {}), pod.get("securityContext", {})
    if (sc.get("runAsUser") or psc.get("runAsUser")) != 10001:
        problem("DaemonSet: not runAsUser 10001")
    if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
        problem("DaemonSet: runAsNonRoot is not set")
    if sc.get("readOnlyRootFilesystem") is not True:
        problem("DaemonSet: readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        problem("DaemonSet: allowPrivilegeEscalation is not false")
    caps = sc.get("capabilities", {})
    if caps.get("drop") != ["ALL"] or caps.get("add") != ["NET_BIND_SERVICE"]:
        problem(f"DaemonSet: capabilities {caps}, want drop [ALL] add [NET_BIND_SERVICE]")
    if "resources" not in c:
        problem("DaemonSet: no resources")
    if pod.get("hostNetwork") and pod.get("dnsPolicy") != "ClusterFirstWithHostNet" \
            and (cfg or {}).get("dns") is None:
        problem("DaemonSet: hostNetwork without dnsPolicy ClusterFirstWithHostNet and no `dns` "
                "in the config: sluice would ask the node's resolver for cluster names")
    if cfg is not None:
        for port, proto in sorted(listener_ports(cfg) - declared):
            problem(f"DaemonSet: listener port {port}/{proto} is not a containerPort")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace <= shutdown_grace(cfg):
            problem(f"DaemonSet: terminationGracePeriodSeconds {grace} is not above "
                    f"shutdown_grace {shutdown_grace(cfg):g}s")
    finish()


# --- Nomad -------------------------------------------------------------------
def cmd_nomad(job_path, out_toml):
    import hcl2

    opts = hcl2.SerializationOptions(with_comments=False, explicit_blocks=False,
                                      preserve_heredocs=True, strip_string_quotes=True)
    try:
        doc = hcl2.load(open(job_path, encoding="utf-8"), serialization_options=opts)
    except Exception as e:  # the parser raises lark errors of several kinds
        problem(f"{job_path}: HCL2 does not parse: {e}")
        finish()

    def one(blocks, what):
        """A labelled block list [{label: body}] with one entry -> (label, body)."""
        if not isinstance(blocks, list) or len(blocks) != 1:
            problem(f"{job_path}: want exactly one {what}")
            finish()
        ((label, body),) = blocks[0].items()
        return label, body

    _, job = one(doc.get("job"), "job")
    if job.get("type") != "system":
        problem(f"{job_path}: job type {job.get('type')!r}, want system")
    if "update" not in job:
        problem(f"{job_path}: no update block")
    _, group = one(job.get("group"), "group")
    _, task = one(group.get("task"), "task")
    network = (group.get("network") or [{}])[0]
    ports = {}
    for p in network.get("port", []):
        ((name, body),) = p.items()
        ports[name] = body.get("static")
    driver = task.get("driver")
    config = (task.get("config") or [{}])[0]
    if driver == "docker":
        if config.get("network_mode") != "host":
            problem(f"{job_path}: docker task without network_mode = \"host\"")
        args = config.get("args", [])
    elif driver in ("raw_exec", "exec"):
        args = config.get("args", [])
    else:
        problem(f"{job_path}: driver {driver!r}, want docker, exec or raw_exec")
        args = []

    def arg(flag):
        return args[args.index(flag) + 1] if flag in args else None

    if arg("--dns") != "127.0.0.1:8600":
        problem(f"{job_path}: --dns {arg('--dns')!r}, want 127.0.0.1:8600 (the local Consul agent)")
    metrics = arg("--metrics") or ""
    m = re.fullmatch(r"\$\{NOMAD_(?:ADDR|IP)_(\w+)\}(?::\d+)?", metrics)
    if not m or m.group(1) not in ports:
        problem(f"{job_path}: --metrics {metrics!r} is not the address of a port of the group")
    checks = {}
    for s in group.get("service", []) + task.get("service", []):
        for chk in s.get("check", []):
            checks[chk.get("path")] = chk
    for path in ("/ready", "/healthz"):
        if checks.get(path, {}).get("type") != "http":
            problem(f"{job_path}: no http service check on {path}")
    if "check_restart" not in checks.get("/healthz", {}):
        problem(f"{job_path}: the /healthz check has no check_restart (liveness)")
    if "resources" not in task:
        problem(f"{job_path}: task has no resources")
    templates = task.get("template", [])
    config_path = arg("--config")
    tmpl = next((t for t in templates if "/" + t.get("destination", "").lstrip("/") == config_path
                 or config_path == "/" + t.get("destination", "")), None)
    if tmpl is None:
        problem(f"{job_path}: --config {config_path!r} is not the destination of a template")
        finish()
    if tmpl.get("change_mode") != "signal" or tmpl.get("change_signal") != "SIGHUP":
        problem(f"{job_path}: template should reload sluice with change_mode signal, SIGHUP")
    data = tmpl.get("data", "")
    hd = re.fullmatch(r"<<(-?)(\w+)\n(.*)\n[ \t]*\2", data, re.S)
    if hd:
        data = textwrap.dedent(hd.group(3)) if hd.group(1) else hd.group(3)
        data += "\n"
    if "{{" in data:
        problem(f"{job_path}: the template uses Go template actions; render it before checking")
    open(out_toml, "w", encoding="utf-8").write(data)
    cfg = check_sluice_toml(data, f"{job_path} template")
    if cfg is not None:
        static = {v for v in ports.values() if v}
        for port, proto in sorted(listener_ports(cfg)):
            if port not in static:
                problem(f"{job_path}: listener port {port}/{proto} is not a static port of the group")
        kill = seconds(task.get("kill_timeout", "5s"))
        if kill <= shutdown_grace(cfg):
            problem(f"{job_path}: kill_timeout {kill:g}s is not above shutdown_grace "
                    f"{shutdown_grace(cfg):g}s")
        if kill > 30:
            print(f"  note: kill_timeout {kill:g}s is above the Nomad client's default "
                  "max_kill_timeout (30s), which would cap it")
    finish()


# --- Grafana -----------------------------------------------------------------
TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){},])
""", re.X)
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "offset", "bool", "atan2", "inf", "nan"}
AGGREGATORS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
               "count_values", "bottomk", "topk", "quantile"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def tokens(expr):
    pos, out = 0, []
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot read PromQL at {expr[pos:pos + 20]!r}")
        pos = m.end()
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
    return out


def analyse(expr):
    """-> (metrics, matchers [(metric, label, op, value)], grouping labels, ranges,
    [(function, first metric inside)])"""
    toks = tokens(expr)
    metrics, matchers, grouping, ranges, calls = [], [], set(), [], []
    i, last_metric = 0, None
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else None
        if kind == "ident" and text in GROUPING and nxt == "(":
            j = i + 2
            while toks[j][1] != ")":
                if toks[j][0] == "ident":
                    grouping.add(toks[j][1])
                j += 1
            i = j + 1
            continue
        if kind == "ident" and nxt == "(" and text not in KEYWORDS:
            inner = next((t for k, t in toks[i + 2:] if k == "ident" and t in METRICS), None)
            calls.append((text, inner))
            i += 1
            continue
        if kind == "ident" and text in AGGREGATORS and nxt in GROUPING:
            i += 1
            continue
        if kind == "ident" and text not in KEYWORDS:
            metrics.append(text)
            last_metric = text
            i += 1
            continue
        if text == "{":
            sel_metric = last_metric if i > 0 and toks[i - 1][1] == last_metric else None
            j = i + 1
            while toks[j][1] != "}":
                if toks[j][0] == "ident":
                    label, op, value = toks[j][1], toks[j + 1][1], toks[j + 2][1][1:-1]
                    matchers.append((sel_metric, label, op, value))
                    j += 3
                else:
                    j += 1
            i = j + 1
            continue
        if kind == "range":
            ranges.append(text[1:-1])
        i += 1
    return metrics, matchers, grouping, ranges, calls


def check_expr(expr, where, allowed_windows=("$__rate_interval",)):
    try:
        metrics, matchers, grouping, ranges, calls = analyse(expr)
    except (ValueError, IndexError) as e:
        problem(f"{where}: cannot analyse {expr!r}: {e}")
        return
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        problem(f"{where}: unknown metric name(s) {unknown} in {expr!r}")
    if not metrics:
        problem(f"{where}: no metric in {expr!r}")
    known = [m for m in metrics if m in METRICS]
    for metric, label, op, value in matchers:
        if metric is None:
            problem(f"{where}: a selector without a metric name in {expr!r}")
            continue
        if metric in METRICS and label not in METRICS[metric] | TARGET_LABELS:
            problem(f"{where}: {metric} has no label {label!r}")
        if label in LABEL_VALUES and "$" not in value:
            values = value.split("|") if op in ("=~", "!~") else [value]
            for v in values:
                if v not in LABEL_VALUES[label]:
                    problem(f"{where}: {label}={v!r} is not one of {sorted(LABEL_VALUES[label])}")
        if "$" in value and op not in ("=~", "!~"):
            problem(f"{where}: variable {value!r} with {op}: multi-value variables need =~")
    available = set().union(*(METRICS[m] for m in known)) | TARGET_LABELS if known else TARGET_LABELS
    for label in sorted(grouping - available):
        problem(f"{where}: grouping label {label!r} is on none of {known}")
    if "histogram_quantile" in expr and "le" not in grouping:
        problem(f"{where}: histogram_quantile without `le` in the aggregation")
    for fn, inner in calls:
        if fn in ("rate", "irate", "increase") and inner not in COUNTERS:
            problem(f"{where}: {fn}() of {inner}, which is not a counter")
        if fn in ("delta", "deriv") and inner in COUNTERS:
            problem(f"{where}: {fn}() of counter {inner}")
    for r in ranges:
        if r not in allowed_windows:
            problem(f"{where}: range [{r}] is not one of {list(allowed_windows)}")


def concrete(expr):
    """Grafana variables replaced as Grafana would for 'All' and a 1m rate interval."""
    expr = expr.replace("$__rate_interval", "1m")
    return re.sub(r"\$\{?(instance|listener)\}?", ".*", expr)


def series_lines():
    """Input series for `promtool test rules`: one instance, shaped like /metrics."""
    base = 'instance="node1:9910", job="sluice"'
    counter, gauge = "0+7x40", "5+0x40"
    out = []

    def s(name, labels, values):
        lab = ", ".join([base] + [f'{k}="{v}"' for k, v in labels.items()])
        out.append((f"{name}{{{lab}}}", values))

    for lst in ("redis", "statsd"):
        s("sluice_listener_connections_total", {"listener": lst}, counter)
        s("sluice_listener_active_connections", {"listener": lst}, gauge)
        s("sluice_udp_flows_active", {"listener": lst}, gauge)
        for d in sorted(LABEL_VALUES["direction"]):
            s("sluice_bytes_total", {"listener": lst, "direction": d}, "0+4096x40")
        for st in sorted(LABEL_VALUES["state"]):
            s("sluice_backends", {"listener": lst, "state": st}, gauge)
        for b in ("10.0.0.1:6379", "10.0.0.2:6379"):
            for m in ("sluice_backend_connections_total", "sluice_backend_connect_failures_total",
                      "sluice_backend_ejections_total"):
                s(m, {"listener": lst, "backend": b}, counter)
            s("sluice_backend_active_connections", {"listener": lst, "backend": b}, gauge)
        for n, le in enumerate(DURATION_BUCKETS, 1):
            s("sluice_connection_duration_seconds_bucket", {"listener": lst, "le": le}, f"0+{n}x40")
        s("sluice_connection_duration_seconds_count", {"listener": lst}, f"0+{len(DURATION_BUCKETS)}x40")
        s("sluice_connection_duration_seconds_sum", {"listener": lst}, "0+30x40")
    for q in ("redis.service.consul.", "statsd.service.consul."):
        for r in sorted(LABEL_VALUES["result"]):
            s("sluice_discovery_lookups_total", {"query": q, "result": r}, counter)
        s("sluice_discovery_last_success_timestamp_seconds", {"query": q}, "0+15x40")
    s("sluice_build_info", {"version": "0.1.0"}, "1+0x40")
    s("process_cpu_seconds_total", {}, "0+1x40")
    s("process_resident_memory_bytes", {}, "20000000+0x40")
    s("process_open_fds", {}, "40+0x40")
    s("process_max_fds", {}, "1048576+0x40")
    # Same names from another exporter: the process panels must leave them out.
    out.append(('process_open_fds{instance="node1:9100", job="node"}', "9+0x40"))
    return out


def cmd_grafana(dash_path, queries_txt, out_dir):
    import yaml

    try:
        dash = json.load(open(dash_path, encoding="utf-8"))
    except json.JSONDecodeError as e:
        problem(f"{dash_path}: not JSON: {e}")
        finish()
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        problem(f"{dash_path}: schemaVersion {dash.get('schemaVersion')!r}, want >= 36")
    for k in ("title", "uid", "panels", "templating"):
        if k not in dash:
            problem(f"{dash_path}: no {k!r}")
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    dsvar = variables.get("datasource", {})
    if dsvar.get("type") != "datasource" or dsvar.get("query") != "prometheus":
        problem(f"{dash_path}: no `datasource` variable of type datasource for prometheus")
    lv = variables.get("listener", {})
    lq = lv.get("query", {})
    lq = lq.get("query") if isinstance(lq, dict) else lq
    if not lq or not re.fullmatch(r"label_values\(sluice_listener_connections_total(\{.*\})?,\s*listener\)", lq):
        problem(f"{dash_path}: `listener` variable query {lq!r}, want "
                "label_values(sluice_listener_connections_total, listener)")
    ds_ref = {"type": "prometheus", "uid": "${datasource}"}
    exprs = []  # (where, expr)
    for name, v in variables.items():
        if v.get("type") != "query":
            continue
        if v.get("datasource") != ds_ref:
            problem(f"{dash_path}: variable {name} datasource {v.get('datasource')}, want {ds_ref}")
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q)
        if not m:
            problem(f"{dash_path}: variable {name}: query {q!r} is not label_values(selector, label)")
            continue
        sel, label = m.groups()
        check_expr(sel, f"variable {name}")
        metric = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", sel).group()
        if metric in METRICS and label not in METRICS[metric] | TARGET_LABELS:
            problem(f"variable {name}: {metric} has no label {label!r}")
        exprs.append((f"variable {name}", sel))

    flat = []
    for p in dash.get("panels", []):
        flat.append(p)
        flat.extend(p.get("panels", []))
    ids = [p.get("id") for p in flat]
    for i in sorted({i for i in ids if ids.count(i) > 1 or not isinstance(i, int)}, key=str):
        problem(f"{dash_path}: panel id {i!r} is missing or not unique")
    cells = {}
    for p in flat:
        where = f"panel {p.get('id')} {p.get('title')!r}"
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "hwxy"):
            problem(f"{where}: gridPos {g} lacks integer h, w, x, y")
            continue
        if g["x"] < 0 or g["w"] < 1 or g["x"] + g["w"] > 24:
            problem(f"{where}: gridPos {g} is outside the 24 columns")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    problem(f"{where}: gridPos overlaps panel {cells[x, y]}")
                    break
                cells[x, y] = p.get("id")
            else:
                continue
            break
        if p.get("type") == "row":
            continue
        if p.get("datasource") != ds_ref:
            problem(f"{where}: datasource {p.get('datasource')}, want {ds_ref}")
        targets = p.get("targets") or []
        if not targets:
            problem(f"{where}: no targets")
        refids = [t.get("refId") for t in targets]
        if len(set(refids)) != len(refids):
            problem(f"{where}: refIds {refids} are not unique")
        for t in targets:
            expr = t.get("expr", "")
            tw = f"{where} target {t.get('refId')}"
            if t.get("datasource") != ds_ref:
                problem(f"{tw}: datasource {t.get('datasource')}, want {ds_ref}")
            if not expr or "\n" in expr:
                problem(f"{tw}: expr is empty or spans lines")
                continue
            # Histogram panels use 5m windows on purpose (see their description).
            windows = ("$__rate_interval", "5m") if "sluice_connection_duration_seconds" in expr \
                else ("$__rate_interval",)
            check_expr(expr, tw, windows)
            exprs.append((tw, expr))
    panel_exprs = [e for w, e in exprs if w.startswith("panel")]
    with open(queries_txt, "w", encoding="utf-8") as f:
        f.write("".join(e + "\n" for e in panel_exprs))

    rules = {"groups": [{"name": "sluice-dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": concrete(e)} for i, (_, e) in enumerate(exprs)]}]}
    alerts = {"groups": [{"name": "sluice-dashboard-empty", "rules": [
        {"alert": f"Empty{i}", "expr": f"absent({concrete(e)})",
         "labels": {"panel": w}} for i, (w, e) in enumerate(exprs)]}]}
    yaml.safe_dump(rules, open(f"{out_dir}/rules.yml", "w"), sort_keys=False, width=1000)
    yaml.safe_dump(alerts, open(f"{out_dir}/alerts.yml", "w"), sort_keys=False, width=1000)
    tests = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": [{"series": s, "values": v} for s, v in series_lines()],
            "alert_rule_test": [{"eval_time": "10m", "alertname": f"Empty{i}", "exp_alerts": []}
                                for i in range(len(exprs))],
            # The process_* panels keep to sluice's own targets (the input has a
            # node exporter's process_open_fds too).
            "promql_expr_test": [{
                "expr": concrete(e), "eval_time": "10m",
                "exp_samples": [{"labels": 'process_open_fds{instance="node1:9910", job="sluice"}',
                                 "value": 40}]}
                for e in panel_exprs if e.startswith("process_open_fds{") and "/" not in e],
        }],
    }
    yaml.safe_dump(tests, open(f"{out_dir}/tests.yml", "w"), sort_keys=False, width=1000)
    with open(f"{out_dir}/index.txt", "w", encoding="utf-8") as f:
        f.write("".join(f"Empty{i}\t{w}\t{e}\n" for i, (w, e) in enumerate(exprs)))
    print(f"  {len(panel_exprs)} panel expressions, {len(exprs) - len(panel_exprs)} variable "
          f"queries; {len(flat)} panels")
    finish()


if __name__ == "__main__":
    cmds = {"systemd": (cmd_systemd, 2), "kubernetes": (cmd_kubernetes, 2),
            "nomad": (cmd_nomad, 2), "grafana": (cmd_grafana, 3)}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds or len(sys.argv) - 2 != cmds[sys.argv[1]][1]:
        sys.exit(__doc__)
    fn, _ = cmds[sys.argv[1]]
    fn(*sys.argv[2:])
