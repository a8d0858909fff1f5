//! Devices: the registry of a connector (create, change, delete, new token, list in pages),
//! and what the drift check reads of it (views, the registry digest, per-device hashes) and
//! re-sends.
//!
//! Every write wakes the connector's sync driver: on a paired connector of either role a
//! device change is appended to the outbox in the same store job.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proto::lookup::{DeviceView, Digest, DigestBuilder, MAX_RESEND, bucket_of, device_hash};
use proto::model::{self, ConnectorId, DeviceState, Identity, Permission, ResourceName, Tags};
use store::{Actor, AuditEntry, AuditQuery, Device, DeviceQuery, StoreError};

use super::{Error, Result};
use crate::auth;
use crate::clock::now_micros;
use crate::state::AppState;

/// Default and largest page of the device list.
pub const DEFAULT_PAGE: u32 = 100;
pub const MAX_PAGE: u32 = 1000;

/// Store page size when scanning a whole registry.
const SCAN_PAGE: usize = 1000;

/// A device to create.
pub struct NewDevice {
    pub identity: Identity,
    pub tags: Tags,
    pub permissions: Vec<Permission>,
    pub state: DeviceState,
}

/// A change of a device; `None` leaves a field as it is. A configuration entry of `None`
/// (JSON `null`) clears that resource's desired value.
#[derive(Default)]
pub struct DeviceChange {
    pub tags: Option<Tags>,
    pub permissions: Option<Vec<Permission>>,
    pub state: Option<DeviceState>,
    pub config: Option<BTreeMap<ResourceName, Option<serde_json::Value>>>,
}

/// Creates a device and its token (returned once, never stored in clear).
pub async fn create(
    state: &AppState,
    cid: &ConnectorId,
    new: NewDevice,
    by: &Actor,
) -> Result<(Device, String)> {
    model::check_tags(&new.tags)?;
    model::check_permissions(&new.permissions)?;
    let (token, hash) = auth::new_token();
    let new = store::NewDevice {
        identity: new.identity,
        tags: new.tags,
        permissions: new.permissions,
        state: new.state,
        token: hash,
        created_at: now_micros(),
    };
    let device = state.store.create_device(cid, new, by).await?;
    state.remote.sync.appended(cid);
    tracing::info!(connector = %cid, device = %device.identity, "created device");
    Ok((device, token))
}

/// Changes a device's tags, permissions, state or configuration.
pub async fn update(
    state: &AppState,
    cid: &ConnectorId,
    id: &Identity,
    change: DeviceChange,
    by: &Actor,
) -> Result<Device> {
    let patch = store::DevicePatch {
        tags: change.tags,
        permissions: change.permissions,
        state: change.state,
        config: change.config,
    };
    let device = state.store.update_device(cid, id, patch, by).await?;
    state.remote.sync.appended(cid);
    Ok(device)
}

/// Deletes a device with its data, on both sides of a pairing.
pub async fn delete(state: &AppState, cid: &ConnectorId, id: &Identity, by: &Actor) -> Result<()> {
    state.store.delete_device(cid, id, by).await?;
    state.remote.sync.appended(cid);
    tracing::info!(connector = %cid, device = %id, "deleted device");
    Ok(())
}

/// Issues a device a new token (returned once, stored hashed); the old one stops working.
/// Also how a device that reached this site by Remote-Sync (without a token here) gets one.
pub async fn new_token(
    state: &AppState,
    cid: &ConnectorId,
    id: &Identity,
    by: &Actor,
) -> Result<String> {
    let (token, hash) = auth::new_token();
    state.store.set_device_token(cid, id, hash, by).await?;
    tracing::info!(connector = %cid, device = %id, "issued a new device token");
    Ok(token)
}

pub async fn get(state: &AppState, cid: &ConnectorId, id: &Identity) -> Result<Device> {
    Ok(state.store.device(cid, id).await?)
}

/// Default and largest page of the audit log.
pub const AUDIT_PAGE: u32 = 50;
pub const MAX_AUDIT_PAGE: u32 = 500;

/// A page of the audit log, newest first, and the cursor of the next when more may follow.
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub next: Option<String>,
}

/// One page of connector `cid`'s device audit log (of one device when `device` is given),
/// continuing after `cursor` (given out as `AuditPage::next`), at most `limit` (1 to
/// [`MAX_AUDIT_PAGE`]) entries.
pub async fn audit(
    state: &AppState,
    cid: &ConnectorId,
    device: Option<Identity>,
    cursor: Option<&str>,
    limit: u32,
) -> Result<AuditPage> {
    if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
        return Err(Error::InvalidQuery(format!(
            "limit must be a whole number from 1 to {MAX_AUDIT_PAGE}, not \"{limit}\""
        )));
    }
    let before = cursor
        .map(|c| {
            c.parse::<u64>()
                .map_err(|_| Error::InvalidQuery("cursor is not one this site gave out".into()))
        })
        .transpose()?;
    let want = usize::try_from(limit).unwrap_or(usize::MAX);
    let query = AuditQuery {
        identity: device,
        before,
        // One more than asked, to know whether a next page exists.
        limit: want.saturating_add(1),
    };
    let mut entries = state.store.device_audit(cid, query).await?;
    let mut next = None;
    if entries.len() > want {
        entries.truncate(want);
        next = entries.last().map(|e| e.id.to_string());
    }
    Ok(AuditPage { entries, next })
}

/// One page of a device list: devices carrying every tag of `tags`, whose identity sorts
/// after `after`, at most `limit` (1 to [`MAX_PAGE`]) of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub tags: Vec<(String, String)>,
    /// Only identities that start with this (a search as the operator types).
    pub prefix: Option<String>,
    pub after: Option<Identity>,
    pub limit: u32,
}

