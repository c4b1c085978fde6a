//! Redis behind the sluice binary with `discovery = "consul"`, against the
//! Consul HTTP API stand-in: a registration is used and a failing check
//! dropped as soon as the agent answers the held query, and an agent that
//! goes away leaves the last good set serving.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::*;
use sluice_test_support::consul_standin::{ConsulStandin, Instance};

/// The watch holds each query for about 5 minutes: a change seen within
/// this came from Consul's answer, not from a poll.
const PUSHED_WITHIN: Duration = Duration::from_secs(5);

/// Waits until `count` fresh connections in a row reach redis on `port`;
/// how long after `since` the first of them was opened.
fn until_only(addr: SocketAddr, port: u16, since: Instant) -> Duration {
    let mut first_of_run = None;
    let mut run = 0;
    while run < 10 {
        assert!(
            since.elapsed() < PUSHED_WITHIN,
            "connections still reach other ports than {port}"
        );
        let opened = Instant::now();
        if redis_port_behind(addr) == port {
            first_of_run.get_or_insert(opened);
            run += 1;
        } else {
            (first_of_run, run) = (None, 0);
        }
    }
    first_of_run.unwrap() - since
}

#[test]
fn registrations_and_critical_checks_reach_redis_clients_at_once() {
    // The stand-in is async; it runs on its own runtime's threads.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let consul = runtime.block_on(ConsulStandin::start());
    let ports = [free_port(), free_port()];
    let _redis: Vec<Proc> = ports.iter().map(|&p| redis(p)).collect();
    let instance = |id: &str, port| Instance::new(id, "redis", "127.0.0.1", port);
    consul.register(instance("redis-1", ports[0]));
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        &format!(
            "consul = \"http://{}\"\n[listeners.redis]\nbind = \"127.0.0.1:0\"\n\
             discovery = \"consul\"\nservice = \"redis\"\n",
            consul.addr
        ),
    );
    let sluice = Sluice::start(&["--config", config.to_str().unwrap()], 1);
    let addr = sluice.addrs[0];
    sluice.wait_for_log("backends changed");
    assert_eq!(redis_port_behind(addr), ports[0]);

    consul.register(instance("redis-2", ports[1]));
    let registered = Instant::now();
    while redis_port_behind(addr) != ports[1] {
        assert!(
            registered.elapsed() < PUSHED_WITHIN,
            "the new instance is not used"
        );
    }
    eprintln!("new instance used after {:?}", registered.elapsed());

    consul.set_status("redis-1", "critical");
    let failed = until_only(addr, ports[1], Instant::now());
    eprintln!("critical instance dropped after {failed:?}");

    // The agent goes away: the set it last gave keeps serving.
    drop(consul);
    sluice.wait_for_log("lookup failed, keeping the last good backends");
    for _ in 0..10 {
        let mut stream = TcpStream::connect(addr).unwrap();
        assert_eq!(redis_command(&mut stream, "PING"), "+PONG\r\n");
    }
    assert_eq!(redis_port_behind(addr), ports[1]);
    assert!(sluice.terminate().success(), "SIGTERM must exit 0");
}
