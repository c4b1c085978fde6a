//! TCP proxying: one listener's accept loop, and the life of one connection:
//! read the client's PROXY header if it must send one, wait for the first
//! discovery answer if needed, choose a backend, connect with retry on
//! refusal or timeout, send the backend our PROXY header if it wants one
//! (all of that is `setup`, boxed, so its state is freed once it is done),
//! then relay both ways (`forward::Relay`) until the end.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwap;
use std::task::{Context as TaskContext, Poll, ready};

use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep, timeout};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use super::forward::{End, Relay};
use super::sock::{self, Listening, Sock, read_some};
use super::{Context, Expired, Expiry};
use crate::alarm::Alarm;
use crate::balancer::{Lease, Pool};
use crate::config::TcpSettings;
use crate::proxy_protocol::{self, BadHeader, MAX_HEADER, Origin};

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
    listener: Listening,
    current: Arc<ArcSwap<Context<TcpSettings>>>,
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
            accepted = sock::accept(&listener) => match accepted {
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
        // With `accept_proxy` the header names the source, judged once read.
        let access = &ctx.config.access;
        let admitted = match ctx.settings.accept_proxy {
            true => access.trusts(peer.ip()),
            false => access.admits(peer.ip()),
        };
        if let Err(why) = admitted {
            ctx.refuse(peer, why);
            continue;
        }
        ctx.metrics.connections.increment(1);
        let open = (Open::new(&ctx.active), permit);
        let span = ctx.span.clone();
        tracker.spawn(connection(client, peer, ctx, open).instrument(span));
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

/// A connection whose backend is connected, ready to relay.
struct Established {
    backend: Sock,
    lease: Lease,
    /// The client as the PROXY header named it or the peer, kept where
    /// it is needed at the end (`accept_proxy`, `access_log`).
    client: Option<Box<SocketAddr>>,
}

pin_project! {
    /// One connection's task, from accept to close. Written out by hand
    /// because its relaying state is what every idle connection costs: it
    /// holds the relay, one timer and one wait, nothing else (the setup
    /// before it is boxed, and freed once done).
    struct Connection {
        #[pin]
        phase: Phase,
        // Counts the connection open for as long as the task lives.
        _open: (Open, OwnedSemaphorePermit),
    }
}

pin_project! {
    #[project = PhaseProj]
    enum Phase {
        // The setup's state stays in its box; what it hands over is small,
        // the context included (held by the box until then, not twice).
        Setup { setup: Pin<Box<dyn Future<Output = Option<(Sock, Established, Arc<Context<TcpSettings>>)>> + Send>> },
        Relaying { #[pin] relaying: Relaying },
        Done,
    }
}

impl Future for Connection {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let mut phase = self.project().phase;
        loop {
            match phase.as_mut().project() {
                PhaseProj::Setup { setup } => match ready!(setup.as_mut().poll(cx)) {
                    Some((client, established, ctx)) => {
                        let relaying = Relaying::new(client, established, ctx);
                        phase.set(Phase::Relaying { relaying });
                    }
                    None => phase.set(Phase::Done),
                },
                PhaseProj::Relaying { relaying } => {
                    ready!(relaying.poll(cx));
                    phase.set(Phase::Done);
                }
                PhaseProj::Done => return Poll::Ready(()),
            }
        }
    }
}

fn connection(
    client: Sock,
    peer: SocketAddr,
    ctx: Arc<Context<TcpSettings>>,
    open: (Open, OwnedSemaphorePermit),
) -> Connection {
    let setup = async move {
        let established = tokio::select! {
            established = setup(&client, peer, &ctx) => established?,
            _ = ctx.hard_stop.cancelled() => return None,
        };
        Some((client, established, ctx))
    };
    Connection {
        phase: Phase::Setup {
            setup: Box::pin(setup),
        },
        _open: open,
    }
}

pin_project! {
    /// Relaying until the connection ends, idles, its drain ends (its
    /// backend or listener removed) or the shutdown grace is over; then the
    /// connection is logged.
    struct Relaying {
        relay: Relay,
        ctx: Arc<Context<TcpSettings>>,
        lease: Lease,
        // The client, kept where the access log or a PROXY header needs
        // it; otherwise read back from the socket for debug logs.
        client: Option<Box<SocketAddr>>,
        started: Instant,
        // Set once the lease's backend is removed, with a drain timeout.
        expiry: Expiry,
        // The lease's removal; once seen, the hard stop (which also
        // removes every backend, so one wait serves both).
        #[pin]
        waiting: WaitForCancellationFutureOwned,
        // The idle deadline as last known, or the drain's end.
        #[pin]
        timer: Sleep,
    }
}

impl Relaying {
    fn new(client: Sock, established: Established, ctx: Arc<Context<TcpSettings>>) -> Relaying {
        let TcpSettings {
            data_path,
            idle_timeout,
            ..
        } = ctx.settings;
        let Established {
            backend,
            lease,
            client: address,
        } = established;
        let now = Instant::now();
        Relaying {
            relay: Relay::new(client, backend, data_path),
            waiting: lease.removed_owned(),
            ctx,
            lease,
            client: address,
            started: now,
            expiry: Expiry::default(),
            timer: tokio::time::sleep_until(now + idle_timeout),
        }
    }
}

impl Future for Relaying {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let mut this = self.project();
        let end = 'ended: {
            while this.waiting.as_mut().poll(cx).is_ready() {
                if this.ctx.hard_stop.is_cancelled() {
                    break 'ended End::Stopped;
                }
                this.expiry
                    .drain(this.ctx.config.drain_timeout, this.timer.as_mut());
                this.waiting.set(this.ctx.hard_stop.clone().cancelled_owned());
            }
            if let Some(end) = this.relay.poll_directions(cx, &this.ctx.metrics) {
                break 'ended end;
            }
            loop {
                ready!(this.timer.as_mut().poll(cx));
                let idle_ends = this.relay.last_moved + this.ctx.settings.idle_timeout;
                match this.expiry.fired(idle_ends, this.timer.as_mut()) {
                    Some(Expired::Drained) => break 'ended End::Drained,
                    Some(Expired::Idle) => break 'ended End::Idle,
                    None => {}
                }
            }
        };
        let transfer = this.relay.finish(end);
        let duration = this.started.elapsed();
        this.ctx.metrics.duration.record(duration.as_secs_f64());
        let ended = &transfer.end;
        let backend = this.lease.addr();
        let (up, down) = (transfer.up, transfer.down);
        let client = || match this.client.as_deref() {
            Some(client) => client.to_string(),
            None => this
                .relay
                .client_peer()
                .map_or_else(|| "unknown".into(), |peer| peer.to_string()),
        };
        if this.ctx.settings.access_log {
            info!(target: "sluice::access", client = %client(), %backend, up, down, ?duration, %ended);
        } else {
            debug!(client = %client(), %backend, up, down, ?duration, %ended, "connection ended");
        }
        Poll::Ready(())
    }
}

