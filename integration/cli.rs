//! The command line as a user meets it: `dig` through a UDP listener to two
//! real BIND servers, `--check` errors with file and line, a port in use.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use crate::support::*;

#[test]
fn dig_through_a_udp_listener_reaches_two_real_bind_servers() {
    let dns = ConsulDns::start();
    // Two DNS servers to balance over, each answering whoami differently.
    let servers = [ConsulDns::start(), ConsulDns::start()];
    for (server, port) in servers.iter().zip([1111, 2222]) {
        server.add("whoami", "node1", port);
        dns.add("dns", "-", server.port);
    }
    let sluice = Sluice::start(&["--dns", &dns.addr(), "127.0.0.1:0/udp:dns"], 1);
    sluice.wait_for_log("backends changed");

    let mut answers = BTreeSet::new();
    for _ in 0..6 {
        // dig picks a new source port per run: a new flow each time.
        let out = Command::new("dig")
            .args(["+short", "+tries=1", "+time=2", "@127.0.0.1", "-p"])
            .arg(sluice.addrs[0].port().to_string())
            .args(["whoami.service.consul", "SRV"])
            .output()
            .expect("dig (apt-get install bind9-dnsutils)");
        answers.insert(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    let want = BTreeSet::from([
        "1 1 1111 node1.node.dc1.consul.".to_string(),
        "1 1 2222 node1.node.dc1.consul.".to_string(),
    ]);
    assert_eq!(answers, want);
}

#[test]
fn check_flag_prints_problems_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = config_file(
        dir.path(),
        "[listeners.redis]\nbind = \"127.0.0.1:6379\"\nservice = \"redis\"\nmax_conections = 5\n",
    );
    let check = |path: &Path| {
        Command::new(SLUICE)
            .arg("--check")
            .arg("-c")
            .arg(path)
            .output()
            .unwrap()
    };
    let out = check(&bad);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:4: unknown field `max_conections`", bad.display())),
        "{stderr}"
    );

    let good = config_file(
        dir.path(),
        "[listeners.redis]\nbind = \"127.0.0.1:6379\"\nservice = \"redis\"\n",
    );
    let out = check(&good);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn port_in_use_is_a_clear_error_naming_the_listener() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(SLUICE)
        .args(["--dns", "127.0.0.1:1", &format!("127.0.0.1:{port}:redis")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "listener '127.0.0.1:{port}:redis': cannot bind 127.0.0.1:{port}"
        )),
        "{stderr}"
    );
}

#[test]
fn environment_variables_stand_for_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        "[listeners.redis]\nbind = \"127.0.0.1:0\"\nservice = \"redis\"\n",
    );
    let out = Command::new(SLUICE)
        .arg("--check")
        .env("SLUICE_CONFIG", &config)
        .output()
        .unwrap();
    assert!(out.status.success(), "SLUICE_CONFIG: {}", printed(&out));
    let out = Command::new(SLUICE)
        .arg("--check")
        .env("SLUICE_CONFIG", &config)
        .env("SLUICE_DNS", "not an address")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "SLUICE_DNS is read: {}",
        printed(&out)
    );
    assert!(printed(&out).contains("--dns"), "{}", printed(&out));
    let sluice = Sluice::start_with_env(
        &["--config", config.to_str().unwrap(), "--dns", "127.0.0.1:1"],
        1,
        &[("SLUICE_METRICS", "127.0.0.1:0")],
    );
    sluice.wait_for_log("serving /metrics");
    let help = Command::new(SLUICE).arg("--help").output().unwrap();
    for variable in [
        "[env: SLUICE_CONFIG]",
        "[env: SLUICE_DNS]",
        "[env: SLUICE_METRICS]",
    ] {
        assert!(printed(&help).contains(variable), "--help lacks {variable}");
    }
}

#[test]
fn without_config_or_listeners_it_says_what_to_pass() {
    // A fresh machine has no /etc/sluice/sluice.toml.
    assert!(
        !Path::new("/etc/sluice/sluice.toml").exists(),
        "this test needs no /etc/sluice/sluice.toml"
    );
    let out = Command::new(SLUICE).env_remove("SLUICE_CONFIG").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = printed(&out);
    for hint in [
        "--config FILE",
        "SLUICE_CONFIG",
        "6379:redis",
        "/etc/sluice/sluice.toml",
    ] {
        assert!(text.contains(hint), "no {hint:?} in {text}");
    }
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line_definition() {
    for (shell, marker) in [
        ("bash", "complete -F _sluice"),
        ("zsh", "#compdef sluice"),
        ("fish", "complete -c sluice"),
    ] {
        let out = Command::new(SLUICE)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {}", printed(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains(marker) && script.contains("--probe"),
            "{shell}: {script}"
        );
    }
    let out = Command::new(SLUICE).arg("man").output().unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for part in [".TH sluice 1", "\\-\\-config", "SLUICE_CONFIG", "completions"] {
        assert!(page.contains(part), "man page lacks {part}");
    }
    let bad = Command::new(SLUICE)
        .args(["completions", "cmd.exe"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
