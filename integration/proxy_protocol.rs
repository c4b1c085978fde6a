//! The PROXY protocol with real peers: nginx (stream, `listen ...
//! proxy_protocol`) behind sluice logs the test client's own address, and
//! HAProxy (`send-proxy-v2`) in front of sluice (`accept_proxy`) in front
//! of that nginx still gets the original client through to it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use crate::support::*;

/// The address tests connect from: not 127.0.0.1, so it cannot be mistaken
/// for a proxy's own.
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

/// nginx answering `hello` on `port` behind a PROXY header, logging the
/// address the header gave ($proxy_protocol_addr) and the peer's.
fn nginx(dir: &Path, port: u16) -> Proc {
    let d = dir.display();
    let conf = format!(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
         daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         stream {{\n  log_format pp '$proxy_protocol_addr $remote_addr';\n\
           server {{ listen 127.0.0.1:{port} proxy_protocol; access_log {d}/access.log pp; return \"hello\\n\"; }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("nginx")
        .args([
            "-p",
            &d.to_string(),
            "-c",
            &format!("{d}/nginx.conf"),
            "-e",
            &format!("{d}/error.log"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (apt-get install nginx libnginx-mod-stream)");
    wait_for_port(port, "nginx");
    Proc(child)
}

/// HAProxy on `port` sending every connection to `to` with a v2 header.
fn haproxy(dir: &Path, port: u16, to: SocketAddr) -> Proc {
    let conf = format!(
        "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
         frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n\
         backend b\n  server s1 {to} send-proxy-v2\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy (apt-get install haproxy)");
    wait_for_port(port, "haproxy");
    Proc(child)
}

/// What a client at [`CLIENT_IP`] reads through `addr`.
fn hello_from_client_ip(addr: SocketAddr) -> String {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((CLIENT_IP, 0)).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(STARTUP)).unwrap();
    stream.write_all(b"hi\n").unwrap();
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply
}

/// nginx's access log once it has `lines` lines, without those of the
/// readiness probe (a plain connect, no header: `- 127.0.0.1`).
fn nginx_log(dir: &Path, lines: usize) -> String {
    let deadline = Instant::now() + STARTUP;
    loop {
        let log = std::fs::read_to_string(dir.join("access.log")).unwrap_or_default();
        let log: String = log
            .lines()
            .filter(|l| !l.starts_with("- "))
            .map(|l| format!("{l}\n"))
            .collect();
        if log.lines().count() >= lines {
            return log;
        }
        assert!(Instant::now() < deadline, "nginx logged {log:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nginx_behind_sluice_sees_the_client_itself() {
    let dir = tempfile::tempdir().unwrap();
    let nginx_port = free_port();
    let _nginx = nginx(dir.path(), nginx_port);
    for (n, version) in ["v1", "v2"].into_iter().enumerate() {
        let config = config_file(
            dir.path(),
            &format!(
                "[listeners.web]\nbind = \"127.0.0.1:0\"\nbackends = [\"127.0.0.1:{nginx_port}\"]\n\
                 proxy_protocol = \"{version}\"\n"
            ),
        );
        let sluice = Sluice::start(&["--config", config.to_str().unwrap()], 1);
        assert_eq!(hello_from_client_ip(sluice.addrs[0]), "hello\n", "{version}");
        let log = nginx_log(dir.path(), n + 1);
        let line = log.lines().nth(n).unwrap();
        assert_eq!(line, format!("{CLIENT_IP} 127.0.0.1"), "{version}: {log}");
    }
}

#[test]
fn haproxy_then_sluice_then_nginx_keep_the_original_client() {
    let dir = tempfile::tempdir().unwrap();
    let nginx_port = free_port();
    let _nginx = nginx(dir.path(), nginx_port);
    let config = config_file(
        dir.path(),
        &format!(
            "[listeners.web]\nbind = \"127.0.0.1:0\"\nbackends = [\"127.0.0.1:{nginx_port}\"]\n\
             accept_proxy = true\nproxy_protocol = \"v1\"\naccess_log = true\n"
        ),
    );
    let sluice = Sluice::start(&["--config", config.to_str().unwrap()], 1);
    let haproxy_port = free_port();
    let _haproxy = haproxy(dir.path(), haproxy_port, sluice.addrs[0]);
    let front = SocketAddr::from(([127, 0, 0, 1], haproxy_port));
    assert_eq!(hello_from_client_ip(front), "hello\n");
    // HAProxy's own readiness probe came through as 127.0.0.1; ours as us.
    let log = nginx_log(dir.path(), 2);
    assert!(
        log.lines().any(|l| l == format!("{CLIENT_IP} 127.0.0.1")),
        "{log}"
    );
    // sluice's access log names the client too, not HAProxy.
    let access = sluice.wait_for_log(&format!("client={CLIENT_IP}:"));
    assert!(access.contains("sluice::access"), "{access}");
}
