//! The records the [`Store`](crate::Store) takes and returns. Plain data: validation happened
//! when the `proto::model` values inside them were made.

use std::collections::BTreeMap;

use proto::model::{
    ConnectorId, DeviceState, Format, Identity, Permission, ResourceName, Role, SyncState, Tags,
    Value,
};
pub use proto::model::{DeviceSort, ListPlace, SeenFilter};

/// SHA-256 of a bearer token: the store never sees a token itself, so a copy of the database
/// lets nobody sign in.
pub type TokenHash = [u8; 32];

/// A user of this site, as the users list shows it (never its password hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub username: String,
    pub created_at: i64,
}

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
    /// Whether the peer proved it holds the pairing (its first end-to-end session). A
    /// Source's pairing starts unconfirmed: the Target's Confirm may have been lost, and
    /// until it is confirmed the operator may cancel it. Always true on a Target.
    pub pairing_confirmed: bool,
}

/// The other side of a pairing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub site: String,
    pub connector_id: ConnectorId,
}

/// A partial update of a connector: `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ConnectorPatch {
    pub name: Option<String>,
    pub description: Option<String>,
}

/// What a resource holds on this site.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceUsage {
    /// Stored points, one per `(device, t)`.
    pub points: u64,
    /// Devices with at least one point of it.
    pub devices: u64,
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
    /// Whether this site's latest change of the device has not reached the peer yet.
    pub sync_pending: bool,
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

/// A page of the device list: devices carrying every tag in `tags` (and passing the other
/// filters given), sorted by `sort` (then identity), at most `limit` of them from `from`.
///
/// Paging is by keyset: a page starts after the place where the previous one ended (its
/// last device's sort key and identity), so devices added or removed meanwhile never shift a
/// page. A device whose key changes between two pages (it wrote a point, say) may move past
/// that place: it is then shown twice or not at all, as in any list of live values.
#[derive(Debug, Clone, Default)]
pub struct DeviceQuery {
    pub tags: Vec<(String, String)>,
    /// Only identities that start with this, when given.
    pub prefix: Option<String>,
    /// Only devices in this state, when given.
    pub state: Option<DeviceState>,
    /// Only devices whose newest point passes this, when given.
    pub seen: Option<SeenFilter>,
    pub sort: DeviceSort,
    /// Largest key first (and identities then descending too).
    pub descending: bool,
    /// Where the page starts: just after this place in list order, or, with `back`, the
    /// `limit` devices just before it (answered in list order). `None`: the first page.
    pub from: Option<ListPlace>,
    pub limit: usize,
}

impl DeviceQuery {
    /// Devices in identity order after `after`, at most `limit`, unfiltered.
    pub fn after(after: Option<Identity>, limit: usize) -> Self {
        Self {
            from: after.map(|identity| ListPlace {
                key: 0,
                identity,
                back: false,
            }),
            limit,
            ..Self::default()
        }
    }
}

/// A device's key under `sort`, as the store sorts by it: 0 by identity; by state 0 for
/// locked, 1 for provisioned; by last seen the newest point's time, -1 for never; by sync 1
/// while pending, else 0.
pub fn sort_key(d: &Device, sort: DeviceSort) -> i64 {
    match sort {
        DeviceSort::Identity => 0,
        DeviceSort::State => i64::from(d.state != DeviceState::Locked),
        DeviceSort::LastSeen => d.last_seen().unwrap_or(-1),
        DeviceSort::Sync => i64::from(d.sync_pending),
    }
}

/// Who made a device change, as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A user of this site, signed in to the web UI.
    User(String),
    /// A user of this site, through the API with a bearer token.
    Token(String),
    /// The peer site of a paired connector, through Remote-Sync (its name).
    Peer(String),
}