/// Everything before the relay: the client's PROXY header, the first
/// discovery answer, a connected backend and our header to it.
async fn setup(client: &Sock, peer: SocketAddr, ctx: &Context<TcpSettings>) -> Option<Established> {
    let settings = &ctx.settings;
    let (origin, early) = match origin(client, peer, ctx).await {
        Ok(found) if settings.accept_proxy && origin_refused(ctx, &found.0) => return None,
        Ok(found) => found,
        Err(bad) => {
            ctx.metrics.proxy_protocol_errors.increment(1);
            if let Some(repeated) = ctx.bad_headers.raise() {
                warn!(client = %peer, error = %bad, repeated, "PROXY header refused, connection closed");
            }
            return None;
        }
    };
    // The wait (and its timer) only before the first answer: boxed, so
    // that every connection's setup need not make room for it.
    let ready = match ctx.upstream.current() {
        Some(pool) => Some(pool),
        None => Box::pin(ctx.upstream.ready(ctx.config.connect_timeout)).await,
    };
    let Some(pool) = ready else {
        ctx.upstream.unreachable(peer, "no discovery answer yet");
        return None;
    };
    let (backend, lease) = connect(ctx, &pool, origin.client).await?;
    // What the backend gets before anything is forwarded: our PROXY header,
    // then whatever the client sent right behind its own.
    let mut first = settings
        .proxy_protocol
        .map_or_else(Vec::new, |version| proxy_protocol::header(version, Some(origin)));
    first.extend_from_slice(&early);
    if !first.is_empty() && sock::write_all(&backend, &first).await.is_err() {
        return None;
    }
    Some(Established {
        backend,
        lease,
        client: (settings.accept_proxy || settings.access_log).then(|| Box::new(origin.client)),
    })
}

