//! End-to-end tests against real programs: BIND as the Consul DNS stand-in
//! (records changed with nsupdate through `consul-dns.sh`) and as a
//! Kubernetes cluster DNS (`cluster-dns.sh`), a stand-in for Consul's HTTP
//! API (`test-support/src/consul_standin.rs`, as Consul cannot be installed), redis-server and
//! carbon-cache as backends, Prometheus and Chromium as observers, and the
//! `sluice` binary driven through its CLI. `.ci/run` installs them.
//!
//! `support` is the harness; each other module is one area of tests.

mod api;
mod cli;
mod consul;
mod graphite;
mod kubernetes;
mod observe;
mod ops;
mod proxy_protocol;
mod redis;
mod support;
