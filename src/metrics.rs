//! Metrics: the metric names (a contract: dashboards depend on them), the
//! per-server Prometheus recorder, and the handles the hot paths hold.
//!
//! Counters that only grow live in the `metrics` recorder; handles are
//! resolved once per listener or query, so counting is one atomic add.
//! Per-backend series are rendered at scrape time from the listeners' live
//! pools instead, so a backend that leaves the set leaves the exposition too.
//! Without a metrics endpoint every handle is a no-op.

use std::fmt::Write as _;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

use crate::config::Origin;

pub const LISTENER_CONNECTIONS_TOTAL: &str = "sluice_listener_connections_total";
pub const LISTENER_ACTIVE_CONNECTIONS: &str = "sluice_listener_active_connections";
pub const BACKEND_CONNECTIONS_TOTAL: &str = "sluice_backend_connections_total";
pub const BACKEND_ACTIVE_CONNECTIONS: &str = "sluice_backend_active_connections";
pub const BACKEND_CONNECT_FAILURES_TOTAL: &str = "sluice_backend_connect_failures_total";
pub const BACKEND_EJECTIONS_TOTAL: &str = "sluice_backend_ejections_total";
pub const BACKENDS: &str = "sluice_backends";
pub const BYTES_TOTAL: &str = "sluice_bytes_total";
pub const DISCOVERY_LOOKUPS_TOTAL: &str = "sluice_discovery_lookups_total";
pub const DISCOVERY_LAST_SUCCESS: &str = "sluice_discovery_last_success_timestamp_seconds";
pub const CONNECTION_DURATION: &str = "sluice_connection_duration_seconds";
pub const UDP_FLOWS_ACTIVE: &str = "sluice_udp_flows_active";
pub const PROXY_PROTOCOL_ERRORS_TOTAL: &str = "sluice_proxy_protocol_errors_total";
pub const BUILD_INFO: &str = "sluice_build_info";
pub const CONFIG_CHANGES_TOTAL: &str = "sluice_config_changes_total";
pub const CATALOG_REFUSED: &str = "sluice_catalog_refused";
pub const CONNECTIONS_REFUSED_TOTAL: &str = "sluice_connections_refused_total";

pub const LABEL_LISTENER: &str = "listener";
pub const LABEL_BACKEND: &str = "backend";
pub const LABEL_DIRECTION: &str = "direction";
pub const LABEL_QUERY: &str = "query";
pub const LABEL_RESULT: &str = "result";
pub const LABEL_STATE: &str = "state";
pub const LABEL_VERSION: &str = "version";
pub const LABEL_ORIGIN: &str = "origin";
pub const LABEL_REASON: &str = "reason";

/// Connection durations span milliseconds (a PING) to hours (a pooled client).
const DURATION_BUCKETS: &[f64] = &[0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0];

const DESCRIPTIONS: &[(&str, &str)] = &[
    (
        LISTENER_CONNECTIONS_TOTAL,
        "Client connections accepted (UDP: flows opened).",
    ),
    (BYTES_TOTAL, "Bytes forwarded, by direction."),
    (
        DISCOVERY_LOOKUPS_TOTAL,
        "SRV lookups by result (ok, error, empty).",
    ),
    (DISCOVERY_LAST_SUCCESS, "Unix time of the last successful lookup."),
    (CONNECTION_DURATION, "How long proxied connections lasted."),
    (
        PROXY_PROTOCOL_ERRORS_TOTAL,
        "Client connections closed for a missing, malformed or oversized PROXY header.",
    ),
    (
        CONNECTIONS_REFUSED_TOTAL,
        "Connections (UDP: datagrams) refused by allow/deny (denied) or for a PROXY header from an untrusted peer.",
    ),
    (BUILD_INFO, "Always 1; the version is a label."),
    (
        CONFIG_CHANGES_TOTAL,
        "Configuration changes by origin (file: SIGHUP, api: the runtime API, catalog: Consul's catalog) and result (ok, error).",
    ),
];

/// The recorder of one [`crate::Server`], or nothing when metrics are off.
pub struct Metrics {
    recorder: Option<PrometheusRecorder>,
}

/// What a listener counts on its hot path.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    pub connections: Counter,
    pub bytes_up: Counter,
    pub bytes_down: Counter,
    pub duration: Histogram,
    pub proxy_protocol_errors: Counter,
    /// Sources refused by `allow`/`deny`, and PROXY headers from untrusted peers.
    pub refused_denied: Counter,
    pub refused_untrusted_proxy: Counter,
}

/// What a discovery task counts per lookup.
#[derive(Clone, Debug)]
pub struct QueryMetrics {
    pub ok: Counter,
    pub error: Counter,
    pub empty: Counter,
    pub last_success: Gauge,
}