/// Whether the client a PROXY header names may connect (refused: counted).
fn origin_refused(ctx: &Context<TcpSettings>, origin: &Origin) -> bool {
    let refused = ctx.config.access.admits(origin.client.ip());
    refused.map_err(|why| ctx.refuse(origin.client, why)).is_err()
}

/// Whom the connection is for, from the PROXY header the client starts
/// with (`accept_proxy`), or the peer itself; and the client's bytes read
/// past the header.
async fn origin(
    client: &Sock,
    peer: SocketAddr,
    ctx: &Context<TcpSettings>,
) -> Result<(Origin, Vec<u8>), BadHeader> {
    let settings = &ctx.settings;
    let direct = Origin {
        client: peer,
        destination: ctx.local_addr,
        announced: true,
    };
    if !settings.accept_proxy {
        // The address the client reached, for a header we send on: the
        // listener's, unless it listens on a wildcard.
        let destination = match settings.proxy_protocol {
            Some(_) if ctx.local_addr.ip().is_unspecified() => {
                client.get_ref().local_addr().unwrap_or(ctx.local_addr)
            }
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
    let local = client.get_ref().local_addr().unwrap_or(ctx.local_addr);
    // Boxed: only listeners with `accept_proxy` need room for its buffer.
    Box::pin(read_proxy_header(client, peer, local, ctx.config.connect_timeout)).await
}

/// Connects to up to [`MAX_ATTEMPTS`] distinct backends in turn.
/// `peer` is the client as far as choosing goes (the PROXY header's, if any).
async fn connect(ctx: &Context<TcpSettings>, pool: &Pool, peer: SocketAddr) -> Option<(Sock, Lease)> {
    let mut tried = [SocketAddr::from(([0, 0, 0, 0], 0)); MAX_ATTEMPTS];
    let mut attempts = 0;
    while attempts < MAX_ATTEMPTS {
        let Some(mut lease) = ctx.upstream.choose(pool, peer.ip(), &tried[..attempts]) else {
            break;
        };
        tried[attempts] = lease.addr();
        attempts += 1;
        let wait = ctx.config.connect_timeout;
        match timeout(wait, sock::connect(lease.addr())).await {
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

/// Reads the PROXY header (v1 or v2) `stream` starts with, within `wait`.
/// Returns whom the connection is for, and the client's bytes read past the
/// header, which belong to the backend.
async fn read_proxy_header(
    stream: &Sock,
    peer: SocketAddr,
    local: SocketAddr,
    wait: Duration,
) -> Result<(Origin, Vec<u8>), BadHeader> {
    let mut buf = Vec::with_capacity(256);
    let read = async {
        let mut chunk = [0u8; 512];
        loop {
            if let Some((origin, consumed)) = proxy_protocol::parse(&buf, peer, local)? {
                buf.drain(..consumed);
                return Ok(origin);
            }
            if buf.len() >= MAX_HEADER {
                return Err(BadHeader::TooLarge);
            }
            let room = chunk.len().min(MAX_HEADER - buf.len());
            match read_some(stream, &mut chunk[..room]).await {
                Ok(0) | Err(_) => return Err(BadHeader::Closed),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let origin = tokio::time::timeout(wait, read)
        .await
        .map_err(|_| BadHeader::Timeout(wait))??;
    Ok((origin, buf))
}