impl Actor {
    /// `user`, `token` or `peer`: the kind as the store and the API spell it.
    pub fn kind(&self) -> &'static str {
        match self {
            Actor::User(_) => "user",
            Actor::Token(_) => "token",
            Actor::Peer(_) => "peer",
        }
    }

    /// The user's or the peer site's name.
    pub fn name(&self) -> &str {
        match self {
            Actor::User(n) | Actor::Token(n) | Actor::Peer(n) => n,
        }
    }

    /// The kind and name as stored; `None` for an unknown kind.
    pub fn from_parts(kind: &str, name: String) -> Option<Actor> {
        match kind {
            "user" => Some(Actor::User(name)),
            "token" => Some(Actor::Token(name)),
            "peer" => Some(Actor::Peer(name)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Actor {
    /// `admin`, `admin (API token)`, `site-b (peer)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::User(n) => write!(f, "{n}"),
            Actor::Token(n) => write!(f, "{n} (API token)"),
            Actor::Peer(n) => write!(f, "{n} (peer)"),
        }
    }
}

/// What happened to a device in one audit entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    Created,
    Changed,
    Deleted,
    /// Its token was replaced (the old one stopped working).
    Token,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Created => "created",
            AuditAction::Changed => "changed",
            AuditAction::Deleted => "deleted",
            AuditAction::Token => "token",
        }
    }

    pub fn parse(s: &str) -> Option<AuditAction> {
        [
            AuditAction::Created,
            AuditAction::Changed,
            AuditAction::Deleted,
            AuditAction::Token,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// One field an audited change made different: `state`, `tags.KEY`, `permissions.PRINCIPAL`
/// (its access) or `config.RESOURCE` (the desired value), with its value before and after
/// (`None`: absent).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FieldChange {
    pub field: String,
    pub from: Option<serde_json::Value>,
    pub to: Option<serde_json::Value>,
}

/// One entry of a connector's device audit log (docs/api.md, "Audit log").
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// Increasing on this site: the order of the entries, and the cursor of a page.
    pub id: u64,
    pub identity: Identity,
    /// When this site stored the change (µs).
    pub at: i64,
    pub by: Actor,
    pub action: AuditAction,
    /// For `Created` every field it was created with; for `Changed` what differs; empty
    /// for `Deleted` and `Token`.
    pub changes: Vec<FieldChange>,
}

/// A page of the audit log, newest first: of one device or of the whole connector, entries
/// older than `before` (an entry's id), at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    pub identity: Option<Identity>,
    pub before: Option<u64>,
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

/// The points of one connector that one commit made durable (an ingest, a sync apply,
/// pending points adopted by a new resource), as [`Store::live`](crate::Store::live) hands
/// them out.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveBatch {
    pub connector: ConnectorId,
    /// In the order they were written.
    pub points: Vec<LivePoint>,
    /// The changes of the connector's devices the commit made (local edits, or the peer's
    /// applied), as their audit entries, in order. A batch holds points or device changes.
    pub devices: Vec<AuditEntry>,
}

/// One point of a [`LiveBatch`].
#[derive(Debug, Clone, PartialEq)]
pub struct LivePoint {
    pub device: Identity,
    pub resource: ResourceName,
    pub t: i64,
    pub v: Value,
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

// ---------------------------------------------------------------------------------------
// Sync (docs/spec.md §6, §7; docs/sync.md).

/// What a connector's sync driver restores its state machines from, plus the gauges of its
/// outbox. All zero for a connector that never synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncDurable {
    /// Highest seq appended to the outbox.
    pub head: u64,
    /// Highest seq the peer acknowledged, as persisted.
    pub acked: u64,
    /// The persisted send lease.
    pub lease: u64,
    /// The persisted live lease `(from, upto)`, once a live lane was opened.
    pub live_lease: Option<(u64, u64)>,
    /// The receiving side's applied cursor.
    pub applied: u64,
    /// The receiving side's live lane `(from, to)`, applied above the hole its backlog fills.
    pub live: Option<(u64, u64)>,
    /// When the receiving side last applied a batch or recorded a gap.
    pub last_applied_at: Option<i64>,
    /// Time partitions the outbox holds.
    pub partitions: u64,
    /// Estimated bytes of the outbox's records.
    pub outbox_bytes: u64,
}