fn labels(pairs: &[(&'static str, &str)]) -> Vec<Label> {
    pairs.iter().map(|(k, v)| Label::new(*k, v.to_string())).collect()
}

static METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

impl Metrics {
    /// A recorder when `enabled` (there is an endpoint to scrape it).
    pub fn new(enabled: bool) -> Metrics {
        let recorder = enabled.then(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(DURATION_BUCKETS)
                .expect("the bucket list is a non-empty constant");
            builder.build_recorder()
        });
        if let Some(r) = &recorder {
            for (name, help) in DESCRIPTIONS {
                let (key, help) = (KeyName::from(*name), SharedString::from(*help));
                r.describe_counter(key, None, help);
            }
        }
        let metrics = Metrics { recorder };
        metrics
            .gauge(BUILD_INFO, &[(LABEL_VERSION, env!("CARGO_PKG_VERSION"))])
            .set(1.0);
        // Shown at 0 from the start, so a rate() over them works at once.
        for origin in [Origin::File, Origin::Api, Origin::Catalog] {
            for ok in [true, false] {
                metrics.config_change_counter(origin, ok).increment(0);
            }
        }
        metrics
    }

    /// Counts one configuration change from `origin`.
    pub fn config_change(&self, origin: Origin, ok: bool) {
        self.config_change_counter(origin, ok).increment(1);
    }

    fn config_change_counter(&self, origin: Origin, ok: bool) -> Counter {
        let origin = match origin {
            Origin::File => "file",
            Origin::Api => "api",
            Origin::Catalog => "catalog",
        };
        let result = if ok { "ok" } else { "error" };
        self.counter(
            CONFIG_CHANGES_TOTAL,
            &[(LABEL_ORIGIN, origin), (LABEL_RESULT, result)],
        )
    }

    fn counter(&self, name: &'static str, pairs: &[(&'static str, &str)]) -> Counter {
        match &self.recorder {
            Some(r) => r.register_counter(&Key::from_parts(name, labels(pairs)), &METADATA),
            None => Counter::noop(),
        }
    }

    fn gauge(&self, name: &'static str, pairs: &[(&'static str, &str)]) -> Gauge {
        match &self.recorder {
            Some(r) => r.register_gauge(&Key::from_parts(name, labels(pairs)), &METADATA),
            None => Gauge::noop(),
        }
    }

    fn histogram(&self, name: &'static str, pairs: &[(&'static str, &str)]) -> Histogram {
        match &self.recorder {
            Some(r) => r.register_histogram(&Key::from_parts(name, labels(pairs)), &METADATA),
            None => Histogram::noop(),
        }
    }

    pub fn listener(&self, listener: &str) -> ListenerMetrics {
        let l = (LABEL_LISTENER, listener);
        ListenerMetrics {
            connections: self.counter(LISTENER_CONNECTIONS_TOTAL, &[l]),
            bytes_up: self.counter(BYTES_TOTAL, &[l, (LABEL_DIRECTION, "client_to_backend")]),
            bytes_down: self.counter(BYTES_TOTAL, &[l, (LABEL_DIRECTION, "backend_to_client")]),
            duration: self.histogram(CONNECTION_DURATION, &[l]),
            proxy_protocol_errors: self.counter(PROXY_PROTOCOL_ERRORS_TOTAL, &[l]),
            refused_denied: self.counter(CONNECTIONS_REFUSED_TOTAL, &[l, (LABEL_REASON, "denied")]),
            refused_untrusted_proxy: self
                .counter(CONNECTIONS_REFUSED_TOTAL, &[l, (LABEL_REASON, "untrusted_proxy")]),
        }
    }

    pub fn query(&self, query: &str) -> QueryMetrics {
        let q = (LABEL_QUERY, query);
        QueryMetrics {
            ok: self.counter(DISCOVERY_LOOKUPS_TOTAL, &[q, (LABEL_RESULT, "ok")]),
            error: self.counter(DISCOVERY_LOOKUPS_TOTAL, &[q, (LABEL_RESULT, "error")]),
            empty: self.counter(DISCOVERY_LOOKUPS_TOTAL, &[q, (LABEL_RESULT, "empty")]),
            last_success: self.gauge(DISCOVERY_LAST_SUCCESS, &[q]),
        }
    }

    /// Drains histogram samples into their buckets; call every few seconds.
    pub fn upkeep(&self) {
        if let Some(r) = &self.recorder {
            r.handle().run_upkeep();
        }
    }

    /// The exposition: the recorder's series, then `live` ones rendered from state.
    pub fn render(&self, live: &[LiveFamily]) -> String {
        let mut out = self
            .recorder
            .as_ref()
            .map(|r| r.handle().render())
            .unwrap_or_default();
        for family in live {
            family.render(&mut out);
        }
        out
    }
}

/// The process's own series, as every Prometheus client library names them:
/// CPU seconds, resident memory, open and allowed descriptors, start time.
/// Read from /proc at scrape time (metrics-process would round the CPU
/// counter down to whole seconds); empty where there is no /proc.
pub fn process_families() -> Vec<LiveFamily> {
    let mut families = Vec::new();
    let mut one = |name, kind, help, value: f64| {
        let mut family = LiveFamily::new(name, kind, help);
        family.series.push((Vec::new(), value));
        families.push(family);
    };
    // SAFETY: sysconf only reads constants.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if let Some(stat) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .filter(|_| ticks > 0)
    {
        // Fields after the command name, which may hold spaces; proc(5)
        // numbers them from 1, so field n is at n - 3 here.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let field = |n: usize| {
            fields
                .get(n - 3)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let cpu = (field(14) + field(15)) / ticks as f64;
        one(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            cpu,
        );
        let rss = field(24) * page as f64;
        one(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss,
        );
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
        });
        if let Some(boot) = boot {
            let started = boot + field(22) / ticks as f64;
            one(
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                started,
            );
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        // Less the descriptor reading the directory.
        let open = fds.count().saturating_sub(1);
        one(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            open as f64,
        );
    }
    let limit = crate::limits::descriptor_limit();
    one(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        limit as f64,
    );
    families
}

/// A metric family rendered from live state at scrape time.
pub struct LiveFamily {
    pub name: &'static str,
    pub kind: &'static str,
    pub help: &'static str,
    /// Label pairs and value of each series.
    pub series: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl LiveFamily {
    pub fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        LiveFamily {
            name,
            kind,
            help,
            series: Vec::new(),
        }
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.series {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let _ = match labels.is_empty() {
                true => writeln!(out, "{} {value}", self.name),
                false => writeln!(out, "{}{{{}}} {value}", self.name, labels.join(",")),
            };
        }
        out.push('\n');
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
