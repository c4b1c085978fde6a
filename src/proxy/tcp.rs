//! TCP proxying: one listener's accept loop, and the life of one connection:
//! wait for the first discovery answer if needed, pick a backend, connect with
//! retry on refusal or timeout, then forward both ways (see [`super::forward`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::{Context, Lease, Sock, forward};
use crate::alarm::Alarm;
use crate::balancer::Member;
use crate::health::Ejected;

/// Distinct backends tried for one client before giving up.
const MAX_ATTEMPTS: usize = 3;
/// Pause after a failed accept (EMFILE, ENFILE, ...) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts until `stop`, at most `max_connections` open at once (later
/// clients wait in the kernel's backlog). Accept errors never end the loop.
///
/// Each connection takes the context current when it arrives, so a reload
/// changes new connections only; `limit` is resized by reload too.
pub async fn serve(
    listener: TcpListener,
    current: Arc<ArcSwap<Context>>,
    limit: Arc<Semaphore>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let name = current.load().config.name.clone();
    let accept_failing = Alarm::new();
    loop {
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = stop.cancelled() => break,
        };
        let (client, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    if accept_failing.clear() {
                        info!(listener = %name, "accepting again");
                    }
                    accepted
                }
                Err(e) => {
                    if let Some(repeated) = accept_failing.raise() {
                        warn!(listener = %name, error = %e, repeated, "accept failed, backing off");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                        _ = stop.cancelled() => break,
                    }
                }
            },
            _ = stop.cancelled() => break,
        };
        let ctx = current.load_full();
        ctx.metrics.connections.increment(1);
        let open = Open::new(&ctx.active);
        tracker.spawn(async move {
            tokio::select! {
                _ = handle(client, peer, &ctx) => {}
                _ = ctx.hard_stop.cancelled() => {}
            }
            drop((open, permit));
        });
    }
    info!(listener = %name, "stopped accepting");
}

/// Counts a connection as open for as long as it lives, however it ends.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(active: &Arc<AtomicUsize>) -> Open {
        active.fetch_add(1, Relaxed);
        Open(active.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

async fn handle(client: TcpStream, peer: SocketAddr, ctx: &Context) {
    let config = &ctx.config;
    let name = config.name.as_str();
    // Best effort: a socket that cannot take options still forwards correctly.
    let _ = client.set_nodelay(true);
    let Some(pool) = ctx.upstream.pool(config.connect_timeout).await else {
        if let Some(repeated) = ctx.failing.raise() {
            warn!(listener = name, %peer, repeated, "no discovery answer yet, closing connections");
        }
        return;
    };
    let Some((backend, member)) = connect(ctx, &pool, peer).await else {
        return;
    };
    let _lease = Lease::new(&member);
    let _ = backend.set_nodelay(true);
    let (client, backend) = match (guarded(client), guarded(backend)) {
        (Ok(client), Ok(backend)) => (client, backend),
        (Err(e), _) | (_, Err(e)) => {
            warn!(listener = name, %peer, error = %e, "cannot register the connection");
            return;
        }
    };
    let started = Instant::now();
    let drained = ctx.drained(&member.stats.removed);
    let transfer = forward(
        &client,
        &backend,
        config.idle_timeout,
        config.splice,
        &ctx.metrics,
        drained,
    )
    .await;
    let duration = started.elapsed();
    ctx.metrics.duration.record(duration.as_secs_f64());
    let ended = &transfer.end;
    let backend = member.addr();
    let (up, down) = (transfer.up, transfer.down);
    if config.access_log {
        info!(target: "sluice::access", listener = %name, client = %peer, %backend, up, down, ?duration, %ended);
    } else {
        debug!(listener = name, client = %peer, %backend, up, down, ?duration, %ended, "connection ended");
    }
}

/// Moves a stream under a readiness guard (see [`Sock`]).
fn guarded(stream: TcpStream) -> std::io::Result<Sock> {
    // SAFETY: a std TcpStream owns its descriptor, which stays open and the
    // same for as long as the AsyncFd holds the stream.
    unsafe { Sock::register(stream.into_std()?) }.map_err(std::io::Error::from)
}

/// Connects to up to [`MAX_ATTEMPTS`] distinct backends in turn.
async fn connect(
    ctx: &Context,
    pool: &crate::balancer::Pool,
    peer: SocketAddr,
) -> Option<(TcpStream, Member)> {
    let name = ctx.config.name.as_str();
    let mut tried = [SocketAddr::from(([0, 0, 0, 0], 0)); MAX_ATTEMPTS];
    let mut attempts = 0;
    while attempts < MAX_ATTEMPTS {
        let Some(member) = ctx.upstream.balancer.pick(pool, peer.ip(), &tried[..attempts]) else {
            break;
        };
        tried[attempts] = member.addr();
        attempts += 1;
        let eject_after = ctx.config.eject_after;
        let error = match timeout(ctx.config.connect_timeout, TcpStream::connect(member.addr())).await {
            Ok(Ok(stream)) => {
                if member.stats.ejection.succeeded() {
                    info!(listener = name, backend = %member.addr(), "backend accepts connections again");
                }
                if ctx.failing.clear() {
                    info!(listener = name, "connections reach backends again");
                }
                return Some((stream, member.clone()));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", ctx.config.connect_timeout),
        };
        member.stats.connect_failures.fetch_add(1, Relaxed);
        if let Some(Ejected { period, repeated }) = member.stats.ejection.failed(eject_after) {
            warn!(listener = name, backend = %member.addr(), ?period, repeated, error, "backend ejected after repeated connect failures");
        } else {
            debug!(listener = name, backend = %member.addr(), error, "connect failed, trying another backend");
        }
    }
    // Said once until a connection gets through again, not once per client.
    if let Some(repeated) = ctx.failing.raise() {
        if attempts == 0 {
            warn!(listener = name, %peer, repeated, "no backends, closing connections");
        } else {
            let tried: Vec<String> = tried[..attempts].iter().map(ToString::to_string).collect();
            warn!(listener = name, %peer, repeated, tried = %tried.join(" "), "no backend accepted, closing connections");
        }
    }
    None
}
