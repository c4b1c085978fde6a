//! Redis behind sluice, found through real BIND: every instance reached,
//! instances added and removed with nsupdate, a killed instance, reloads
//! under load and a zero-downtime upgrade.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use crate::support::*;

#[test]
fn redis_ping_through_sluice_reaches_all_three_instances() {
    let dns = ConsulDns::start();
    let ports = [free_port(), free_port(), free_port()];
    let _redis: Vec<Proc> = ports.iter().map(|&p| redis(p)).collect();
    dns.add("redis", "node1", ports[0]);
    dns.add("redis", "node2", ports[1]);
    dns.add("redis", "-", ports[2]); // Consul's address-style target
    // The DNS server by host name, as users run Consul agents.
    let by_name = format!("localhost:{}", dns.port);
    let sluice = Sluice::start(&["--dns", &by_name, "127.0.0.1:0:redis"], 1);
    sluice.wait_for_log("backends changed");

    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        let mut stream = TcpStream::connect(sluice.addrs[0]).unwrap();
        assert_eq!(redis_command(&mut stream, "PING"), "+PONG\r\n");
        seen.insert(redis_port_behind(sluice.addrs[0]));
    }
    assert_eq!(seen, BTreeSet::from(ports));
    assert!(sluice.terminate().success(), "SIGTERM must exit 0");
}

