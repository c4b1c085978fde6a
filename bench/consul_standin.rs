//! A stand-in Consul agent for the benchmark, serving the HTTP API of
//! test-support/src/consul_standin.rs:
//!
//!   consul-standin [PORT]
//!
//! It listens on 127.0.0.1:PORT (0, the default: any free port), prints
//! `listening 127.0.0.1:<port>` once it accepts connections, and runs until
//! killed. The benchmark registers instances and puts them in maintenance over
//! HTTP (`/v1/agent/service/register`, `…/maintenance/:id?enable=`).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};

// One thread: the stand-in should take as little as possible from what is measured.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port = match (args.next().map(|arg| arg.parse::<u16>()), args.next()) {
        (None, _) => 0,
        (Some(Ok(port)), None) => port,
        _ => {
            eprintln!("usage: consul-standin [PORT]");
            std::process::exit(2);
        }
    };
    let standin = sluice_test_support::consul_standin::ConsulStandin::start_on(SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        port,
    )))
    .await;
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "listening {}", standin.addr)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        std::process::exit(1);
    }
    std::future::pending::<()>().await;
}
