//! sluice: a Layer-4 TCP/UDP load balancer whose backends come from DNS SRV
//! records (Consul's DNS interface first of all), refreshed and diffed
//! continuously.
//!
//! Data flows one way: config → discovery → balancer → proxy; metrics and
//! admin read from the side.
//!
//! - [`config`]: the TOML file and CLI shorthands, validated into a
//!   [`Config`]; listener settings typed by protocol.
//! - [`discovery`]: one task per distinct SRV query (or static list), each
//!   publishing immutable `BackendSet` snapshots on a watch channel.
//! - `balancer`: the one owner of backend state. A listener's
//!   `Upstream` follows its snapshots into pools and hands out a
//!   `Lease` per connection or flow, through which TCP and UDP
//!   alike record connects, failures (ejection) and ends; the choice itself
//!   is round-robin, least-conn, random, p2c or maglev.
//! - `health`: active checks (TCP connect/send/expect, UDP send/expect)
//!   and the passive ejection state the balancer keeps per backend.
//! - `proxy`: what a listener's connections share (its `Context`, typed by
//!   protocol), the TCP and UDP loops, the one idle/drain timer they keep,
//!   and byte forwarding (splice or copy) with half-close.
//! - `proxy_protocol`: the PROXY header format, read by the TCP proxy and
//!   written by it and by health checks.
//! - `metrics`: metric names and the per-server Prometheus recorder.
//! - [`admin`]: the HTTP endpoint for /metrics, /status, /, /healthz and /ready;
//!   `api`: the runtime API under /v1/ on the same endpoint; both read what
//!   `status` holds: the listeners and queries the server last published.
//! - `control`: [`Control`], the handle through which changes reach the
//!   running server, and what it answers.
//! - `alarm`: how recurring conditions are logged (once, then once a minute).
//! - `notify`: systemd's service notifications (ready, reloading, stopping).
//! - [`limits`]: the descriptor budget and the default caps derived from it.
//! - `net`: address facts (what can be a peer, what binds where, which
//!   backend would be sluice itself) and the `Protocol` of a listener.
//! - `server`: binds and runs listeners, owns shutdown, and reloads: a pure
//!   `plan` (stop, rebind, update, start per listener), prepared (whatever
//!   can fail: sockets, DNS client), then one `apply`, the only place the
//!   running configuration and its listeners change. Every task it starts
//!   runs in one tracker that shutdown waits for.
//!   Every change comes through [`Control`], one at a time: SIGHUP (the
//!   file read anew), an API request (one listener set or deleted), or a
//!   whole [`Config`]; each is composed from the config's `Sources` with one
//!   part replaced and validated as the file is.
//!
//! ```text
//!   SIGHUP / API / Control::reload ─► compose & validate ─► plan(running, new config) ─► apply:
//!     bind new sockets (any failure: nothing changes) ─► stop & rebind (retire:
//!     stop accepting, connections drain) ─► new DNS server ─► update (new
//!     Context for new connections; other backends: old ones drain) ─► start
//! ```
//!
//! [`Server::bind`] binds every listener (so tests can use port 0 and read the
//! address back), [`Server::run`] serves until its shutdown token is cancelled,
//! then drains for `shutdown_grace`; [`Control::reload`] applies a new config.

pub(crate) mod access;
pub mod admin;
pub(crate) mod alarm;
pub(crate) mod api;
pub(crate) mod balancer;
pub mod config;
mod control;
pub mod discovery;
pub(crate) mod health;
pub mod limits;
pub(crate) mod metrics;
pub(crate) mod net;
pub(crate) mod notify;
pub(crate) mod proxy;
pub(crate) mod proxy_protocol;
pub(crate) mod status;

mod server;

use std::io;
use std::net::SocketAddr;

pub use config::Config;
pub use control::{ApiChange, ApiError, Control, ReloadReport};
pub use server::Server;

/// Seconds since the Unix epoch, as Prometheus and /status report times.
pub(crate) fn unix_seconds(time: std::time::SystemTime) -> f64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listener '{listener}': cannot bind {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("no DNS server to ask: set `dns` in the config or pass --dns ({0})")]
    NoDns(io::Error),
    #[error("metrics endpoint: cannot bind {addr}: {source}")]
    BindMetrics { addr: SocketAddr, source: io::Error },
    #[error("{0}")]
    Invalid(#[from] config::ConfigError),
    #[error("the server has stopped")]
    Stopped,
}