/// Successful SRV lookups so far, from sluice's /metrics at `metrics`.
fn lookups_done(metrics: &str) -> f64 {
    let exposition = http_get(metrics, "/metrics");
    exposition
        .lines()
        .filter(|l| l.starts_with("sluice_discovery_lookups_total{") && l.contains("result=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn instances_added_and_removed_with_nsupdate_are_seen_within_two_refreshes() {
    let dns = ConsulDns::start();
    let ports = [free_port(), free_port(), free_port()];
    let _redis: Vec<Proc> = ports.iter().map(|&p| redis(p)).collect();
    dns.add("redis", "node1", ports[0]);
    dns.add("redis", "node2", ports[1]);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        &format!(
            "dns = \"{}\"\nrefresh = \"500ms\"\nmetrics = \"127.0.0.1:0\"\n\
             [listeners.redis]\nbind = \"127.0.0.1:0\"\nservice = \"redis\"\n",
            dns.addr()
        ),
    );
    let sluice = Sluice::start(&["--config", config.to_str().unwrap()], 1);
    let addr = sluice.addrs[0];
    let metrics = log_field(&sluice.wait_for_log("serving /metrics"), "addr");
    sluice.wait_for_log("backends changed");

    // Counted in lookups, not in time, so a busy machine cannot fail it: the
    // lookup under way may predate the change, the next one must see it
    // (and one more may be counted before its set is published).
    dns.add("redis", "node3", ports[2]);
    let before = lookups_done(&metrics);
    while redis_port_behind(addr) != ports[2] {
        let after = lookups_done(&metrics) - before;
        assert!(after <= 3.0, "new instance not used after {after} lookups");
    }

    dns.del("redis", "node1", ports[0]);
    let before = lookups_done(&metrics);
    sluice.wait_for_log("removed=127.0.0.1");
    let after = lookups_done(&metrics) - before;
    assert!(after <= 3.0, "removal applied only after {after} lookups");
    for _ in 0..12 {
        assert_ne!(
            redis_port_behind(addr),
            ports[0],
            "removed instance still gets new connections"
        );
    }
}

fn two_checked_redis(dns: &ConsulDns, dir: &Path, bind: &str) -> ([u16; 2], Vec<Proc>, PathBuf) {
    let ports = [free_port(), free_port()];
    let procs: Vec<Proc> = ports.iter().map(|&p| redis(p)).collect();
    dns.add("redis", "node1", ports[0]);
    dns.add("redis", "node2", ports[1]);
    let config = config_file(
        dir,
        &format!(
            "dns = \"{}\"\n[listeners.redis]\nbind = \"{bind}\"\nservice = \"redis\"\n\
             [listeners.redis.health]\ninterval = \"500ms\"\ntimeout = \"250ms\"\nfall = 2\nrise = 2\n\
             send = \"PING\\r\\n\"\nexpect = \"+PONG\"\n",
            dns.addr()
        ),
    );
    (ports, procs, config)
}

#[test]
fn a_killed_instance_still_in_dns_costs_clients_nothing() {
    let dns = ConsulDns::start();
    let dir = tempfile::tempdir().unwrap();
    let (ports, mut procs, config) = two_checked_redis(&dns, dir.path(), "127.0.0.1:0");
    let sluice = Sluice::start(&["--config", config.to_str().unwrap()], 1);
    sluice.wait_for_log("backends changed");
    redis_benchmark(
        sluice.addrs[0],
        &["-t", "ping", "-n", "2000", "-c", "20", "-k", "0"],
    );

    // Killed, still in DNS: at once (before any check notices) and after.
    drop(procs.remove(0));
    redis_benchmark(
        sluice.addrs[0],
        &["-t", "ping", "-n", "5000", "-c", "20", "-k", "0"],
    );
    let down = sluice.wait_for_log("backend is down");
    assert!(down.contains(&format!("127.0.0.1:{}", ports[0])), "{down}");
    redis_benchmark(
        sluice.addrs[0],
        &["-t", "ping", "-n", "5000", "-c", "20", "-k", "0"],
    );
}

#[test]
fn ten_reloads_during_a_benchmark_lose_nothing() {
    let dns = ConsulDns::start();
    let dir = tempfile::tempdir().unwrap();
    // A fixed port, as in real use: a reload keeps the socket of an unchanged bind.
    let bind = format!("127.0.0.1:{}", free_port());
    let (_ports, _procs, config) = two_checked_redis(&dns, dir.path(), &bind);
    let sluice = Sluice::start(&["--config", config.to_str().unwrap()], 1);
    sluice.wait_for_log("backends changed");
    let addr = sluice.addrs[0];
    let text = std::fs::read_to_string(&config).unwrap();

    let bench = thread::spawn(move || {
        redis_benchmark(addr, &["-t", "ping", "-n", "200000", "-c", "20"]);
        redis_benchmark(addr, &["-t", "ping", "-n", "20000", "-c", "20", "-k", "0"]);
    });
    let pid = sluice.child.0.id().to_string();
    for i in 0..10 {
        // Alternate the balance algorithm: a real change on every reload.
        let balance = if i % 2 == 0 { "least-conn" } else { "round-robin" };
        let next = text.replace(
            "service = \"redis\"",
            &format!("service = \"redis\"\nbalance = \"{balance}\""),
        );
        std::fs::write(&config, next).unwrap();
        run(Command::new("kill").args(["-HUP", &pid]));
        let line = sluice.wait_for_log("configuration reloaded");
        assert!(line.contains("changed=[\"redis\"]"), "{line}");
        thread::sleep(Duration::from_millis(100));
    }
    bench.join().expect("benchmark saw errors across reloads");

    // A broken file is refused and the running configuration stays.
    std::fs::write(&config, "[listeners.redis]\nbind = 1\n").unwrap();
    run(Command::new("kill").args(["-HUP", &pid]));
    let line = sluice.wait_for_log("reload rejected");
    assert!(line.contains("reload rejected"), "{line}");
    redis_benchmark(addr, &["-t", "ping", "-n", "2000", "-c", "10"]);
}

#[test]
fn upgrade_with_reuse_port_refuses_no_connection() {
    // Let the kernel hand connections queued on a closing listener to its
    // SO_REUSEPORT sibling instead of resetting them (Linux 5.14+).
    run(Command::new("sysctl").args(["-qw", "net.ipv4.tcp_migrate_req=1"]));
    let dns = ConsulDns::start();
    let port = free_port();
    let _redis = redis(port);
    dns.add("redis", "node1", port);
    let dir = tempfile::tempdir().unwrap();
    let front = free_port();
    let config = config_file(
        dir.path(),
        &format!(
            "dns = \"{}\"\nshutdown_grace = \"5s\"\n[listeners.redis]\nbind = \"127.0.0.1:{front}\"\n\
             service = \"redis\"\nreuse_port = true\n",
            dns.addr()
        ),
    );
    let args = ["--config", config.to_str().unwrap()];
    let old = Sluice::start(&args, 1);
    old.wait_for_log("backends changed");
    let addr: SocketAddr = format!("127.0.0.1:{front}").parse().unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let clients = thread::spawn(move || {
        let (mut ok, mut failed) = (0u32, Vec::new());
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let result = TcpStream::connect(addr)
                .map_err(|e| e.to_string())
                .and_then(|mut s| {
                    s.set_read_timeout(Some(STARTUP)).unwrap();
                    let reply = redis_command(&mut s, "PING");
                    if reply == "+PONG\r\n" { Ok(()) } else { Err(reply) }
                });
            match result {
                Ok(()) => ok += 1,
                Err(e) => failed.push(e),
            }
        }
        (ok, failed)
    });
    thread::sleep(Duration::from_millis(300));
    let new = Sluice::start(&args, 1);
    new.wait_for_log("backends changed");
    thread::sleep(Duration::from_millis(300));
    assert!(old.terminate().success());
    thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = clients.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} connections failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "only {ok} requests made it");
}
