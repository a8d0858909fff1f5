//! Resources: a connector's named data channels (name, format, unit, settable, Remote-Sync):
//! create, change, delete.
//!
//! Deleting a resource deletes its points on this site only. On a paired Source, what is
//! already queued for the Target is still delivered (the outbox is never rewritten: its
//! seqs are the Target's exactly-once cursor), and nothing new is queued since the resource
//! no longer takes points; the Target keeps what it received. On a Target, points its
//! Source sends for the name later wait for a resource of that name, as for any resource
//! the Target lacks (docs/sync.md, "Deleting a resource").

use proto::model::{ConnectorId, Format, ModelError, ResourceName, Role, SyncState};

use super::Result;
use crate::clock::now_micros;
use crate::state::AppState;

/// Longest unit, in characters.
pub const MAX_UNIT: usize = 32;

/// A resource to create.
pub struct NewResource {
    pub name: ResourceName,
    pub format: Format,
    /// Blank means none.
    pub unit: Option<String>,
    pub settable: bool,
    pub remote_sync: bool,
}

/// A change of a resource; `None` leaves a field as it is (`unit: Some(None)` clears it).
#[derive(Default)]
pub struct ResourceChange {
    pub unit: Option<Option<String>>,
    pub settable: Option<bool>,
    pub remote_sync: Option<bool>,
}

fn check_unit(unit: Option<String>) -> Result<Option<String>> {
    match unit.map(|u| u.trim().to_owned()) {
        Some(u) if u.is_empty() => Ok(None),
        Some(u) if u.chars().count() > MAX_UNIT => Err(ModelError::Unit.into()),
        other => Ok(other),
    }
}

pub async fn create(
    state: &AppState,
    cid: &ConnectorId,
    new: NewResource,
) -> Result<store::Resource> {
    let new = store::NewResource {
        name: new.name,
        format: new.format,
        unit: check_unit(new.unit)?,
        settable: new.settable,
        remote_sync: new.remote_sync,
        created_at: now_micros(),
    };
    let r = state.store.create_resource(cid, new).await?;
    tracing::info!(connector = %cid, resource = %r.name, format = %r.format, "created resource");
    Ok(r)
}

/// Changes a resource's unit, settable flag or Remote-Sync switch.
pub async fn update(
    state: &AppState,
    cid: &ConnectorId,
    name: &ResourceName,
    change: ResourceChange,
) -> Result<store::Resource> {
    let patch = store::ResourcePatch {
        unit: change.unit.map(check_unit).transpose()?,
        settable: change.settable,
        remote_sync: change.remote_sync,
    };
    Ok(state.store.update_resource(cid, name, patch).await?)
}

/// Deletes a resource and every point of it on this site. A running backfill of it is
/// cancelled first (what it queued is still delivered, like the rest of the queue).
pub async fn delete(state: &AppState, cid: &ConnectorId, name: &ResourceName) -> Result<()> {
    let c = state.store.connector(cid).await?;
    get(state, cid, name).await?;
    if c.role == Role::Source
        && c.state == SyncState::Paired
        && let Some(b) = super::backfill::local(state, cid).await
        && &b.resource == name
        && b.state.is_running()
    {
        // It may have ended meanwhile: then there is nothing to cancel.
        let _ = super::backfill::cancel_here(state, cid).await;
    }
    state.store.delete_resource(cid, name).await?;
    tracing::info!(connector = %cid, resource = %name, "deleted resource");
    Ok(())
}

/// What deleting a resource would delete on this site.
pub async fn usage(
    state: &AppState,
    cid: &ConnectorId,
    name: &ResourceName,
) -> Result<store::ResourceUsage> {
    Ok(state.store.resource_usage(cid, name).await?)
}

/// One resource of a connector.
pub async fn get(
    state: &AppState,
    cid: &ConnectorId,
    name: &ResourceName,
) -> Result<store::Resource> {
    let all = state.store.resources(cid).await?;
    all.into_iter()
        .find(|r| &r.name == name)
        .ok_or_else(|| store::StoreError::ResourceNotFound(name.clone()).into())
}