/// One slice of a backfill (docs/sync.md, "Backfill"): queue again, as new outbox records,
/// the points a paired Source holds for `resource` with `since <= t < until`, of `devices`
/// (identities in ascending order) or of every device, continuing at `from`. A slice
/// queues at most `max_points` points and looks at most `max_devices` devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requeue {
    pub resource: proto::model::ResourceName,
    pub since: i64,
    pub until: i64,
    /// Only these devices (sorted, no repeats); `None`: every device of the connector.
    pub devices: Option<Vec<proto::model::Identity>>,
    /// Where the previous slice stopped; `None` for the first.
    pub from: Option<RequeueCursor>,
    pub max_points: usize,
    pub max_devices: usize,
    /// The backfill this slice belongs to: its stored cursor, points queued and slice are
    /// updated in the slice's commit ([`Store::save_backfill`]), so that a restart goes on
    /// exactly after the last slice. `None`: a slice of no stored backfill.
    pub backfill: Option<u64>,
}

/// A connector's latest backfill as the store keeps it ([`Store::backfills`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBackfill {
    pub connector: ConnectorId,
    /// With the stored state, points queued and end; `applied` is 0 (the site counts it
    /// against its acknowledgements with `slices`).
    pub view: proto::lookup::BackfillView,
    /// The identities named; `None`: every device.
    pub devices: Option<Vec<proto::model::Identity>>,
    /// Where the next slice starts; `None` before the first.
    pub next: Option<RequeueCursor>,
    /// `(first seq, points)` of each slice the peer had not wholly acknowledged, in seq
    /// order (on a Source; empty on a Target).
    pub slices: Vec<(u64, u64)>,
}

/// Where a backfill continues: device `device` (or the first after it in identity order,
/// should it be gone) from time `t`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequeueCursor {
    pub device: proto::model::Identity,
    pub t: i64,
}

/// What one [`Requeue`] slice queued.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Requeued {
    /// Points queued: the records `first_seq..first_seq + points` (consecutive).
    pub points: u64,
    /// The seq of the first of them (0 when none was queued).
    pub first_seq: u64,
    /// Where the next slice continues; `None` when the range is done.
    pub next: Option<RequeueCursor>,
}

/// The answer to an outbox read.
#[derive(Debug, Clone, PartialEq)]
pub enum OutboxChunk {
    /// Consecutive records from the seq asked for; empty when there is none.
    Records(Vec<proto::sync::Record>),
    /// Retention dropped the seq asked for; the span as recorded when it was dropped.
    Lost(proto::sync::LostSpan),
}

/// What [`Store::outbox_head_read`](crate::Store::outbox_head_read) gives.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadRead {
    /// The highest seq in the outbox.
    pub head: u64,
    pub chunk: OutboxChunk,
    /// The batch payload (`proto::sync::codec`) of exactly the chunk's records, when the
    /// backend holds it (the row it wrote them in): the sender sends it instead of
    /// encoding them again (`proto::sync::ReadChunk::Encoded`).
    pub payload: Option<Vec<u8>>,
}

/// One output of a `proto::sync::Receiver` to make durable with the cursor.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Records(proto::sync::Apply),
    Gap(proto::sync::GapRecord),
}

/// What retention may drop, and when "now" is (the site's clock, which tests can move).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub now: i64,
    /// How long undelivered records and pending points are kept, µs.
    pub keep_us: i64,
    /// Most estimated bytes the outbox may hold; older undelivered partitions are dropped
    /// (as losses) beyond it. `None`: no budget.
    pub budget_bytes: Option<u64>,
}

/// What one expiry pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExpiryReport {
    pub partitions_dropped: u64,
    /// Undelivered points dropped from the outbox (reported to the peer as gaps).
    pub points_lost: u64,
    /// Pending points dropped on this side (recorded here as gaps).
    pub pending_expired: u64,
}

/// What one pass of stored-point retention ([`Store::points_expire`]) dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PointsExpiry {
    /// Whole time partitions (hours) dropped, summed over series.
    pub partitions: u64,
    /// Stored points dropped (a point rewritten after it was folded counts once per copy).
    pub points: u64,
}

