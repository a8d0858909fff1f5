//! Fixtures for end-to-end tests: start the real `west` binary as child processes on
//! loopback, talk to them over HTTP, kill them with SIGKILL and start them again.
//!
//! Nothing here sleeps to wait for something: [`eventually`] polls with a deadline.
//! Children are killed when their handle drops, and on Linux also when the process that
//! started them is killed, so neither a failing test nor a killed one leaves processes behind.

pub mod api;
pub mod browser;
pub mod hub;
pub mod pairing;
pub mod process;
pub mod proxy;

pub use api::Api;
pub use hub::{HubProc, RawClient};
pub use pairing::pair;
pub use process::{SiteOpts, SiteProc, WestProc};
pub use proxy::FaultProxy;

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
