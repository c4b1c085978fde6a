//! UDP echo server and windowed UDP load generator for bench/run.sh.
//!
//!   udpload echo ADDR
//!   udpload load TARGET --clients N --window W --seconds S --size BYTES
//!
//! `load` runs N client sockets, each bound to its own source port (so each is
//! its own flow through a proxy) and connected to TARGET. Each keeps up to W
//! datagrams in flight: it sends W, then one more for every reply. The first 8
//! bytes of a datagram carry its send time (ns since the run started), so the
//! echoed copy gives the round-trip time. A socket that hears nothing for 1 s
//! counts its in-flight datagrams as lost and sends a fresh window; replies to
//! datagrams sent before that are stale and ignored. Prints one JSON line:
//! {"datagrams_per_sec":..,"p50_us":..,"p99_us":..,"lost":..,"received":..}

use std::io::ErrorKind;
use std::net::UdpSocket;
use std::process::exit;
use std::thread;
use std::time::{Duration, Instant};

fn usage() -> ! {
    eprintln!("usage: udpload echo ADDR");
    eprintln!("       udpload load TARGET --clients N --window W --seconds S --size BYTES");
    exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("echo") if args.len() == 2 => echo(&args[1]),
        Some("load") if args.len() >= 2 => load(&args[1], &args[2..]),
        _ => usage(),
    }
}

fn echo(addr: &str) {
    let socket = UdpSocket::bind(addr).unwrap_or_else(|e| {
        eprintln!("udpload: bind {addr}: {e}");
        exit(1)
    });
    eprintln!("udpload: echo on {}", socket.local_addr().unwrap());
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                // A full socket buffer or a vanished peer is not our problem.
                let _ = socket.send_to(&buf[..n], peer);
            }
            Err(e) => eprintln!("udpload: recv: {e}"),
        }
    }
}

struct Options {
    clients: usize,
    window: usize,
    seconds: u64,
    size: usize,
}

fn parse_options(rest: &[String]) -> Options {
    let mut o = Options {
        clients: 8,
        window: 8,
        seconds: 5,
        size: 64,
    };
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let value: u64 = match it.next().and_then(|v| v.parse().ok()) {
            Some(v) if v > 0 => v,
            _ => usage(),
        };
        match flag.as_str() {
            "--clients" => o.clients = value as usize,
            "--window" => o.window = value as usize,
            "--seconds" => o.seconds = value,
            "--size" => o.size = value as usize,
            _ => usage(),
        }
    }
    // Room for the timestamp; at most the largest UDP payload.
    o.size = o.size.clamp(8, 65507);
    o
}

/// What one client socket saw.
struct ClientResult {
    /// Round-trip times in ns of replies received before the deadline.
    rtts: Vec<u64>,
    lost: u64,
}

fn load(target: &str, rest: &[String]) {
    let o = parse_options(rest);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(o.seconds);
    let handles: Vec<_> = (0..o.clients)
        .map(|_| {
            let target = target.to_string();
            let (window, size) = (o.window, o.size);
            thread::spawn(move || client(&target, window, size, start, deadline))
        })
        .collect();
    let mut rtts = Vec::new();
    let mut lost = 0;
    for h in handles {
        let r = h.join().expect("client thread panicked");
        rtts.extend(r.rtts);
        lost += r.lost;
    }
    rtts.sort_unstable();
    let pct = |p: f64| -> f64 {
        if rtts.is_empty() {
            return 0.0;
        }
        let i = ((rtts.len() as f64 * p).ceil() as usize).clamp(1, rtts.len()) - 1;
        rtts[i] as f64 / 1000.0
    };
    println!(
        "{{\"datagrams_per_sec\":{:.0},\"p50_us\":{:.1},\"p99_us\":{:.1},\"lost\":{},\"received\":{}}}",
        rtts.len() as f64 / o.seconds as f64,
        pct(0.50),
        pct(0.99),
        lost,
        rtts.len()
    );
}

fn client(target: &str, window: usize, size: usize, start: Instant, deadline: Instant) -> ClientResult {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind client socket");
    socket.connect(target).unwrap_or_else(|e| {
        eprintln!("udpload: connect {target}: {e}");
        exit(1)
    });
    socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut out = vec![0u8; size];
    let mut buf = vec![0u8; 65536];
    let mut result = ClientResult {
        rtts: Vec::with_capacity(1 << 16),
        lost: 0,
    };
    // Replies to datagrams sent before `epoch` (ns) belong to a window already written off.
    let mut epoch: u64 = 0;
    let mut in_flight: usize = 0;

    let send = |out: &mut [u8]| {
        let now = start.elapsed().as_nanos() as u64;
        out[..8].copy_from_slice(&now.to_le_bytes());
        // ECONNREFUSED here (an earlier ICMP unreachable) shows up again on recv.
        let _ = socket.send(out);
    };

    while Instant::now() < deadline {
        while in_flight < window {
            send(&mut out);
            in_flight += 1;
        }
        match socket.recv(&mut buf) {
            Ok(n) if n >= 8 => {
                let now = start.elapsed().as_nanos() as u64;
                let sent = u64::from_le_bytes(buf[..8].try_into().unwrap());
                if sent < epoch || sent > now {
                    continue; // stale (or not ours)
                }
                in_flight = in_flight.saturating_sub(1);
                if Instant::now() < deadline {
                    result.rtts.push(now - sent);
                }
            }
            Ok(_) => {} // too short to be ours
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                // Nothing for 1 s: the whole window is lost; start a new one.
                result.lost += in_flight as u64;
                in_flight = 0;
                epoch = start.elapsed().as_nanos() as u64;
            }
            Err(e) => {
                // e.g. ECONNREFUSED: nobody listens (yet). Write off, back off a little.
                if e.kind() != ErrorKind::ConnectionRefused {
                    eprintln!("udpload: recv: {e}");
                }
                result.lost += in_flight as u64;
                in_flight = 0;
                thread::sleep(Duration::from_millis(10));
                epoch = start.elapsed().as_nanos() as u64;
            }
        }
    }
    result
}
