//! Running sluice as operators do: the systemd notify protocol read from a
//! real NOTIFY_SOCKET (ready, reload, stop), `/ready` turning 200 only once a
//! late DNS server answers, and `--probe` as a container health check. The
//! notify messages and the /ready transitions are kept in
//! target/tmp/artifacts/ for the record.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

fn artifact(name: &str, text: &str) {
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join(name), text).unwrap();
}

/// The next notification datagram, as its lines.
fn next_notification(socket: &UnixDatagram) -> Vec<String> {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn notify_socket_hears_ready_reloading_and_stopping() {
    let dns = ConsulDns::start();
    let redis_port = free_port();
    let _redis = redis(redis_port);
    dns.add("redis", "node1", redis_port);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(STARTUP)).unwrap();
    let config = config_file(
        dir.path(),
        &format!(
            "dns = \"{}\"\nshutdown_grace = \"1s\"\n[listeners.redis]\nbind = \"127.0.0.1:0\"\nservice = \"redis\"\n",
            dns.addr()
        ),
    );
    let args = ["--config", config.to_str().unwrap()];
    let sluice = Sluice::start_with_env(&args, 1, &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let mut record = String::new();
    let mut note = |lines: &[String]| record.push_str(&format!("{}\n---\n", lines.join("\n")));

    let ready = next_notification(&socket);
    note(&ready);
    assert_eq!(ready[0], "READY=1");
    assert_eq!(ready[1], "STATUS=serving 1 listener(s), 1 backend(s), 1 healthy");

    let pid = sluice.child.0.id().to_string();
    run(Command::new("kill").args(["-HUP", &pid]));
    let reloading = next_notification(&socket);
    note(&reloading);
    assert_eq!(reloading[0], "RELOADING=1");
    let usec: u64 = reloading[1]
        .strip_prefix("MONOTONIC_USEC=")
        .unwrap()
        .parse()
        .unwrap();
    assert!(usec > 0);
    let reloaded = next_notification(&socket);
    note(&reloaded);
    assert_eq!(reloaded[0], "READY=1");

    assert!(sluice.terminate().success());
    let stopping = next_notification(&socket);
    note(&stopping);
    assert_eq!(stopping[0], "STOPPING=1");
    artifact("notify-messages.txt", &record);
}

#[test]
fn ready_turns_200_once_a_late_dns_server_answers_and_probe_follows() {
    // sluice starts before its DNS server (the Consul agent) does.
    let dns_port = free_port();
    let redis_port = free_port();
    let _redis = redis(redis_port);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        &format!(
            "dns = \"127.0.0.1:{dns_port}\"\nrefresh = \"200ms\"\ndns_timeout = \"100ms\"\n\
             metrics = \"127.0.0.1:0\"\n[listeners.redis]\nbind = \"127.0.0.1:0\"\nservice = \"redis\"\n"
        ),
    );
    let sluice = Sluice::start(&["--config", config.to_str().unwrap()], 1);
    let admin = log_field(&sluice.wait_for_log("serving /metrics"), "addr");
    let ready_url = format!("http://{admin}/ready");
    let probe = || {
        Command::new(SLUICE)
            .args(["--probe", &ready_url])
            .output()
            .unwrap()
    };
    let mut record = String::new();

    let answer = http(&admin, "GET", "/ready", &[], "").unwrap();
    record.push_str(&format!(
        "before the DNS server: {}\n{}\n",
        answer.status, answer.body
    ));
    assert_eq!(answer.status, 503);
    assert!(
        answer.body.contains("the first answer of redis.service.consul."),
        "{}",
        answer.body
    );
    let probed = probe();
    assert_eq!(probed.status.code(), Some(1));
    assert!(printed(&probed).contains("503"), "{}", printed(&probed));

    // The agent comes up, on the port sluice was told.
    let dns = ConsulDns::start_on(dns_port);
    dns.add("redis", "node1", redis_port);
    let started = Instant::now();
    let answer = loop {
        let answer = http(&admin, "GET", "/ready", &[], "").unwrap();
        if answer.status == 200 {
            break answer;
        }
        assert!(started.elapsed() < STARTUP, "never ready: {}", answer.body);
        std::thread::sleep(Duration::from_millis(50));
    };
    record.push_str(&format!(
        "after it answered: {}\n{}\n",
        answer.status, answer.body
    ));
    assert!(answer.body.contains("\"ready\": true"), "{}", answer.body);
    assert!(probe().status.success());
    // Ready may come from an answer before the record was added (an empty
    // answer is an answer); the record's own lookup follows, and reaches
    // the listener (what /status shows, and connections use) just after
    // discovery logs it.
    sluice.wait_for_log(&format!("added=127.0.0.1:{redis_port}"));
    let backend = format!("127.0.0.1:{redis_port}");
    while !http(&admin, "GET", "/status", &[], "")
        .unwrap()
        .body
        .contains(&backend)
    {
        assert!(started.elapsed() < STARTUP, "the listener never got {backend}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(redis_port_behind(sluice.addrs[0]), redis_port);
    artifact("ready-transitions.txt", &record);
}
