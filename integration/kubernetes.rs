//! Redis behind sluice as on Kubernetes: backends from the SRV records of a
//! headless Service's named port, against BIND answering like CoreDNS
//! (`cluster-dns.sh`), with pods coming and going; and the configuration in
//! deploy/kubernetes/configmap.yaml passing `--check`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// 20 refreshes of 500ms: "a few", with room for a busy CI machine.
const WITHIN: Duration = Duration::from_secs(10);

/// Weighted round-robin reaches every backend in the set within one round of
/// the set's total weight, which CoreDNS's weights (100 / the number of pods,
/// rounded down) keep at 100 at most. Not within two: sluice gives each of
/// two pods 50 connections in a row.
const ROUND: u32 = 100;

/// Waits until a round of new connections in a row through `addr` reaches
/// redis on `ports` only, and on each of them: an instance still in the set
/// would break the run, and a missing one would never end it.
fn until_only(addr: SocketAddr, ports: &[u16], what: &str) {
    let want: BTreeSet<u16> = ports.iter().copied().collect();
    let since = Instant::now();
    let (mut run, mut seen) = (0, BTreeSet::new());
    while run < ROUND || seen != want {
        assert!(
            since.elapsed() < WITHIN,
            "{what}: not within {WITHIN:?}; wanted {want:?}, the last {run} connections reached {seen:?}"
        );
        let port = redis_port_behind(addr);
        if want.contains(&port) {
            run += 1;
            seen.insert(port);
        } else {
            (run, seen) = (0, BTreeSet::new());
        }
    }
    eprintln!("{what} after {:?}", since.elapsed());
}

#[test]
fn pods_of_a_headless_service_come_and_go_through_its_srv_records() {
    let dns = ClusterDns::start();
    let ports = [free_port(), free_port()];
    let _redis: Vec<Proc> = ports.iter().map(|&p| redis(p)).collect();
    // Both pods on 127.0.0.1: two SRV records with one target,
    // 127-0-0-1.redis.default.svc.cluster.local, on two ports.
    for port in ports {
        dns.add("redis", "default", "127.0.0.1", port);
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        &format!(
            "dns = \"{}\"\nrefresh = \"500ms\"\n[listeners.redis]\nbind = \"127.0.0.1:0\"\n\
             srv = \"_redis._tcp.redis.default.svc.cluster.local\"\n",
            dns.addr()
        ),
    );
    let sluice = Sluice::start(&["--config", config.to_str().unwrap()], 1);
    let addr = sluice.addrs[0];
    sluice.wait_for_log("backends changed");
    until_only(addr, &ports, "both pods used");

    dns.del("redis", "default", "127.0.0.1", ports[0]);
    until_only(addr, &ports[1..], "removed pod dropped");

    dns.add("redis", "default", "127.0.0.1", ports[0]);
    until_only(addr, &ports, "pod used again");
    assert!(sluice.terminate().success(), "SIGTERM must exit 0");
}

/// The `sluice.toml` key of the ConfigMap: its literal block scalar
/// (`sluice.toml: |`), lines taken while indented at least as the first.
fn configmap_toml(path: &Path) -> String {
    fn indent(line: &str) -> usize {
        line.len() - line.trim_start().len()
    }
    let yaml = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut block = yaml
        .lines()
        .skip_while(|l| l.trim() != "sluice.toml: |")
        .skip(1)
        .peekable();
    let depth = block.peek().map_or(0, |l| indent(l));
    assert!(
        depth > 0,
        "no indented `sluice.toml: |` block in {}",
        path.display()
    );
    let lines: Vec<&str> = block
        .take_while(|l| l.trim().is_empty() || indent(l) >= depth)
        .map(|l| l.get(depth..).unwrap_or_default())
        .collect();
    lines.join("\n") + "\n"
}

#[test]
fn the_kubernetes_configmap_names_cluster_srv_records_and_passes_check() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/configmap.yaml");
    let toml = configmap_toml(&path);
    let srv: Vec<&str> = toml.lines().filter(|l| l.starts_with("srv = ")).collect();
    assert!(
        !srv.is_empty() && srv.iter().all(|l| l.ends_with(".svc.cluster.local\"")),
        "{srv:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &toml);
    // The file leaves `dns` to the pod's resolv.conf; --check asks no server.
    let out = Command::new(SLUICE)
        .args(["--check", "--dns", "127.0.0.1:53", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", printed(&out));
}
