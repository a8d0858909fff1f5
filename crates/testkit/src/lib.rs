//! Fixtures for end-to-end tests: the real `west` binary as child processes on loopback
//! (from `launch`, the product's own process supervision, re-exported here), a browser for
//! the web UI (`browser`), a proxy that injects faults between a site and the hub
//! (`proxy`, at the TCP level), one that understands the hub link and drops routed frames
//! while heartbeats pass (`link_proxy`), a raw client of the hub's wire protocol (`hub`), and real `nats-server`
//! processes for the hub cluster (`nats`, from `launch` too: the benchmark starts them).
//!
//! Nothing here sleeps to wait for something: [`eventually`] polls with a deadline.

pub mod browser;
pub mod hub;
pub mod link_proxy;
pub mod proxy;

pub use hub::RawClient;
pub use launch::nats::{self, Nats};
pub use launch::{
    Api, DEADLINE, HubProc, SiteOpts, SiteProc, WestProc, api, eventually, pair, pairing, process,
};
pub use link_proxy::LinkProxy;
pub use proxy::FaultProxy;
