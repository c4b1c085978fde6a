//! UDP flows when `max_flows` is above what the file descriptor limit allows:
//! the oldest flows give up their sockets, so new clients are still served
//! (a client's first datagram may be lost when it hits the limit, as UDP allows).
//! (Its own test binary: it lowers the process's descriptor limit.)

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{FakeDns, Sluice, UdpEcho, http_get, sample};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_beyond_the_descriptor_limit_evict_the_oldest() {
    let limit = libc::rlimit {
        rlim_cur: 256,
        rlim_max: 256,
    };
    // SAFETY: setrlimit with a valid struct; only this test process is affected.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);

    let dns = FakeDns::start().await;
    let echo = UdpEcho::start().await;
    dns.set_backends("dns", &[echo.addr]);
    let config = format!(
        "dns = \"{}\"\nmetrics = \"127.0.0.1:0\"\n[listeners.dns]\nbind = \"127.0.0.1:0\"\n\
         protocol = \"udp\"\nservice = \"dns\"\nmax_flows = 100000\n",
        dns.addr
    );
    let sluice = Sluice::start(&config).await;
    let target = sluice.addr();
    const CLIENTS: u32 = 600;
    let answered = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 16];
        (0..CLIENTS)
            .filter(|i| {
                let socket = std::net::UdpSocket::bind((Ipv4Addr::from(0x7f02_0000 + i), 0)).unwrap();
                socket.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
                // Like a DNS client: a few tries.
                (0..3).any(|_| {
                    socket.send_to(b"x", target).unwrap();
                    socket.recv(&mut buf).is_ok()
                })
            })
            .count() as u32
    })
    .await
    .unwrap();
    assert_eq!(answered, CLIENTS, "every client is served despite the fd limit");
    let (_, text) = http_get(sluice.metrics.unwrap(), "/metrics").await;
    let flows = sample(&text, "sluice_udp_flows_active{listener=\"dns\"}").unwrap();
    assert!(flows < 256.0, "{flows} flows cannot fit in 256 descriptors");
}
