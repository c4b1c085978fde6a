//! TCP proxying: one listener's accept loop, and the life of one connection:
//! read the client's PROXY header if it must send one, wait for the first
//! discovery answer if needed, choose a backend, connect with retry on
//! refusal or timeout, send the backend our PROXY header if it wants one,
//! then forward both ways (`forward`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use super::Context;
use super::forward::{Sock, forward};
use super::proxy_protocol::{self, BadHeader, Origin};
use crate::alarm::Alarm;
use crate::balancer::{Lease, Pool};
use crate::config::{Mode, TcpSettings};

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
                        info!("accepting again");
                    }
                    accepted
                }
                Err(e) => {
                    if let Some(repeated) = accept_failing.raise() {
                        warn!(error = %e, repeated, "accept failed, backing off");
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
        let span = ctx.span.clone();
        let connection = async move {
            tokio::select! {
                _ = handle(client, peer, &ctx) => {}
                _ = ctx.hard_stop.cancelled() => {}
            }
            drop((open, permit));
        };
        tracker.spawn(connection.instrument(span));
    }
    info!("stopped accepting");
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

async fn handle(mut client: TcpStream, peer: SocketAddr, ctx: &Context) {
    // Protocol changes rebind, so a TCP listener's context is always TCP.
    let Mode::Tcp(settings) = ctx.config.mode else {
        return;
    };
    // Best effort: a socket that cannot take options still forwards correctly.
    let _ = client.set_nodelay(true);
    let (origin, early) = match origin(&mut client, peer, ctx, &settings).await {
        Ok(found) => found,
        Err(bad) => {
            ctx.metrics.proxy_protocol_errors.increment(1);
            if let Some(repeated) = ctx.bad_headers.raise() {
                warn!(client = %peer, error = %bad, repeated, "PROXY header refused, connection closed");
            }
            return;
        }
    };
    let Some(pool) = ctx.upstream.ready(ctx.config.connect_timeout).await else {
        ctx.upstream.unreachable(peer, "no discovery answer yet");
        return;
    };
    let Some((mut backend, lease)) = connect(ctx, &pool, origin.client).await else {
        return;
    };
    let _ = backend.set_nodelay(true);
    // What the backend gets before anything is forwarded: our PROXY header,
    // then whatever the client sent right behind its own.
    let mut first = settings
        .proxy_protocol
        .map_or_else(Vec::new, |version| proxy_protocol::header(version, Some(origin)));
    first.extend_from_slice(&early);
    if !first.is_empty() && backend.write_all(&first).await.is_err() {
        return;
    }
    let (client, backend) = match (guarded(client), guarded(backend)) {
        (Ok(client), Ok(backend)) => (client, backend),
        (Err(e), _) | (_, Err(e)) => {
            warn!(client = %peer, error = %e, "cannot register the connection");
            return;
        }
    };
    let started = Instant::now();
    let transfer = forward(
        &client,
        &backend,
        settings.idle_timeout,
        settings.splice,
        &ctx.metrics,
        ctx.drain_over(&lease),
    )
    .await;
    let duration = started.elapsed();
    ctx.metrics.duration.record(duration.as_secs_f64());
    let ended = &transfer.end;
    let backend = lease.addr();
    let (client, up, down) = (origin.client, transfer.up, transfer.down);
    if settings.access_log {
        info!(target: "sluice::access", %client, %backend, up, down, ?duration, %ended);
    } else {
        debug!(%client, %backend, up, down, ?duration, %ended, "connection ended");
    }
}

/// Whom the connection is for, from the PROXY header the client starts
/// with (`accept_proxy`), or the peer itself; and the client's bytes read
/// past the header.
async fn origin(
    client: &mut TcpStream,
    peer: SocketAddr,
    ctx: &Context,
    settings: &TcpSettings,
) -> Result<(Origin, Vec<u8>), BadHeader> {
    let direct = Origin {
        client: peer,
        destination: ctx.local_addr,
        announced: true,
    };
    if !settings.accept_proxy {
        // The address the client reached, for a header we send on: the
        // listener's, unless it listens on a wildcard.
        let destination = match settings.proxy_protocol {
            Some(_) if ctx.local_addr.ip().is_unspecified() => client.local_addr().unwrap_or(ctx.local_addr),
            _ => ctx.local_addr,
        };
        return Ok((
            Origin {
                destination,
                ..direct
            },
            Vec::new(),
        ));
    }
    let local = client.local_addr().unwrap_or(ctx.local_addr);
    proxy_protocol::accept(client, peer, local, ctx.config.connect_timeout).await
}

/// Moves a stream under a readiness guard (see [`Sock`]).
fn guarded(stream: TcpStream) -> std::io::Result<Sock> {
    // SAFETY: a std TcpStream owns its descriptor, which stays open and the
    // same for as long as the AsyncFd holds the stream.
    unsafe { Sock::register(stream.into_std()?) }.map_err(std::io::Error::from)
}

/// Connects to up to [`MAX_ATTEMPTS`] distinct backends in turn.
/// `peer` is the client as far as choosing goes (the PROXY header's, if any).
async fn connect(ctx: &Context, pool: &Pool, peer: SocketAddr) -> Option<(TcpStream, Lease)> {
    let mut tried = [SocketAddr::from(([0, 0, 0, 0], 0)); MAX_ATTEMPTS];
    let mut attempts = 0;
    while attempts < MAX_ATTEMPTS {
        let Some(mut lease) = ctx.upstream.choose(pool, peer.ip(), &tried[..attempts]) else {
            break;
        };
        tried[attempts] = lease.addr();
        attempts += 1;
        let wait = ctx.config.connect_timeout;
        match timeout(wait, TcpStream::connect(lease.addr())).await {
            Ok(Ok(stream)) => {
                lease.connected();
                return Some((stream, lease));
            }
            Ok(Err(e)) => lease.failed(e),
            Err(_) => lease.failed(format_args!("no answer within {wait:?}")),
        }
    }
    if attempts == 0 {
        ctx.upstream.unreachable(peer, "no backends");
    } else {
        let mut why = String::from("no backend accepted, tried");
        for addr in &tried[..attempts] {
            let _ = write!(why, " {addr}");
        }
        ctx.upstream.unreachable(peer, why);
    }
    None
}