impl ListQuery {
    /// Refuses a page size outside 1 to [`MAX_PAGE`].
    pub fn check(self) -> Result<Self> {
        if (1..=MAX_PAGE).contains(&self.limit) {
            Ok(self)
        } else {
            Err(Error::InvalidQuery(format!(
                "limit must be a whole number from 1 to {MAX_PAGE}, not \"{}\"",
                self.limit
            )))
        }
    }
}

/// A page of devices, and the last identity of it when more follow.
pub struct Page {
    pub devices: Vec<Device>,
    pub next: Option<Identity>,
    /// How many devices pass the filter, on every page (not known of the peer's list).
    pub total: Option<u64>,
}

/// The cursor this site gives out for the page after `last`.
pub fn cursor(last: &Identity) -> String {
    URL_SAFE_NO_PAD.encode(last.as_str())
}

/// The identity a cursor given out by [`cursor`] continues after.
pub fn parse_cursor(c: &str) -> Result<Identity> {
    URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| Identity::parse(&s).ok())
        .ok_or_else(|| Error::InvalidQuery("cursor is not one this site gave out".into()))
}

/// One page of a connector's devices.
pub async fn page(state: &AppState, cid: &ConnectorId, q: ListQuery) -> Result<Page> {
    let q = q.check()?;
    let want = usize::try_from(q.limit).unwrap_or(usize::MAX);
    let query = DeviceQuery {
        tags: q.tags,
        prefix: q.prefix,
        after: q.after,
        // One more than asked, to know whether a next page exists.
        limit: want.saturating_add(1),
    };
    let total = state.store.count_devices(cid, query.clone()).await?;
    let mut devices = state.store.devices(cid, query).await?;
    let mut next = None;
    if devices.len() > want {
        devices.truncate(want);
        next = devices.last().map(|d| d.identity.clone());
    }
    Ok(Page {
        devices,
        next,
        total: Some(total),
    })
}

/// A device as this site shows it to its peer.
pub fn view(d: &Device) -> DeviceView {
    DeviceView {
        identity: d.identity.clone(),
        tags: d.tags.clone(),
        permissions: d.permissions.clone(),
        state: d.state,
        config: d.config.clone(),
        values: d
            .values
            .iter()
            .map(|(k, p)| (k.clone(), (p.t, p.v.clone())))
            .collect(),
        created_at: d.created_at,
        sync_pending: d.sync_pending,
    }
}

/// A device as the peer showed it.
pub fn from_view(v: DeviceView) -> Device {
    Device {
        identity: v.identity,
        tags: v.tags,
        permissions: v.permissions,
        state: v.state,
        config: v.config,
        values: v
            .values
            .into_iter()
            .map(|(k, (t, v))| (k, store::Point { t, v }))
            .collect(),
        created_at: v.created_at,
        sync_pending: v.sync_pending,
    }
}

/// Calls `each` for every device of connector `cid`, in identity order, a store page at a
/// time.
async fn scan(state: &AppState, cid: &ConnectorId, mut each: impl FnMut(&Device)) -> Result<()> {
    let mut after = None;
    loop {
        let page = state
            .store
            .devices(
                cid,
                DeviceQuery {
                    tags: Vec::new(),
                    prefix: None,
                    after: after.take(),
                    limit: SCAN_PAGE,
                },
            )
            .await?;
        page.iter().for_each(&mut each);
        match page.last() {
            Some(last) if page.len() == SCAN_PAGE => after = Some(last.identity.clone()),
            _ => return Ok(()),
        }
    }
}

/// The digest of connector `cid`'s registry on this site.
pub async fn digest(state: &AppState, cid: &ConnectorId) -> Result<Digest> {
    let mut builder = DigestBuilder::default();
    scan(state, cid, |d| builder.add(&view(d))).await?;
    Ok(builder.finish())
}

/// Per-device hashes of the devices in `buckets`, by identity.
pub async fn hashes(
    state: &AppState,
    cid: &ConnectorId,
    buckets: &BTreeSet<u8>,
) -> Result<BTreeMap<Identity, [u8; 32]>> {
    let mut out = BTreeMap::new();
    scan(state, cid, |d| {
        if buckets.contains(&bucket_of(&d.identity)) {
            out.insert(d.identity.clone(), device_hash(&view(d)));
        }
    })
    .await?;
    Ok(out)
}

/// Those of `ids` that exist, in the order asked.
pub async fn fetch(state: &AppState, cid: &ConnectorId, ids: &[Identity]) -> Result<Vec<Device>> {
    let mut out = Vec::new();
    for id in ids {
        match state.store.device(cid, id).await {
            Ok(d) => out.push(d),
            // Deleted since the hashes were read: the asking side shows it missing.
            Err(StoreError::DeviceNotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Queues this site's current record of each of `ids` on the durable sync stream; answers
/// how many exist here.
pub async fn resend(state: &AppState, cid: &ConnectorId, ids: Vec<Identity>) -> Result<u64> {
    if ids.len() > MAX_RESEND {
        return Err(Error::Invalid(format!(
            "at most {MAX_RESEND} devices at once"
        )));
    }
    let queued = state.store.resend_devices(cid, ids).await?;
    state.remote.sync.appended(cid);
    Ok(queued)
}

/// The identities a re-send names: at most [`MAX_RESEND`], each valid.
pub fn identities(ids: &[String]) -> Result<Vec<Identity>> {
    if ids.len() > MAX_RESEND {
        return Err(Error::Invalid(format!(
            "at most {MAX_RESEND} devices at once"
        )));
    }
    Ok(ids
        .iter()
        .map(|id| Identity::parse(id))
        .collect::<std::result::Result<_, _>>()?)
}
