//! Reload in-process: listeners are added, removed and changed as a diff;
//! established connections survive; a reload that cannot apply changes nothing.

mod common;

use std::net::SocketAddr;

use common::{backend_port, connect, echo_backends};
use sluice::{Config, Server};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

fn listener(name: &str, bind: &str, backend: SocketAddr) -> String {
    format!("[listeners.{name}]\nbind = \"{bind}\"\nbackends = [\"{backend}\"]\n")
}

fn parse(text: &str) -> Config {
    Config::parse(text, "reload.toml", &Default::default()).unwrap()
}

/// Writes a line on an established connection and expects it echoed.
async fn still_echoes(conn: &mut tokio::io::BufReader<TcpStream>) {
    conn.get_mut().write_all(b"ping\n").await.unwrap();
    let mut line = String::new();
    conn.read_line(&mut line).await.unwrap();
    assert_eq!(line, "ping\n");
}

#[tokio::test]
async fn reload_adds_removes_and_changes_listeners_as_a_diff() {
    let b = echo_backends(3).await;
    let keep = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let config = format!(
        "{}{}",
        listener("keep", &keep.to_string(), b[0].addr),
        listener("drop", "127.0.0.1:0", b[0].addr)
    );
    let server = Server::bind(parse(&config)).await.unwrap();
    let addr_of = |name: &str| {
        server
            .local_addrs()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
    };
    let (keep_addr, drop_addr) = (addr_of("keep"), addr_of("drop"));
    let control = server.control();
    let shutdown = CancellationToken::new();
    tokio::spawn(server.run(shutdown.clone()));

    let (mut on_keep, port) = connect(keep_addr).await;
    assert_eq!(port, b[0].addr.port());
    let (mut on_drop, _) = connect(drop_addr).await;

    // keep: same bind, new backend; drop: removed; add: new.
    let next = format!(
        "{}{}",
        listener("keep", &keep.to_string(), b[1].addr),
        listener("add", "127.0.0.1:0", b[2].addr)
    );
    let report = control.reload(parse(&next)).await.unwrap();
    assert_eq!(report.changed, ["keep"]);
    assert_eq!(report.removed, ["drop"]);
    assert_eq!(report.added.len(), 1);
    let (name, add_addr) = &report.added[0];
    assert_eq!(name, "add");

    assert_eq!(
        backend_port(keep_addr).await,
        b[1].addr.port(),
        "new connections get the new settings"
    );
    assert_eq!(backend_port(*add_addr).await, b[2].addr.port());
    assert!(
        TcpStream::connect(drop_addr).await.is_err(),
        "removed listener still accepts"
    );
    still_echoes(&mut on_keep).await;
    still_echoes(&mut on_drop).await;

    // The same config again changes nothing.
    let report = control.reload(parse(&next)).await.unwrap();
    assert_eq!(report, sluice::ReloadReport::default());
    shutdown.cancel();
}

#[tokio::test]
async fn a_reload_that_cannot_bind_changes_nothing() {
    let b = echo_backends(2).await;
    let server = Server::bind(parse(&listener("app", "127.0.0.1:0", b[0].addr)))
        .await
        .unwrap();
    let app = server.local_addrs()[0].1;
    let control = server.control();
    let shutdown = CancellationToken::new();
    tokio::spawn(server.run(shutdown.clone()));

    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let next = format!(
        "{}{}",
        listener("app", "127.0.0.1:0", b[1].addr),
        listener("clash", &taken.local_addr().unwrap().to_string(), b[1].addr)
    );
    let err = control.reload(parse(&next)).await.unwrap_err().to_string();
    assert!(err.starts_with("listener 'clash': cannot bind"), "{err}");
    assert_eq!(
        backend_port(app).await,
        b[0].addr.port(),
        "the old settings still run"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn the_first_dns_listener_of_a_reload_gets_a_dns_client() {
    let b = echo_backends(2).await;
    let server = Server::bind(parse(&listener("static", "127.0.0.1:0", b[0].addr)))
        .await
        .unwrap();
    let control = server.control();
    let shutdown = CancellationToken::new();
    tokio::spawn(server.run(shutdown.clone()));

    let dns = common::FakeDns::start().await;
    dns.set_backends("redis", &[b[1].addr]);
    let next = common::dns_config(&dns, "redis", "");
    let report = control.reload(parse(&next)).await.unwrap();
    let (_, addr) = report.added[0];
    assert_eq!(backend_port(addr).await, b[1].addr.port());
    shutdown.cancel();
}
