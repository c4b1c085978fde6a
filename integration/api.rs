//! The runtime API as a deploy pipeline uses it: curl adds a listener for a
//! redis service registered in BIND, redis-cli works through it, a restart
//! with the same runtime file brings it back, and once deleted its port
//! refuses. The session (commands and answers) is kept in
//! target/tmp/artifacts/api-session.txt.

use std::fmt::Write as _;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

use crate::support::*;

const TOKEN: &str = "deploy-token-7f3a9c";

/// Runs a shell command line, records it and its output in `session`.
fn sh(session: &mut String, line: &str) -> String {
    let out = Command::new("bash").arg("-c").arg(line).output().unwrap();
    let text = printed(&out);
    let _ = writeln!(session, "$ {line}\n{}", text.trim_end());
    assert!(out.status.success(), "{line}: {text}");
    text
}

#[test]
fn a_listener_added_with_curl_serves_redis_survives_a_restart_and_goes_on_delete() {
    let dns = ConsulDns::start();
    let redis_port = free_port();
    let _redis = redis(redis_port);
    dns.add("redis", "node1", redis_port);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api-token"), format!("{TOKEN}\n")).unwrap();
    let config = config_file(
        dir.path(),
        &format!(
            "dns = \"{}\"\nmetrics = \"127.0.0.1:0\"\napi_token_file = \"api-token\"\n\
             runtime_file = \"runtime.toml\"\nshutdown_grace = \"1s\"\n",
            dns.addr()
        ),
    );
    let start = || {
        let sluice = Sluice::start(&["--config", config.to_str().unwrap()], 0);
        let admin = log_field(&sluice.wait_for_log("serving /metrics"), "addr");
        (sluice, admin)
    };
    let (sluice, admin) = start();
    let port = free_port();
    let mut session = String::new();

    let put = |admin: &str, token: &str| {
        format!(
            "curl -sS -w ' %{{http_code}}\\n' -X PUT -H 'Authorization: Bearer {token}' \
             --data '{{\"bind\": \"127.0.0.1:{port}\", \"service\": \"redis\"}}' \
             http://{admin}/v1/listeners/redis-books"
        )
    };
    let created = sh(&mut session, &put(&admin, TOKEN));
    assert!(created.trim_end().ends_with(" 201"), "{created}");
    sluice.wait_for_log("backends changed");
    let pong = sh(&mut session, &format!("redis-cli -p {port} ping"));
    assert_eq!(pong.trim(), "PONG");
    sh(
        &mut session,
        &format!("curl -sS http://{admin}/v1/listeners/redis-books"),
    );
    let saved = std::fs::read_to_string(dir.path().join("runtime.toml")).unwrap();
    let _ = writeln!(session, "$ cat runtime.toml\n{}", saved.trim_end());

    assert!(sluice.terminate().success());
    let _ = writeln!(session, "# sluice restarted with the same runtime_file");
    let (sluice, admin) = start();
    sluice.wait_for_log("backends changed");
    let pong = sh(&mut session, &format!("redis-cli -p {port} set book dune"));
    assert_eq!(pong.trim(), "OK");

    let delete = format!(
        "curl -sS -w ' %{{http_code}}\\n' -X DELETE -H 'Authorization: Bearer {TOKEN}' \
         http://{admin}/v1/listeners/redis-books"
    );
    let deleted = sh(&mut session, &delete);
    assert!(deleted.trim_end().ends_with(" 200"), "{deleted}");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the port still accepts"
    );
    let _ = writeln!(session, "# connecting to 127.0.0.1:{port} now: refused");
    let unauthorized = sh(&mut session, &put(&admin, "guess"));
    assert!(unauthorized.trim_end().ends_with(" 401"), "{unauthorized}");
    assert!(sluice.terminate().success());

    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("api-session.txt"), session).unwrap();
}
