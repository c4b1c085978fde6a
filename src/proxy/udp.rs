//! UDP proxying. With replies on (the default), a datagram from a new client
//! address opens a *flow*: a socket connected to one backend, so replies are
//! matched by the kernel without parsing, and a task that sends them back to
//! the client from the listener's address. Flows expire after
//! `udp_idle_timeout` without traffic either way; at `max_flows` the least
//! recently used one is evicted. A backend that answers with ICMP port
//! unreachable (ECONNREFUSED on the connected socket) ends its flow, counts
//! as a failure towards its ejection (as a refused TCP connect does), and the
//! client's next datagram picks another backend. Flows of a backend removed
//! from the set end after `drain_timeout`, like TCP connections.
//!
//! With `udp_replies = false` (statsd-like traffic) there are no flows:
//! each datagram goes to the next backend the balancer picks.
//!
//! Datagrams are never queued: when a socket buffer is full the datagram is
//! dropped, as the network would.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use arc_swap::ArcSwap;
use lru::LruCache;
use socket2::SockRef;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use super::{Activity, Context, Expired, Expiry};
use crate::alarm::Alarm;
use crate::balancer::{Lease, Pool};
use crate::config::UdpSettings;

/// Flows closed at once when no socket can be opened (descriptors exhausted).
const EVICT_FOR_DESCRIPTORS: usize = 16;

/// Larger than any UDP payload (65507 over IPv4).
const MAX_DATAGRAM: usize = 65_536;

thread_local! {
    /// One reply buffer per worker thread, used without an await in between.
    static REPLY_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; MAX_DATAGRAM].into_boxed_slice());
}

/// Why a flow's reply task ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowEnd {
    Idle,
    /// The backend's port is closed (ICMP port unreachable).
    Refused,
    /// Its backend or listener was removed and `drain_timeout` ran out.
    Drained,
}

/// A flow as the receive loop owns it. Dropping it stops its reply task.
struct Flow {
    id: u64,
    upstream: Arc<UdpSocket>,
    clock: Arc<Activity>,
    replies: AbortHandle,
    /// Shared with the reply task: the backend counts the flow until both end.
    lease: Arc<Lease>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

/// Receives on `socket` until `stop`, forwarding each datagram with the
/// context current when it arrives (a reload changes new flows only).
pub async fn serve(
    socket: UdpSocket,
    current: Arc<ArcSwap<Context<UdpSettings>>>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let ctx = current.load_full();
    Flows::new(Arc::new(socket), current, ctx, tracker)
        .run(stop)
        .await;
    info!("stopped receiving");
}

/// One UDP listener's state: the flow table and what maintaining it needs.
struct Flows {
    socket: Arc<UdpSocket>,
    current: Arc<ArcSwap<Context<UdpSettings>>>,
    /// The context of the datagram being handled.
    ctx: Arc<Context<UdpSettings>>,
    table: LruCache<SocketAddr, Flow>,
    /// Backends that refused a client, avoided by its next flow.
    refused: HashMap<SocketAddr, SocketAddr>,
    ended_tx: mpsc::UnboundedSender<(SocketAddr, u64, FlowEnd)>,
    ended_rx: mpsc::UnboundedReceiver<(SocketAddr, u64, FlowEnd)>,
    next_id: u64,
    /// Fire-and-forget: one unconnected socket per address family, made on first use.
    senders: [Option<UdpSocket>; 2],
    /// This context has already waited once for its first pool.
    waited: bool,
    /// No socket could be opened for a new flow lately (logged once).
    sockets_failing: Alarm,
    /// Where the flows' reply tasks run.
    tracker: TaskTracker,
}

impl Flows {
    fn new(
        socket: Arc<UdpSocket>,
        current: Arc<ArcSwap<Context<UdpSettings>>>,
        ctx: Arc<Context<UdpSettings>>,
        tracker: TaskTracker,
    ) -> Flows {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        Flows {
            socket,
            ctx,
            current,
            table: LruCache::unbounded(),
            refused: HashMap::new(),
            ended_tx,
            ended_rx,
            next_id: 0,
            senders: [None, None],
            waited: false,
            sockets_failing: Alarm::new(),
            tracker,
        }
    }

