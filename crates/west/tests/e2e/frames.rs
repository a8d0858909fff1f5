//! Raw hub-link frames for the tests that speak `proto::wire` to the hub directly
//! (`hub`, `security_hub`, `cluster`): a routed frame between two addresses, and waits for
//! the one routed frame or refusal a client must get next.

use proto::wire::{Address, Frame, Kind, Routed, Undelivered, UndeliveredReason};
use testkit::RawClient;

/// A routed frame from `from` to `to` (both `site/connector`).
pub fn routed(from: &str, to: &str, kind: Kind, id: u64) -> Frame {
    let addr = |s: &str| {
        let (site, connector) = s.split_once('/').unwrap_or((s, ""));
        Address::new(site, connector)
    };
    Frame::Route(Routed {
        from: addr(from),
        to: addr(to),
        kind,
        id,
        payload: b"hello".to_vec(),
    })
}

/// The next routed frame must be `id` (heartbeats aside); anything else routed first fails.
pub async fn expect_only(c: &mut RawClient, id: u64) -> anyhow::Result<Routed> {
    loop {
        match c.recv().await? {
            Some(Frame::Route(r)) if r.id == id => return Ok(r),
            Some(Frame::Ping(_)) => continue,
            other => anyhow::bail!("expected routed #{id}, got {other:?}"),
        }
    }
}

/// The next frame (heartbeats aside) must say that `id` was not delivered, for `reason`.
pub async fn expect_undelivered(
    c: &mut RawClient,
    id: u64,
    reason: UndeliveredReason,
) -> anyhow::Result<Undelivered> {
    loop {
        match c.recv().await? {
            Some(Frame::Undelivered(u)) if u.id == id => {
                anyhow::ensure!(u.reason == reason, "{u:?}, wanted {reason:?}");
                return Ok(u);
            }
            Some(Frame::Ping(_)) => continue,
            other => anyhow::bail!("expected undelivered #{id} ({reason:?}), got {other:?}"),
        }
    }
}
