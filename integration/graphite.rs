//! carbon-cache behind sluice: metric lines over TCP and datagrams over
//! UDP land in whisper files.

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::*;

fn carbon(dir: &Path, port: u16) -> Proc {
    let d = dir.display();
    std::fs::create_dir_all(dir.join("whisper")).unwrap();
    let conf = format!(
        "[cache]\nSTORAGE_DIR = {d}/\nLOCAL_DATA_DIR = {d}/whisper/\nCONF_DIR = {d}/\nLOG_DIR = {d}/\n\
         PID_DIR = {d}/\nDATABASE = whisper\nMAX_CACHE_SIZE = inf\nMAX_UPDATES_PER_SECOND = 1000\n\
         MAX_CREATES_PER_MINUTE = inf\nLINE_RECEIVER_INTERFACE = 127.0.0.1\nLINE_RECEIVER_PORT = {port}\n\
         ENABLE_UDP_LISTENER = True\nUDP_RECEIVER_INTERFACE = 127.0.0.1\nUDP_RECEIVER_PORT = {port}\n\
         PICKLE_RECEIVER_INTERFACE = 127.0.0.1\nPICKLE_RECEIVER_PORT = {}\n\
         CACHE_QUERY_INTERFACE = 127.0.0.1\nCACHE_QUERY_PORT = {}\n",
        free_port(),
        free_port()
    );
    std::fs::write(dir.join("carbon.conf"), conf).unwrap();
    std::fs::write(
        dir.join("storage-schemas.conf"),
        "[all]\npattern = .*\nretentions = 1s:1h\n",
    )
    .unwrap();
    let child = Command::new("carbon-cache")
        .arg(format!("--config={d}/carbon.conf"))
        .arg(format!("--pidfile={d}/carbon.pid"))
        .arg(format!("--logdir={d}"))
        .args(["--nodaemon", "start"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("carbon-cache (apt-get install graphite-carbon)");
    wait_for_port(port, "carbon-cache");
    Proc(child)
}

/// carbon-cache registered as "graphite" in its own Consul DNS stand-in,
/// behind sluice with the shorthand `listener`; everything lives until dropped.
struct Graphite {
    _dns: ConsulDns,
    dir: tempfile::TempDir,
    _carbon: Proc,
    sluice: Sluice,
}

fn graphite_behind_sluice(listener: &str) -> Graphite {
    let dns = ConsulDns::start();
    let dir = tempfile::tempdir().unwrap();
    let carbon_port = free_port();
    let carbon = carbon(dir.path(), carbon_port);
    dns.add("graphite", "carbon1", carbon_port);
    let sluice = Sluice::start(&["--dns", &dns.addr(), listener], 1);
    sluice.wait_for_log("backends changed");
    Graphite {
        _dns: dns,
        dir,
        _carbon: carbon,
        sluice,
    }
}

#[test]
fn metric_line_through_sluice_lands_in_carbons_whisper_file() {
    let Graphite { dir, sluice, .. } = &graphite_behind_sluice("127.0.0.1:0:graphite");

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut stream = TcpStream::connect(sluice.addrs[0]).unwrap();
    stream
        .write_all(format!("sluice.integration.line 42 {now}\n").as_bytes())
        .unwrap();
    drop(stream);

    wait_for_whisper(dir.path(), "sluice.integration.line", now, 42);
}

/// Waits until carbon's whisper file for `metric` holds `value` at `time`.
fn wait_for_whisper(carbon_dir: &Path, metric: &str, time: u64, value: u32) {
    let wsp = carbon_dir.join("whisper").join(metric.replace('.', "/") + ".wsp");
    let want = format!("{value}.000000");
    let deadline = Instant::now() + STARTUP;
    loop {
        if wsp.exists() {
            let out = Command::new("whisper-fetch")
                .arg(format!("--from={}", time - 10))
                .arg(&wsp)
                .output()
                .expect("whisper-fetch (apt-get install python3-whisper)");
            let text = String::from_utf8_lossy(&out.stdout);
            if text
                .lines()
                .any(|l| l.starts_with(&time.to_string()) && l.ends_with(&want))
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "metric never reached {}",
            wsp.display()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metric_datagram_through_sluice_lands_in_carbons_whisper_file() {
    let Graphite { dir, sluice, .. } = &graphite_behind_sluice("127.0.0.1:0/udp:graphite");

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let line = format!("sluice.integration.udp 7 {now}\n");
    socket.send_to(line.as_bytes(), sluice.addrs[0]).unwrap();
    wait_for_whisper(dir.path(), "sluice.integration.udp", now, 7);
}