    async fn run(mut self, shutdown: CancellationToken) {
        let mut buf = vec![0; MAX_DATAGRAM];
        let recv_failing = Alarm::new();
        loop {
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((n, client)) => {
                        if recv_failing.clear() {
                            info!("receiving again");
                        }
                        if !Arc::ptr_eq(&self.ctx, &self.current.load()) {
                            self.ctx = self.current.load_full();
                            self.waited = false;
                        }
                        if self.ctx.settings.replies {
                            self.forward(client, &buf[..n]).await;
                        } else {
                            self.spread(client, &buf[..n]).await;
                        }
                    }
                    Err(e) => {
                        if let Some(repeated) = recv_failing.raise() {
                            warn!(error = %e, repeated, "receive failed");
                        }
                    }
                },
                Some((client, id, end)) = self.ended_rx.recv() => self.ended(client, id, end),
                _ = shutdown.cancelled() => break,
            }
        }
        self.table.clear();
        self.ctx.active.store(0, Relaxed);
    }

    fn ended(&mut self, client: SocketAddr, id: u64, end: FlowEnd) {
        // The flow may already be gone (evicted) or replaced by a newer one.
        if self.table.peek(&client).is_some_and(|f| f.id == id)
            && let Some(flow) = self.table.pop(&client)
        {
            self.close(client, flow, end);
        }
    }

    fn close(&mut self, client: SocketAddr, flow: Flow, end: FlowEnd) {
        self.ctx.active.fetch_sub(1, Relaxed);
        if end == FlowEnd::Refused {
            flow.lease.failed("port unreachable");
            if self.refused.len() >= self.ctx.settings.max_flows {
                self.refused.clear();
            }
            self.refused.insert(client, flow.lease.addr());
        }
    }

    /// The current pool. Only the first datagram of a context waits for the
    /// first discovery answer (later ones queue in the kernel meanwhile);
    /// after that a datagram with no pool is dropped at once, so a failing
    /// DNS never holds up the receive loop.
    async fn pool(&mut self) -> Option<Arc<Pool>> {
        if let Some(pool) = self.ctx.upstream.current() {
            return Some(pool);
        }
        if std::mem::replace(&mut self.waited, true) {
            return None;
        }
        self.ctx.upstream.ready(self.ctx.config.connect_timeout).await
    }

    /// Closes the least recently used flow; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        match self.table.pop_lru() {
            Some((client, flow)) => {
                self.close(client, flow, FlowEnd::Idle);
                true
            }
            None => false,
        }
    }

    /// Sends one client datagram through the client's flow, opening one if needed.
    async fn forward(&mut self, client: SocketAddr, data: &[u8]) {
        // One retry: a refusal seen on send opens a flow to another backend.
        for _ in 0..2 {
            if !self.table.contains(&client) && !self.open(client).await {
                return;
            }
            let Some(flow) = self.table.get(&client) else {
                return;
            };
            match send_now(&flow.upstream, data, None) {
                Ok(_) => {
                    flow.clock.touch();
                    self.ctx.metrics.bytes_up.increment(data.len() as u64);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    if let Some(flow) = self.table.pop(&client) {
                        self.close(client, flow, FlowEnd::Refused);
                    }
                }
                // A full socket buffer drops the datagram, as a router would.
                Err(_) => return,
            }
        }
    }

    /// Opens a flow for `client`; false when there is no backend to use.
    async fn open(&mut self, client: SocketAddr) -> bool {
        let ctx = self.ctx.clone();
        if !self.admits(client) {
            return false;
        }
        let Some(pool) = self.pool().await else {
            ctx.upstream.unreachable(client, "no discovery answer yet");
            return false;
        };
        let avoid: Vec<SocketAddr> = self.refused.remove(&client).into_iter().collect();
        let chosen = ctx.upstream.choose(&pool, client.ip(), &avoid);
        // Only the refusing backend is left: better it than nothing.
        let chosen = chosen.or_else(|| ctx.upstream.choose(&pool, client.ip(), &[]));
        let Some(mut lease) = chosen else {
            ctx.upstream.unreachable(client, "no backends");
            return false;
        };
        if self.table.len() >= self.ctx.settings.max_flows {
            self.evict_oldest();
        }
        let mut opened = connected_socket(lease.addr()).await;
        if opened.is_err() && self.evict_oldest() {
            // Out of descriptors (max_flows above the fd limit): the oldest flows
            // give up their sockets, freed once their reply tasks have stopped.
            for _ in 1..EVICT_FOR_DESCRIPTORS {
                self.evict_oldest();
            }
            tokio::task::yield_now().await;
            opened = connected_socket(lease.addr()).await;
        }
        let upstream = match opened {
            Ok(s) => Arc::new(s),
            Err(e) => {
                // Our descriptors ran out: not the backend's fault.
                if let Some(repeated) = self.sockets_failing.raise() {
                    warn!(backend = %lease.addr(), error = %e, repeated, "cannot open UDP sockets, dropping datagrams of new flows");
                }
                return false;
            }
        };
        if self.sockets_failing.clear() {
            info!("UDP sockets can be opened again");
        }
        lease.connected();
        let lease = Arc::new(lease);
        self.next_id += 1;
        let clock = Arc::new(Activity::new());
        let replies = Replies {
            id: self.next_id,
            client,
            upstream: upstream.clone(),
            listener: self.socket.clone(),
            clock: clock.clone(),
            ctx: ctx.clone(),
            idle_timeout: self.ctx.settings.idle_timeout,
            lease: lease.clone(),
            ended: self.ended_tx.clone(),
        };
        let replies = self.tracker.spawn(replies.run().instrument(ctx.span.clone()));
        ctx.metrics.connections.increment(1);
        ctx.active.fetch_add(1, Relaxed);
        let flow = Flow {
            id: self.next_id,
            upstream,
            clock,
            replies: replies.abort_handle(),
            lease,
        };
        self.table.put(client, flow);
        true
    }

    /// Fire-and-forget: the datagram to the next backend, no state per client.
    /// Whether `client` may send here (refused: counted). Judged when a
    /// flow opens, before anything is spent on it, so an established flow
    /// is not cut by a reload's new rules, as a TCP connection is not.
    fn admits(&self, client: SocketAddr) -> bool {
        let admitted = self.ctx.config.access.admits(client.ip());
        admitted.map_err(|why| self.ctx.refuse(client, why)).is_ok()
    }

    async fn spread(&mut self, client: SocketAddr, data: &[u8]) {
        if !self.admits(client) {
            return;
        }
        let Some(pool) = self.pool().await else {
            return;
        };
        let ctx = &self.ctx;
        let Some(mut lease) = ctx.upstream.choose(&pool, client.ip(), &[]) else {
            ctx.upstream.unreachable(client, "no backends");
            return;
        };
        let family = usize::from(lease.addr().is_ipv6());
        if self.senders[family].is_none() {
            match UdpSocket::bind(crate::net::any_addr_like(lease.addr())).await {
                Ok(s) => self.senders[family] = Some(s),
                Err(e) => {
                    if let Some(repeated) = self.sockets_failing.raise() {
                        warn!(error = %e, repeated, "cannot open a UDP socket");
                    }
                    return;
                }
            }
        }
        if let Some(sender) = &self.senders[family] {
            match send_now(sender, data, Some(lease.addr())) {
                Ok(_) => {
                    lease.connected();
                    ctx.metrics.bytes_up.increment(data.len() as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => lease.failed(e),
                // A full socket buffer drops the datagram, as a router would.
                Err(_) => {}
            }
        }
    }
}

/// One non-blocking send, straight to the kernel. tokio's `try_send` would
/// refuse a socket whose writability the reactor has not reported yet (every
/// new flow's first datagram); a full buffer still fails with `WouldBlock`.
fn send_now(socket: &UdpSocket, data: &[u8], to: Option<SocketAddr>) -> io::Result<usize> {
    let socket = SockRef::from(socket);
    match to {
        Some(addr) => socket.send_to(data, &addr.into()),
        None => socket.send(data),
    }
}

/// A UDP socket connected to `backend`, so only its datagrams arrive.
async fn connected_socket(backend: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(crate::net::any_addr_like(backend)).await?;
    socket.connect(backend).await?;
    Ok(socket)
}

/// What a flow's reply task needs.
struct Replies {
    id: u64,
    client: SocketAddr,
    upstream: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    clock: Arc<Activity>,
    ctx: Arc<Context<UdpSettings>>,
    idle_timeout: Duration,
    lease: Arc<Lease>,
    ended: mpsc::UnboundedSender<(SocketAddr, u64, FlowEnd)>,
}

impl Replies {
    /// Sends the flow's replies back to its client until the flow is idle,
    /// refused, or drained (its backend or listener removed, then
    /// `drain_timeout`).
    async fn run(self) {
        let Replies {
            id,
            client,
            upstream,
            listener,
            clock,
            ctx,
            idle_timeout: idle,
            lease,
            ended,
        } = self;
        let timer = sleep_until(clock.deadline(idle));
        let removed = lease.removed();
        tokio::pin!(timer, removed);
        let (mut expiry, mut draining) = (Expiry::default(), false);
        let end = loop {
            tokio::select! {
                readable = upstream.readable() => {
                    if readable.is_err() {
                        break FlowEnd::Idle;
                    }
                    let relayed = REPLY_BUFFER.with_borrow_mut(|buf| {
                        let n = upstream.try_recv(buf)?;
                        // A full listener buffer drops the reply, as a router would.
                        let _ = send_now(&listener, &buf[..n], Some(client));
                        Ok::<usize, io::Error>(n)
                    });
                    match relayed {
                        Ok(n) => {
                            clock.touch();
                            ctx.metrics.bytes_down.increment(n as u64);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break FlowEnd::Refused,
                        Err(e) => debug!(%client, error = %e, "reply lost"),
                    }
                }
                _ = &mut timer => match expiry.fired(clock.deadline(idle), timer.as_mut()) {
                    Some(Expired::Idle) => break FlowEnd::Idle,
                    Some(Expired::Drained) => break FlowEnd::Drained,
                    None => {}
                },
                _ = &mut removed, if !draining => {
                    draining = true;
                    expiry.drain(ctx.config.drain_timeout, timer.as_mut());
                }
            }
        };
        let _ = ended.send((client, id, end));
    }
}
