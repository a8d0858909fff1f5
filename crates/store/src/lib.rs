//! Persistence of one site: users and tokens, connectors, resources, devices and their time
//! series, behind the [`Store`] trait.
//!
//! [`SqliteStore`] is the embedded default (one file per site, WAL). Nothing outside this
//! crate may assume SQLite: the trait speaks only domain types from `proto`, and a
//! PostgreSQL implementation is meant to sit beside the SQLite one.
//!
//! Invariants every implementation keeps:
//! - A call that returns `Ok` has made its effect durable against a crash of the process
//!   (`kill -9`); a call that returns `Err` has changed nothing.
//! - `ingest` checks every value against its resource's format and refuses the whole
//!   request on the first bad one.
//! - Device edits (`create_device`, `update_device`, `delete_device`) are stamped with the
//!   site's hybrid logical clock, merged into the device's replicated record and, on a
//!   paired connector, queued for the peer in the same transaction; `sync_apply` merges the
//!   peer's changes the same way (docs/sync.md "Device convergence").
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod sqlite;
mod types;

pub use sqlite::{SqliteConfig, SqliteStore, Synchronous};
pub use types::*;

use async_trait::async_trait;
use proto::model::{ConnectorId, Identity, ModelError, ResourceName};

/// What can go wrong in the store. Not-found and conflict variants are expected outcomes that
/// the API maps to 404 and 409; `Backend` is a fault of the storage itself.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("connector {0} does not exist")]
    ConnectorNotFound(ConnectorId),
    #[error("device {0} does not exist in this connector")]
    DeviceNotFound(Identity),
    #[error("resource {0} does not exist in this connector")]
    ResourceNotFound(ResourceName),
    #[error("a resource named {0} already exists in this connector")]
    ResourceExists(ResourceName),
    #[error("a connector named {0:?} already exists on this site")]
    ConnectorNameTaken(String),
    #[error("a device with identity {0} already exists in this connector")]
    DeviceExists(Identity),
    #[error("device {0} is locked; unlock it to accept its data")]
    DeviceLocked(Identity),
    #[error("connector {connector} cannot do that in its Remote-Sync state: {reason}")]
    SyncState {
        connector: ConnectorId,
        reason: &'static str,
    },
    #[error("user {0} already exists")]
    UserExists(String),
    #[error("user {0} does not exist")]
    UserNotFound(String),
    #[error("resource {0} is not settable, so a device has no configuration for it")]
    NotSettable(ResourceName),
    #[error(transparent)]
    Invalid(#[from] ModelError),
    #[error("storage failed while {op}: {source}")]
    Backend {
        op: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the store is shut down")]
    Closed,
    /// A sync apply that does not continue the stored cursor (a misordered or replayed
    /// batch): nothing was applied.
    #[error("connector {connector}: received records start at {first}, but the cursor is {cursor}")]
    SyncCursor {
        connector: ConnectorId,
        cursor: u64,
        first: u64,
    },
}

impl StoreError {
    /// Whether the failure is the disk (or the filesystem's quota) being full: the request
    /// may succeed once space frees, so callers answer "try again later", not "bug".
    pub fn is_storage_full(&self) -> bool {
        let Self::Backend { source, .. } = self else {
            return false;
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
        while let Some(e) = cause {
            if let Some(sql) = e.downcast_ref::<rusqlite::Error>()
                && sql.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
            {
                return true;
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && (io.kind() == std::io::ErrorKind::StorageFull
                    || io.kind() == std::io::ErrorKind::QuotaExceeded)
            {
                return true;
            }
            cause = e.source();
        }
        false
    }
}

/// Batches a [`Store::live`] receiver may fall behind before it misses some.
pub const LIVE_CAPACITY: usize = 1024;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything a site persists. Methods are async so that a networked database fits behind
/// the same trait as the embedded one.
///
/// Contract of every method: an `Err` changed nothing; an `Ok` of a write is durable (on
/// disk per the store's configured synchronous level) before it returns. Times are µs since
/// the Unix epoch. Not-found and conflict outcomes are [`StoreError`] variants, never
/// `Backend`; a connector that does not exist is [`StoreError::ConnectorNotFound`] for
/// every method that takes one.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // Users and tokens.
    /// How many users exist (0 on a fresh site: time to create `admin`).
    async fn user_count(&self) -> Result<u64>;
    /// Creates a user with an argon2 hash of its password; [`StoreError::UserExists`] if
    /// the name is taken.
    async fn create_user(&self, username: &str, password_hash: &str) -> Result<UserRow>;
    /// Replaces a user's password hash and revokes every login token of the user, in one
    /// step; [`StoreError::UserNotFound`] if there is no such user.
    async fn set_password(&self, username: &str, password_hash: &str) -> Result<()>;
    /// A user's password hash, or `None` when there is no such user.
    async fn password_hash(&self, username: &str) -> Result<Option<String>>;
    /// Up to `limit` users whose names sort after `after` (all when `None`), by name: one
    /// page of the users list.
    async fn list_users(&self, after: Option<&str>, limit: usize) -> Result<Vec<UserRow>>;
    /// Which of `names` are users of this site, in the order given (a device's grants
    /// checked against the site's users; the caller bounds the list).
    async fn existing_users(&self, names: &[String]) -> Result<Vec<String>>;
    /// Removes a user and, in the same step, every login token of the user, so that none
    /// works once this returns; [`StoreError::UserNotFound`] if there is no such user. Who
    /// may be removed (never the admin) is the caller's rule. Device grants naming the user
    /// stay: they are names, and may name a user of the peer site too.
    async fn delete_user(&self, username: &str) -> Result<()>;
    /// Stores the SHA-256 of a login token for `username`, valid until `expires_at`.
    async fn create_token(&self, token: TokenHash, username: &str, expires_at: i64) -> Result<()>;
    /// The user a login token belongs to, if it exists and has not expired at `now`.
    async fn token_user(&self, token: TokenHash, now: i64) -> Result<Option<String>>;
    /// Revokes a login token (signing out); nothing happens for an unknown one.
    async fn delete_token(&self, token: TokenHash) -> Result<()>;

    // Connectors.
    /// Creates a standalone connector (role `none`, state `disabled`).
    async fn create_connector(&self, new: NewConnector) -> Result<Connector>;
    /// Every connector with its device and resource counts, by name.
    async fn list_connectors(&self) -> Result<Vec<Connector>>;
    /// One connector with its counts.
    async fn connector(&self, id: &ConnectorId) -> Result<Connector>;
    /// Deletes a connector with its resources, devices and data. The store does
    /// not check the pairing: refusing to delete a paired connector is the caller's rule.
    async fn delete_connector(&self, id: &ConnectorId) -> Result<()>;
    /// Renames or re-describes a connector; fields that are `None` stay as they are.
    /// [`StoreError::ConnectorNameTaken`] if another connector of this site has the name
    /// (compared without regard to ASCII case, as `create_connector` and
    /// `create_target_connector` compare it).
    async fn update_connector(&self, id: &ConnectorId, patch: ConnectorPatch) -> Result<Connector>;

    // Pairing (docs/spec.md §4).
    /// Opens (or reopens with a fresh code) the pairing window of a standalone or
    /// previously expired connector: role `source`, state `pairing`.
    async fn open_pairing(
        &self,
        cid: &ConnectorId,
        code: &str,
        expires_at: i64,
    ) -> Result<Connector>;
    /// The open pairing window, if the connector is in state `pairing`.
    async fn pairing_window(&self, cid: &ConnectorId) -> Result<Option<PairingWindowRow>>;
    /// Counts one wrong code; returns the number of failures so far.
    async fn record_failed_attempt(&self, cid: &ConnectorId) -> Result<u32>;
    /// Closes a pairing window without pairing (cancelled, expired, too many attempts):
    /// back to role `none`, state `disabled`.
    async fn close_pairing(&self, cid: &ConnectorId) -> Result<Connector>;
    /// Completes pairing on the Source: state `paired`, the peer and keys pinned, the code
    /// forgotten.
    async fn complete_pairing(
        &self,
        cid: &ConnectorId,
        peer: Peer,
        keys: ConnectorKeys,
        paired_at: i64,
    ) -> Result<Connector>;
    /// Records that the peer of a paired connector proved it holds the pairing (an
    /// end-to-end session came up); returns whether it was unconfirmed until now.
    async fn confirm_pairing(&self, cid: &ConnectorId) -> Result<bool>;
    /// Undoes a Source's pairing that its Target never confirmed: back to role `none`,
    /// state `disabled`, the peer, keys and everything queued for it forgotten. Refused
    /// once the pairing is confirmed.
    async fn cancel_unconfirmed_pairing(&self, cid: &ConnectorId) -> Result<Connector>;
    /// Creates a Target connector already paired with its Source, in one step.
    async fn create_target_connector(
        &self,
        new: NewConnector,
        peer: Peer,
        keys: ConnectorKeys,
    ) -> Result<Connector>;
    /// The keys of a paired connector.
    async fn connector_keys(&self, cid: &ConnectorId) -> Result<Option<ConnectorKeys>>;

    // Resources.
    /// Creates a resource; [`StoreError::ResourceExists`] if the name is taken. On a Target,
    /// points kept pending for a resource of this name are applied in the same commit.
    async fn create_resource(&self, cid: &ConnectorId, new: NewResource) -> Result<Resource>;
    /// A connector's resources, by name.
    async fn resources(&self, cid: &ConnectorId) -> Result<Vec<Resource>>;
    /// Changes a resource's unit, settable flag or Remote-Sync switch; fields that are
    /// `None` in `patch` stay as they are.
    async fn update_resource(
        &self,
        cid: &ConnectorId,
        name: &ResourceName,
        patch: ResourcePatch,
    ) -> Result<Resource>;
    /// Deletes a resource with every point of it on this site (blocks, log, latest values,
    /// devices' configuration of it), in one commit; other resources' data is untouched.
    /// On a paired Source, records already queued in the outbox stay queued (they are
    /// delivered); nothing new is queued for it, since it no longer exists. The devices'
    /// replicated records keep their configuration of it (the peer's to keep), which a
    /// resource of the same name created later adopts, like any configuration the peer set
    /// for a resource this site lacks.
    async fn delete_resource(&self, cid: &ConnectorId, name: &ResourceName) -> Result<()>;
    /// How many points of a resource this site stores, and on how many devices: what
    /// [`delete_resource`](Store::delete_resource) would delete.
    async fn resource_usage(&self, cid: &ConnectorId, name: &ResourceName)
    -> Result<ResourceUsage>;

    // Devices. Every change is stamped, merged into the device's replicated record and, on
    // a paired connector, appended to its outbox in the same commit (docs/sync.md "Device
    // convergence").
    /// Creates a device with the hash of its token; [`StoreError::DeviceExists`] if the
    /// identity is taken.
    async fn create_device(&self, cid: &ConnectorId, new: NewDevice, by: &Actor) -> Result<Device>;
    /// One page of the device list, as [`DeviceQuery`] describes it.
    async fn devices(&self, cid: &ConnectorId, query: DeviceQuery) -> Result<Vec<Device>>;
    /// How many devices pass `query`'s filters (its sort, `from` and `limit` are ignored).
    async fn count_devices(&self, cid: &ConnectorId, query: DeviceQuery) -> Result<u64>;
    /// One device with its configuration, latest values and pending mark.
    async fn device(&self, cid: &ConnectorId, identity: &Identity) -> Result<Device>;
    /// Changes a device's tags, permissions, state or configuration (only of settable
    /// resources, [`StoreError::NotSettable`] otherwise); `None` fields stay as they are.
    async fn update_device(
        &self,
        cid: &ConnectorId,
        identity: &Identity,
        patch: DevicePatch,
        by: &Actor,
    ) -> Result<Device>;
    /// Deletes a device and its data; its record stays as a tombstone for the peer.
    async fn delete_device(&self, cid: &ConnectorId, identity: &Identity, by: &Actor)
    -> Result<()>;
    /// Replaces a device's token (the old one stops working in the same commit).
    async fn set_device_token(
        &self,
        cid: &ConnectorId,
        identity: &Identity,
        token: TokenHash,
        by: &Actor,
    ) -> Result<()>;
    /// One page of the connector's device audit log, newest first (of one device when
    /// `query.identity` is given). Every device change (the four methods above, and the
    /// peer's changes `sync_apply` merges) writes its entry in its own transaction, made
    /// `by` the caller (the peer site for `sync_apply`); a change that made no visible
    /// difference writes none. Each device keeps its newest 100 entries, none older than 90
    /// days.
    async fn device_audit(&self, cid: &ConnectorId, query: AuditQuery) -> Result<Vec<AuditEntry>>;
    /// The device a device token belongs to. A token that stops belonging to it (a new
    /// token, the device or its connector deleted, here or by the peer) is unknown to every
    /// call that begins after the change returned.
    async fn device_by_token(&self, token: TokenHash) -> Result<Option<(ConnectorId, Identity)>>;
    /// The device a device token belongs to when the store can tell without I/O (it was
    /// verified by [`Store::device_by_token`] and has not been revoked since, as that method
    /// would answer); `None` means "ask `device_by_token`", never "unknown".
    fn known_device_token(&self, _token: &TokenHash) -> Option<(ConnectorId, Identity)> {
        None
    }

    // Time series.
    /// Checks and stores every point of `points` in one atomic step; returns how many values
    /// were stored.
    async fn ingest(&self, cid: &ConnectorId, points: Vec<PointsIn>) -> Result<usize>;
    /// One page of one device's series of one resource, as [`RangeQuery`] describes it.
    async fn points(
        &self,
        cid: &ConnectorId,
        identity: &Identity,
        resource: &ResourceName,
        query: RangeQuery,
    ) -> Result<Vec<Point>>;
    /// Subscribes to the points made durable from now on: one [`LiveBatch`] per connector
    /// and commit, sent once the commit is durable and before its caller hears back, in
    /// commit order (so each series in the order written, each point once); the device
    /// changes of a commit follow its points as batches of their audit entries. A receiver that
    /// falls more than [`LIVE_CAPACITY`] batches behind misses the oldest and is told how
    /// many (`RecvError::Lagged`).
    fn live(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<LiveBatch>>;
    /// Retention of stored points: drops every stored time partition (an hour of every
    /// series) that ends at or before `before` (µs), whole partitions at a time, and returns
    /// what it dropped. Points written but not yet folded into partitions stay until a pass
    /// after their fold; the latest value of each series stays; the outbox is not touched
    /// (its retention is [`sync_expire`](Self::sync_expire)).
    async fn points_expire(&self, before: i64) -> Result<PointsExpiry>;

    // Sync (docs/spec.md §6, §7; docs/sync.md). `ingest` appends the points of remote-synced
    // resources of a paired Source to its outbox in the same transaction, under gap-free
    // seqs; these methods are the sync driver's side of `proto::sync` (sending: the outbox,
    // lease, acknowledgement, retention; receiving: the cursor, applied data, gaps).
    /// Durable state to rebuild a connector's Sender and Receiver from, and outbox gauges.
    async fn sync_state(&self, cid: &ConnectorId) -> Result<SyncDurable>;
    /// The highest seq in the connector's outbox (0 when empty).
    async fn outbox_head(&self, cid: &ConnectorId) -> Result<u64>;
    /// At most `max` consecutive records from `from`, or the lost span that holds `from`
    /// ([`outbox_range`](Self::outbox_range) up to the head).
    async fn outbox_read(&self, cid: &ConnectorId, from: u64, max: usize) -> Result<OutboxChunk>;
    /// Has the store call `wake(cid)` as soon as a commit that appended records to `cid`'s
    /// outbox is durable, before that commit's callers hear back: the sync driver starts
    /// reading and sending while they are answered (the SQLite store calls it from its
    /// writer thread, after the commit, so `wake` must only signal). Returns whether this
    /// backend does; one that does not (the default) leaves each writer to wake the driver
    /// once its write returns.
    fn wake_on_append(&self, wake: std::sync::Arc<dyn Fn(&ConnectorId) + Send + Sync>) -> bool {
        let _ = wake;
        false
    }
    /// The head and [`outbox_read`](Self::outbox_read)`(cid, from, max)`, as of one commit
    /// where the backend has them: what a sync driver woken by an append reads, so that the
    /// records leave without a second round trip to the store (the SQLite store answers
    /// from the records its latest commits appended, kept in memory, when it holds them
    /// from `from` on; then without any, and with the records' payload when they are all of
    /// the row it wrote them in).
    async fn outbox_head_read(&self, cid: &ConnectorId, from: u64, max: usize) -> Result<HeadRead> {
        Ok(HeadRead {
            head: self.outbox_head(cid).await?,
            chunk: self.outbox_read(cid, from, max).await?,
            payload: None,
        })
    }
    /// At most `max` consecutive records with `from <= seq < until` (none when `from >=
    /// until` or `from` is past the head), or the lost span that holds `from` (whole, even
    /// where it reaches past `until`). A seq is one point or one device change whatever the
    /// store keeps per row: `from` may be any seq, and a record reads the same from any
    /// starting point.
    async fn outbox_range(
        &self,
        cid: &ConnectorId,
        from: u64,
        until: u64,
        max: usize,
    ) -> Result<OutboxChunk>;
    /// Persists the send lease: records in `(acked, upto]` are kept until acknowledged.
    async fn outbox_lease(&self, cid: &ConnectorId, upto: u64) -> Result<()>;
    /// Opens a live lane at the head (docs/sync.md, "Two lanes"), in one transaction:
    /// re-appends the current record of every device with a change not yet acknowledged and
    /// persists the live lease from the first of them through `records` more (a previous
    /// live lease folds into the send lease). Returns the live lease `(from, upto)`.
    async fn outbox_open_live(&self, cid: &ConnectorId, records: u64) -> Result<(u64, u64)>;
    /// Persists the live lease `[from, upto]`: records in it are kept until acknowledged
    /// (a live lease of another `from` folds into the send lease).
    async fn outbox_live_lease(&self, cid: &ConnectorId, from: u64, upto: u64) -> Result<()>;
    /// Persists the peer's acknowledgement and drops what is delivered.
    async fn outbox_acked(&self, cid: &ConnectorId, applied: u64) -> Result<()>;
    /// Drops expired outbox partitions (recording exact lost spans for the undelivered, never
    /// touching the leased ones) and expired pending points (recording gaps).
    async fn sync_expire(&self, cid: &ConnectorId, retention: Retention) -> Result<ExpiryReport>;
    /// The connectors [`sync_expire`](Self::sync_expire) has anything to look at for, in one
    /// read for the whole site (so idle pairings cost no retention job each).
    async fn sync_expiring(&self, retention: Retention) -> Result<Vec<ConnectorId>>;
    /// The connector's bandwidth budget, bytes per second its sync may send (`None`: none).
    async fn sync_budget(&self, cid: &ConnectorId) -> Result<Option<u64>>;
    /// Sets (or, with `None`, removes) the connector's bandwidth budget;
    /// [`StoreError::ConnectorNotFound`] for an unknown connector.
    async fn set_sync_budget(&self, cid: &ConnectorId, max_bytes_per_s: Option<u64>) -> Result<()>;
    /// Applies received batches and gaps, in order, in one transaction with the cursor, after
    /// checking that each starts right after the stored cursor ([`StoreError::SyncCursor`]
    /// otherwise). Creates devices as needed; keeps points of missing resources pending until
    /// the resource is created. Returns the new cursor.
    async fn sync_apply(&self, cid: &ConnectorId, items: Vec<Inbound>, now: i64) -> Result<u64>;
    /// Queues the current record of each of these devices for the peer again (after the
    /// drift check found them different); returns how many exist and were queued. Does
    /// nothing on a connector that is not paired.
    async fn resend_devices(&self, cid: &ConnectorId, identities: Vec<Identity>) -> Result<u64>;
    /// Queues one slice of a backfill on a paired Source (docs/sync.md, "Backfill"): the
    /// points it holds for the resource and range of `req`, from `req.from` on, appended to
    /// the outbox as new records with their current values, in one commit. Refused
    /// ([`StoreError::SyncState`]) unless the connector is a paired Source and the resource
    /// has Remote-Sync on; [`StoreError::ResourceNotFound`] for an unknown resource.
    async fn sync_requeue(&self, cid: &ConnectorId, req: Requeue) -> Result<Requeued>;
    /// Keeps `view` as the connector's latest backfill (replacing the one before, with its
    /// cursor and slices): a Source's that it queues, with the `devices` named, or the one
    /// a Target asked its Source for. A [`Requeue`] naming its id then advances it in the
    /// slice's commit. [`StoreError::ConnectorNotFound`] for an unknown connector.
    async fn save_backfill(
        &self,
        cid: &ConnectorId,
        view: proto::lookup::BackfillView,
        devices: Option<Vec<Identity>>,
    ) -> Result<()>;
    /// Records that backfill `id` of the connector stopped queuing (`state`, at `at`);
    /// nothing when the stored one is another.
    async fn end_backfill(
        &self,
        cid: &ConnectorId,
        id: u64,
        state: proto::lookup::BackfillState,
        at: i64,
    ) -> Result<()>;
    /// Every connector's latest backfill, for a site that starts: a Source's slices are
    /// those its peer had not wholly acknowledged.
    async fn backfills(&self) -> Result<Vec<StoredBackfill>>;
    /// Every loss recorded on this side, oldest first.
    async fn sync_gaps(&self, cid: &ConnectorId) -> Result<Vec<GapRow>>;
    /// The points this side keeps for resources it does not have (a Target's points that
    /// arrived before their resource was created here), summed per resource in name order.
    async fn sync_waiting(&self, cid: &ConnectorId) -> Result<Vec<WaitingResource>>;

    // Alarms (docs/api.md, "Alarms"): what the site's alarm evaluator persists.
    /// Every connector's stored thresholds; a connector not listed has none stored.
    async fn alarm_settings(&self) -> Result<Vec<(ConnectorId, AlarmSettings)>>;
    /// Stores the connector's thresholds (all four; `None` turns one off).
    async fn set_alarm_settings(&self, cid: &ConnectorId, settings: AlarmSettings) -> Result<()>;
    /// Records an alarm as active and returns it; when one of its connector and kind is active
    /// already, returns that one and records nothing.
    async fn raise_alarm(&self, alarm: NewAlarm) -> Result<AlarmRow>;
    /// Clears the active alarm `id` at `at` (µs) and keeps at most `keep` cleared alarms,
    /// dropping the oldest; `None` when `id` is not active (cleared already, or gone with its
    /// connector).
    async fn clear_alarm(&self, id: i64, at: i64, keep: usize) -> Result<Option<AlarmRow>>;
    /// The alarms the query selects, newest first.
    async fn alarms(&self, query: AlarmQuery) -> Result<Vec<AlarmRow>>;
}
