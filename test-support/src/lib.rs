//! What sluice's in-process tests (`tests/`), its end-to-end suite
//! (`integration/`) and its benchmark tools (`bench/`) share: one way to
//! speak HTTP/1.0 to the admin endpoint ([`http`]), and a stand-in for
//! Consul's HTTP API ([`consul_standin`]), as Consul cannot be installed here.

pub mod consul_standin;
pub mod http;
