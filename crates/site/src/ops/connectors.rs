//! Connectors: create (standalone, or as a Target by pairing with a Source), rename and
//! re-describe, delete, and the end-to-end ping of a paired connector.
//!
//! A connector's name and description are this site's own: a pairing is by connector id
//! (docs/spec.md §4), the peer never learns them (it shows this connector as its site and
//! id), so renaming a paired connector changes nothing on the peer.

use std::time::Duration;

use proto::model::{ConnectorId, ModelError, SyncState};
use rand::RngCore;

use super::{Error, Result, pairing};
use crate::clock::now_micros;
use crate::state::AppState;

/// Longest connector name and description, in characters.
pub const MAX_NAME: usize = 128;
pub const MAX_DESCRIPTION: usize = 1024;

/// How long an end-to-end ping waits for its pong.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// A connector to create.
pub struct NewConnector {
    pub name: String,
    pub description: String,
    /// Pair it, as the Target, with a Source that opened a pairing window.
    pub pair_with: Option<PairWith>,
}

/// What the Target operator enters to pair with a Source (docs/spec.md, "Pairing").
pub struct PairWith {
    pub remote_site: String,
    pub remote_connector_id: String,
    pub pairing_code: String,
}

/// A change of a connector: `None` leaves a field as it is.
#[derive(Default)]
pub struct ConnectorChange {
    pub name: Option<String>,
    pub description: Option<String>,
}

/// A connector name as stored: trimmed, 1 to [`MAX_NAME`] characters.
fn check_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(ModelError::ConnectorName.into());
    }
    Ok(name.to_owned())
}

fn check_description(description: &str) -> Result<()> {
    if description.chars().count() > MAX_DESCRIPTION {
        return Err(Error::Invalid(format!(
            "description must be at most {MAX_DESCRIPTION} characters"
        )));
    }
    Ok(())
}

/// Refuses a name another connector of this site has (`conflict`), before anything else
/// happens: a Target's pairing is not started for a connector that could not be stored.
/// The store checks it again in the commit.
async fn name_free(state: &AppState, name: &str, except: Option<&ConnectorId>) -> Result<()> {
    let all = state.store.list_connectors().await?;
    if all
        .iter()
        .any(|c| Some(&c.id) != except && c.name.eq_ignore_ascii_case(name))
    {
        return Err(store::StoreError::ConnectorNameTaken(name.to_owned()).into());
    }
    Ok(())
}

/// Creates a connector; as a Target, only once pairing with its Source completed.
pub async fn create(state: &AppState, new: NewConnector) -> Result<store::Connector> {
    let name = check_name(&new.name)?;
    check_description(&new.description)?;
    name_free(state, &name, None).await?;
    if let Some(with) = new.pair_with {
        return pairing::pair_as_target(state, name, new.description, with).await;
    }
    let mut bytes = [0u8; proto::model::CONNECTOR_ID_LEN];
    rand::rng().fill_bytes(&mut bytes);
    let new = store::NewConnector {
        id: ConnectorId::from_random(bytes),
        name,
        description: new.description,
        created_at: now_micros(),
    };
    let c = state.store.create_connector(new).await?;
    tracing::info!(connector = %c.id, name = %c.name, "created connector");
    Ok(c)
}

/// Renames or re-describes a connector, with the checks of [`create`]. A paired connector
/// may be renamed too: the pairing is by id, and the peer never shows this site's name.
pub async fn update(
    state: &AppState,
    cid: &ConnectorId,
    change: ConnectorChange,
) -> Result<store::Connector> {
    let name = change.name.as_deref().map(check_name).transpose()?;
    if let Some(d) = &change.description {
        check_description(d)?;
    }
    let before = state.store.connector(cid).await?;
    if let Some(name) = &name {
        name_free(state, name, Some(cid)).await?;
    }
    let patch = store::ConnectorPatch {
        name,
        description: change.description,
    };
    let c = state.store.update_connector(cid, patch).await?;
    if c.name != before.name || c.description != before.description {
        tracing::info!(connector = %cid, from = %before.name, name = %c.name, "updated connector");
    }
    Ok(c)
}

/// Deletes a connector with its devices and data, unless it is paired.
pub async fn delete(state: &AppState, cid: &ConnectorId) -> Result<()> {
    let c = state.store.connector(cid).await?;
    if c.state == SyncState::Paired {
        return Err(Error::Conflict(format!(
            "connector {cid} is paired with {}; a paired connector cannot be deleted",
            c.peer
                .as_ref()
                .map(|p| p.site.as_str())
                .unwrap_or("its peer")
        )));
    }
    state.store.delete_connector(cid).await?;
    tracing::info!(connector = %cid, "deleted connector");
    Ok(())
}

/// A paired connector, or `conflict` saying that it has no peer to `what`.
pub async fn paired(state: &AppState, cid: &ConnectorId, what: &str) -> Result<store::Connector> {
    let c = state.store.connector(cid).await?;
    if c.state != SyncState::Paired {
        return Err(Error::Conflict(format!(
            "connector {cid} is not paired, so it has no {what}"
        )));
    }
    Ok(c)
}

/// A round trip through the connector's end-to-end encrypted session with its peer.
pub async fn ping(state: &AppState, cid: &ConnectorId) -> Result<Duration> {
    paired(state, cid, "peer to reach").await?;
    state
        .remote
        .ping(cid, PING_TIMEOUT)
        .await
        .map_err(|e| Error::PeerOffline(format!("the peer of connector {cid} did not answer: {e}")))
}