/// Why data is missing on this side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// The Source's retention dropped it before it was delivered.
    Retention,
    /// It arrived for a resource this connector did not get within the retention.
    PendingExpired,
    /// Its value does not fit this connector's resource format.
    Format,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::Retention => "retention",
            GapReason::PendingExpired => "pending_expired",
            GapReason::Format => "format",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Retention, Self::PendingExpired, Self::Format]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// A recorded loss of one resource's data (docs/api.md `Gap`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapRow {
    pub resource: ResourceName,
    pub devices: u64,
    pub points: u64,
    pub from_us: i64,
    pub until_us: i64,
    pub detected_at: i64,
    /// The Source's stream range, for retention losses.
    pub seqs: Option<(u64, u64)>,
    pub reason: GapReason,
}

/// Points kept for a resource this side does not have yet, summed (`Store::sync_waiting`):
/// creating the resource applies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingResource {
    pub resource: ResourceName,
    /// The format of the values waiting (of the newest kind when they differ).
    pub format: proto::model::Format,
    pub points: u64,
    pub devices: u64,
    /// Times of the oldest and newest point, µs.
    pub from_us: i64,
    pub until_us: i64,
    /// When the first of them arrived (the site's clock, µs): retention drops them from then.
    pub since: i64,
}

// ---------------------------------------------------------------------------------------
// Alarms (docs/api.md, "Alarms").

/// What an alarm watches on a paired connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlarmKind {
    /// The oldest record not yet applied on the Target is too old (the backlog's age).
    Lag,
    /// Too many records wait for delivery.
    Backlog,
    /// The encrypted session with the peer has been down too long.
    Unreachable,
    /// Retention dropped undelivered data: a new gap.
    Gap,
}

impl AlarmKind {
    pub const ALL: [AlarmKind; 4] = [Self::Lag, Self::Backlog, Self::Unreachable, Self::Gap];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lag => "lag",
            Self::Backlog => "backlog",
            Self::Unreachable => "unreachable",
            Self::Gap => "gap",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A connector's alarm thresholds as stored; `None` turns that alarm off. What a connector
/// without stored thresholds gets is the site's business (its defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AlarmSettings {
    pub lag_seconds: Option<u64>,
    pub backlog_points: Option<u64>,
    pub unreachable_seconds: Option<u64>,
    pub gap_points: Option<u64>,
}

/// An alarm to record as raised (`Store::raise_alarm`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewAlarm {
    pub connector: ConnectorId,
    pub kind: AlarmKind,
    /// µs since the epoch.
    pub raised_at: i64,
    /// The figure that crossed the threshold, in the threshold's unit.
    pub value: f64,
    pub threshold: u64,
    /// What happened, in a sentence for humans.
    pub message: String,
}

/// A raised alarm, active (`cleared_at` is `None`) or cleared.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmRow {
    /// Increasing with every raise: newer alarms have larger ids.
    pub id: i64,
    pub connector: ConnectorId,
    pub kind: AlarmKind,
    pub raised_at: i64,
    pub cleared_at: Option<i64>,
    pub value: f64,
    pub threshold: u64,
    pub message: String,
}

/// Which alarms `Store::alarms` lists: newest first, those with an id below `before` (a
/// page's cursor), at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AlarmQuery {
    pub connector: Option<ConnectorId>,
    /// `Some(true)`: only active ones; `Some(false)`: only cleared ones.
    pub active: Option<bool>,
    pub before: Option<i64>,
    pub limit: usize,
}

/// Microseconds since the Unix epoch, from the system clock: the reading of the wall clock
/// of [`Clock::system`] and of the site (`site::clock` re-exports it). The hub, which does
/// not depend on the store, keeps its own three lines.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The wall clock the store stamps outbox appends with (µs since the epoch). The site passes
/// its own, which a test-only flag can move forward, so that retention can be tested
/// without waiting 30 days.
#[derive(Clone)]
pub struct Clock(std::sync::Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    pub fn new(f: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(f))
    }

    /// The system clock.
    pub fn system() -> Self {
        Self::new(now_micros)
    }

    pub fn now(&self) -> i64 {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}
