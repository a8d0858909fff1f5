//! A connector's bandwidth budget (docs/sync.md, "Bandwidth budget"): the most bytes per
//! second its sync sends to the hub, set on the Source, persisted, and followed by its sync
//! driver at once.

use proto::model::{ConnectorId, Role};

use super::{Error, Result};
use crate::state::AppState;

/// The least budget accepted, bytes per second: below it a single message's envelope
/// would not fit in a second.
pub const MIN_BYTES_PER_S: u64 = 1024;

/// Sets (`Some`) or removes (`None`) the bandwidth budget of connector `cid`, a Source;
/// returns the connector.
pub async fn set(
    state: &AppState,
    cid: &ConnectorId,
    max_bytes_per_s: Option<u64>,
) -> Result<store::Connector> {
    let c = state.store.connector(cid).await?;
    if c.role == Role::Target {
        return Err(Error::Conflict(format!(
            "connector {cid} is a Target: a bandwidth budget caps what a Source sends"
        )));
    }
    if let Some(b) = max_bytes_per_s
        && b < MIN_BYTES_PER_S
    {
        return Err(Error::Invalid(format!(
            "max_bytes_per_s must be at least {MIN_BYTES_PER_S} (or null for no budget), not {b}"
        )));
    }
    state.store.set_sync_budget(cid, max_bytes_per_s).await?;
    state.remote.sync.set_budget(cid, max_bytes_per_s);
    Ok(c)
}

/// The bandwidth budget of connector `cid`, if it has one.
pub async fn get(state: &AppState, cid: &ConnectorId) -> Result<Option<u64>> {
    Ok(state.store.sync_budget(cid).await?)
}
