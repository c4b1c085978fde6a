//! A hostile DNS server for the soak test (`bench/soak.sh`): it forwards
//! every query to a real server (BIND as the Consul stand-in), except those
//! for `hostile.service.consul.`, which get a different bad answer each
//! time, in turn: garbage, a forged ID, SERVFAIL, silence, a huge answer of
//! glueless targets whose lookups are never answered, addresses that cannot
//! be backends, records of the wrong type, a truncated answer whose TCP
//! retry is cut off, a record pointing at sluice itself, and now and then a
//! good answer.
//!
//!   hostile-dns LISTEN UPSTREAM SELF_ADDR GOOD_ADDR
//!   e.g. hostile-dns 127.0.0.1:8700 127.0.0.1:8600 127.0.0.2:6400 127.0.0.1:7001

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const HOSTILE: &str = "hostile.service.consul.";
/// Glueless targets in the huge answer (its size stays under 64 KiB).
const HUGE_TARGETS: u16 = 1200;

struct Server {
    upstream: SocketAddr,
    itself: SocketAddr,
    good: SocketAddr,
    turn: AtomicUsize,
}

/// What a query gets.
enum Reply {
    Bytes(Vec<u8>),
    Silence,
    /// TCP only: close the connection without answering.
    Hangup,
}

impl Server {
    fn name(text: &str) -> Name {
        Name::from_ascii(text).expect("a valid constant name")
    }

    fn srv(port: u16, target: &str) -> Record {
        let rdata = SRV::new(1, 1, port, Self::name(target));
        Record::from_rdata(Self::name(HOSTILE), 0, RData::SRV(rdata))
    }

    fn a(owner: &str, ip: Ipv4Addr) -> Record {
        Record::from_rdata(Self::name(owner), 0, RData::A(A::from(ip)))
    }

    /// An SRV record plus its glue for `addr`.
    fn pointing_at(reply: &mut Message, addr: SocketAddr, target: &str) {
        reply.add_answer(Self::srv(addr.port(), target));
        if let IpAddr::V4(ip) = addr.ip() {
            reply.add_additional(Self::a(target, ip));
        }
    }

    /// The next bad answer to `request`, a query for [`HOSTILE`].
    fn hostile(&self, request: &Message, tcp: bool) -> Reply {
        let mut reply = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
        reply.add_queries(request.queries.clone());
        match self.turn.fetch_add(1, Relaxed) % 10 {
            0 => return Reply::Bytes(b"\xde\xad\xbe\xef not dns at all".to_vec()),
            1 => {
                Self::pointing_at(&mut reply, self.good, "forged.node.dc1.consul.");
                reply.metadata.id = request.metadata.id.wrapping_add(1);
            }
            2 => reply.metadata.response_code = ResponseCode::ServFail,
            3 => return Reply::Silence,
            4 => {
                for i in 0..HUGE_TARGETS {
                    let target = format!("never-{i}.node.dc1.consul.");
                    reply.add_answer(Self::srv(7000 + i, &target));
                }
            }
            5 => {
                for (ip, port) in [
                    (Ipv4Addr::UNSPECIFIED, self.good.port()),
                    (Ipv4Addr::BROADCAST, 80),
                    (Ipv4Addr::new(224, 0, 0, 1), 80),
                ] {
                    let target = format!("{ip}.bad.node.dc1.consul.").replace("0.0.0.0", "zero");
                    Self::pointing_at(&mut reply, SocketAddr::new(ip.into(), port), &target);
                }
            }
            6 => {
                reply.add_answer(Self::a(HOSTILE, Ipv4Addr::LOCALHOST));
            }
            7 if tcp => return Reply::Hangup,
            7 => reply.metadata.truncation = true,
            8 => Self::pointing_at(&mut reply, self.itself, "itself.node.dc1.consul."),
            _ => Self::pointing_at(&mut reply, self.good, "good.node.dc1.consul."),
        }
        match reply.to_vec() {
            Ok(bytes) if !tcp && bytes.len() > 4096 => {
                // Too large for UDP: truncated, so the client retries over TCP.
                let mut cut = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
                cut.add_queries(request.queries.clone());
                cut.metadata.truncation = true;
                cut.to_vec().map_or(Reply::Silence, Reply::Bytes)
            }
            Ok(bytes) => Reply::Bytes(bytes),
            Err(_) => Reply::Silence,
        }
    }

    async fn answer(&self, query: &[u8], tcp: bool) -> Reply {
        let Ok(request) = Message::from_vec(query) else {
            return Reply::Silence;
        };
        let name = request
            .queries
            .first()
            .map(|q| q.name().to_ascii().to_ascii_lowercase());
        match name.as_deref() {
            Some(HOSTILE) => self.hostile(&request, tcp),
            // The huge answer's targets: never answered.
            Some(name) if name.starts_with("never-") => Reply::Silence,
            _ => self.forward(query).await.map_or(Reply::Silence, Reply::Bytes),
        }
    }

    /// The upstream's answer, over UDP with TCP for what is truncated.
    async fn forward(&self, query: &[u8]) -> Option<Vec<u8>> {
        let exchange = async {
            let socket = UdpSocket::bind("127.0.0.1:0").await.ok()?;
            socket.send_to(query, self.upstream).await.ok()?;
            let mut buf = vec![0; 65535];
            let n = socket.recv(&mut buf).await.ok()?;
            buf.truncate(n);
            Some(buf)
        };
        tokio::time::timeout(Duration::from_secs(2), exchange)
            .await
            .ok()?
    }
}

async fn serve_udp(socket: UdpSocket, server: Arc<Server>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0; 65535];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let (query, server, socket) = (buf[..n].to_vec(), server.clone(), socket.clone());
        tokio::spawn(async move {
            if let Reply::Bytes(reply) = server.answer(&query, false).await {
                let _ = socket.send_to(&reply, from).await;
            }
        });
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, server: Arc<Server>) {
    while let Ok(len) = stream.read_u16().await {
        let mut query = vec![0; usize::from(len)];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        let reply = match server.answer(&query, true).await {
            Reply::Bytes(reply) => reply,
            Reply::Silence => continue,
            Reply::Hangup => return,
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend(reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<SocketAddr> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("ip:port arguments"))
        .collect();
    let [listen, upstream, itself, good] = args[..] else {
        eprintln!("usage: hostile-dns LISTEN UPSTREAM SELF_ADDR GOOD_ADDR");
        std::process::exit(2);
    };
    let server = Arc::new(Server {
        upstream,
        itself,
        good,
        turn: AtomicUsize::new(0),
    });
    let udp = UdpSocket::bind(listen).await.expect("bind UDP");
    let tcp = TcpListener::bind(listen).await.expect("bind TCP");
    tokio::spawn(serve_udp(udp, server.clone()));
    loop {
        if let Ok((stream, _)) = tcp.accept().await {
            tokio::spawn(serve_tcp_connection(stream, server.clone()));
        }
    }
}
