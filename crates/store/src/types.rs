//! The records the [`Store`](crate::Store) takes and returns. Plain data: validation happened
//! when the `proto::model` values inside them were made.

use std::collections::BTreeMap;

use proto::model::{
    ConnectorId, DeviceState, Format, Identity, Permission, ResourceName, Role, SyncState, Tags,
    Value,
};

/// SHA-256 of a bearer token: the store never sees a token itself, so a copy of the database
/// lets nobody sign in.
pub type TokenHash = [u8; 32];

#[derive(Debug, Clone)]
pub struct NewConnector {
    pub id: ConnectorId,
    pub name: String,
    pub description: String,
    pub created_at: i64,
}

/// A connector with its Remote-Sync standing and the counts the connector list shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Connector {
    pub id: ConnectorId,
    pub name: String,
    pub description: String,
    pub created_at: i64,
    pub role: Role,
    pub state: SyncState,
    /// End of the pairing countdown while `state` is `Pairing`.
    pub pairing_expires_at: Option<i64>,
    pub peer: Option<Peer>,
    pub paired_at: Option<i64>,
    pub device_count: u64,
    pub resource_count: u64,
}

/// The other side of a pairing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub site: String,
    pub connector_id: ConnectorId,
}

#[derive(Debug, Clone)]
pub struct NewResource {
    pub name: ResourceName,
    pub format: Format,
    pub unit: Option<String>,
    pub settable: bool,
    pub remote_sync: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub name: ResourceName,
    pub format: Format,
    pub unit: Option<String>,
    pub settable: bool,
    pub remote_sync: bool,
    pub created_at: i64,
}

/// A partial update of a resource: `None` leaves a field as it is. `unit: Some(None)` clears
/// the unit.
#[derive(Debug, Clone, Default)]
pub struct ResourcePatch {
    pub unit: Option<Option<String>>,
    pub settable: Option<bool>,
    pub remote_sync: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct NewDevice {
    pub identity: Identity,
    pub tags: Tags,
    pub permissions: Vec<Permission>,
    pub state: DeviceState,
    pub token: TokenHash,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub identity: Identity,
    pub tags: Tags,
    pub permissions: Vec<Permission>,
    pub state: DeviceState,
    /// Desired values of settable resources.
    pub config: BTreeMap<ResourceName, Value>,
    /// The newest point of each resource the device has written.
    pub values: BTreeMap<ResourceName, Point>,
    pub created_at: i64,
}

impl Device {
    /// When the device last wrote anything, by the newest point's timestamp.
    pub fn last_seen(&self) -> Option<i64> {
        self.values.values().map(|p| p.t).max()
    }
}

/// A partial update of a device. Tags and permissions replace the whole map or list; `config`
/// merges key by key, a `None` value removing that resource's desired value.
#[derive(Debug, Clone, Default)]
pub struct DevicePatch {
    pub tags: Option<Tags>,
    pub permissions: Option<Vec<Permission>>,
    pub state: Option<DeviceState>,
    pub config: Option<BTreeMap<ResourceName, Option<serde_json::Value>>>,
}

/// A page of the device list: devices whose identity sorts after `after`, carrying every tag
/// in `tags`, at most `limit` of them, ordered by identity.
#[derive(Debug, Clone, Default)]
pub struct DeviceQuery {
    pub tags: Vec<(String, String)>,
    pub after: Option<Identity>,
    pub limit: usize,
}

/// Values one device wrote at one time, unchecked: the store checks each against its
/// resource's format inside the write.
#[derive(Debug, Clone)]
pub struct PointsIn {
    pub identity: Identity,
    pub t: i64,
    pub values: Vec<(ResourceName, serde_json::Value)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub t: i64,
    pub v: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

/// A page of one series: points with `since <= t < until`, strictly after `after` in the
/// chosen order, at most `limit`.
#[derive(Debug, Clone, Copy)]
pub struct RangeQuery {
    pub since: i64,
    pub until: i64,
    pub after: Option<i64>,
    pub limit: usize,
    pub order: Order,
}

/// The Source's open pairing window, as stored while the countdown runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingWindowRow {
    /// The one-time code; SPAKE2 needs it in clear on the Source.
    pub code: String,
    pub expires_at: i64,
    pub failed_attempts: u32,
}

/// A paired connector's long-term static key and the peer's pinned public key.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectorKeys {
    pub static_private: [u8; 32],
    pub static_public: [u8; 32],
    pub peer_static_public: [u8; 32],
}

impl std::fmt::Debug for ConnectorKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorKeys")
            .field("static_public", &self.static_public)
            .field("peer_static_public", &self.peer_static_public)
            .finish_non_exhaustive()
    }
}
