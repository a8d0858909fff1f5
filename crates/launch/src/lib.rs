//! Starting and supervising `west` processes: a hub and sites as children of the calling
//! process on loopback (`quickstart`, `bench`, and the end-to-end tests through
//! `testkit`), waiting for them to be ready, talking to a site's HTTP API, and pairing two
//! sites' connectors through it; and `nats-server` processes for a hub cluster (`nats`).
//!
//! Nothing here sleeps to wait for something: [`eventually`] polls with a deadline.
//! Children are killed when their handle drops, and on Linux also when the process that
//! started them is killed (a parent-death signal, [`process::die_with_parent`]), so neither
//! a failing run nor a killed one leaves processes behind.
//!
//! Deliberately absent: anything only tests need (a browser, a fault-injecting proxy, a
//! raw hub client); those are `testkit`'s.

pub mod api;
pub mod hub;
pub mod nats;
pub mod pairing;
pub mod process;

pub use api::Api;
pub use hub::HubProc;
pub use nats::Nats;
pub use pairing::pair;
pub use process::{SiteOpts, SiteProc, WestProc};

use std::future::Future;
use std::time::{Duration, Instant};

/// How long [`eventually`] waits by default: generous, because CI machines are shared.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `check` until it returns `Ok(Some(t))`, or fails with the last error or `what` when
/// `deadline` passes.
pub async fn eventually<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last = None;
    let mut pause = Duration::from_millis(10);
    loop {
        match check().await {
            Ok(Some(t)) => return Ok(t),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        if start.elapsed() > deadline {
            return Err(match last {
                Some(e) => e.context(format!("gave up waiting for {what} after {deadline:?}")),
                None => anyhow::anyhow!("gave up waiting for {what} after {deadline:?}"),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}
