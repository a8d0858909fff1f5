//! Time series: an append-only point log, its in-memory tail index, and per-series
//! compressed blocks the log is folded into. Schema: `migrations/0006_point_log.sql` and
//! `0008_point_batches.sql`; design: `docs/sync.md` ("Storage").
//!
//! ```text
//!  ingest / apply job ──▶ `append`: LOG + Op::Put (thread-local) dropped with a refused job
//!                         (a remote-synced point of a paired Source: its outbox record
//!                          instead, replayed from `sync_out.folded` on; see `put`)
//!  writer, job done ──▶ `flush_log`: INSERT INTO point_batches   one row per job (plain)
//!  writer, after COMMIT ──▶ ops applied to the Tail (RwLock)     then callers hear back
//!  writer, active part ≥ fold_points ──▶ freeze it (Frozen: log pos and outbox heads it
//!                                        covers) ──▶ compactor: `encode` (no database)
//!  compactor ──install job──▶ `install`: point_blocks (bucket, device, resource, gen) +
//!                             series_buckets + latest, DELETE FROM point_batches up to its
//!                             pos, sync_out.folded to its heads; Op::Installed at COMMIT
//!  read ──▶ lock Tail, first statement (the snapshot), copy the tail's part, unlock
//!           ──▶ blocks of the series' buckets in range, merged (later gen wins), tail wins
//!  retention ──▶ `expire_blocks`: DELETE … WHERE bucket < cutoff's, on point_blocks and
//!                series_buckets (two range deletes; the Tail and `latest` untouched)
//! ```
//!
//! Invariants:
//! - Every point of an acknowledged commit is in the log or in `point_blocks`, never
//!   lost between them: an install (or a fold) writes the blocks and deletes the log in one
//!   transaction.
//! - The Tail holds exactly the points of the log (`point_batches`; `point_log` is empty
//!   once open) and the outbox point records above
//!   `sync_out.folded` that are not copies (a backfill's re-queued records are), one value
//!   per `(device, resource, t)` and part (the latest written); it is rebuilt from both on
//!   open. A series' unfolded points are all in one of the two ([`fold_unfolded_outbox`] runs inside a job before anything would break that).
//! - For a repeated `(device, resource, t)` the last write wins in every read: the tail over
//!   blocks, a later part of the tail over an earlier one, a later block generation over an
//!   earlier one (generations grow per series and bucket; frozen parts are installed in the
//!   order they were frozen, a part that a fold of everything took is never installed).
//! - A reader takes the Tail's lock before its transaction's first statement and copies what
//!   it needs before releasing it; the writer removes a part only after its install (or a
//!   fold) committed, under the write lock. So a reader either sees the fold in its
//!   snapshot or finds the folded points still in the Tail: never neither.
//!
//! Deliberately absent: any database access by the compactor (it encodes from memory; the
//! writer's connection installs), and a second write connection (SQLite has one writer).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use proto::model::{ConnectorId, Format, Identity, ResourceName, Value};
use proto::sync::{Record, codec};
use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, params};

use super::{backend, value_from_sql, value_to_sql};
use crate::{LiveBatch, LivePoint, Order, Point, Result, StoreError};

/// Length of a block's time bucket, µs (one hour).
pub(super) const BUCKET_US: i64 = 3_600_000_000;
/// Most points in one block; a fold splits longer runs of a series' bucket.
const MAX_BLOCK_POINTS: usize = 1024;

/// One series of a part, one value per `t` (the latest written). Points mostly arrive in
/// time order, so they are kept in a vector, 40 bytes a point (a `BTreeMap` took about
/// twice that: its nodes are half full when filled in order); one older than the series'
/// newest and not already held goes to `late`, so that no write shifts the vector.
/// Invariants: `sorted` ascends; every `t` of `late` is below the last of `sorted` and in
/// no entry of it.
#[derive(Default)]
struct Series {
    sorted: Vec<(i64, Value)>,
    late: BTreeMap<i64, Value>,
}

impl Series {
    /// Stores `value` at `t`; whether `t` is new to the series.
    fn insert(&mut self, t: i64, value: Value) -> bool {
        match self.sorted.last() {
            Some((last, _)) if *last >= t => {}
            _ => {
                self.sorted.push((t, value));
                return true;
            }
        }
        match self.sorted.binary_search_by_key(&t, |(t, _)| *t) {
            Ok(i) => {
                self.sorted[i].1 = value;
                false
            }
            Err(_) => self.late.insert(t, value).is_none(),
        }
    }

    fn len(&self) -> usize {
        self.sorted.len() + self.late.len()
    }

    fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The newest point.
    fn last(&self) -> Option<(&i64, &Value)> {
        self.sorted.last().map(|(t, v)| (t, v))
    }

    /// Every point, ascending.
    fn iter(&self) -> impl Iterator<Item = (&i64, &Value)> {
        let mut a = self.sorted.iter().map(|(t, v)| (t, v)).peekable();
        let mut b = self.late.iter().peekable();
        std::iter::from_fn(move || match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if y.0 < x.0 => b.next(),
            (Some(_), _) => a.next(),
            (None, _) => b.next(),
        })
    }

    /// The first `limit` points with `lo <= t < hi`, in `order`.
    fn range(&self, lo: i64, hi: i64, order: Order, limit: usize) -> Vec<(i64, Value)> {
        let from = self.sorted.partition_point(|(t, _)| *t < lo);
        let to = self.sorted.partition_point(|(t, _)| *t < hi);
        let sorted = &self.sorted[from..to];
        let late = self.late.range(lo..hi).map(|(t, v)| (*t, v.clone()));
        if self.late.is_empty() {
            let points = sorted.iter().cloned();
            return match order {
                Order::Asc => points.take(limit).collect(),
                Order::Desc => points.rev().take(limit).collect(),
            };
        }
        let merged: BTreeMap<i64, Value> = match order {
            Order::Asc => sorted
                .iter()
                .take(limit)
                .cloned()
                .chain(late.take(limit))
                .collect(),
            Order::Desc => sorted
                .iter()
                .rev()
                .take(limit)
                .cloned()
                .chain(late.rev().take(limit))
                .collect(),
        };
        match order {
            Order::Asc => merged.into_iter().take(limit).collect(),
            Order::Desc => merged.into_iter().rev().take(limit).collect(),
        }
    }

    /// Gives back the room a vector grew for more points: a frozen part takes none.
    fn shrink_to_fit(&mut self) {
        self.sorted.shrink_to_fit();
    }
}

/// Points of one part of the tail, indexed by device, resource and time (one value per
/// `(device, resource, t)`: the latest written).
///
/// Invariant: `resources` lists, per device, exactly the resources of its entries in
/// `series`, each once.
#[derive(Default)]
pub(super) struct Part {
    /// foldhash, not SipHash: a point's put is a lookup by row ids (integers its own site
    /// assigned), the writer's largest self time in a Target's profile. One table keyed by
    /// both, a series in its entry (64 bytes): a table per device cost each put one more
    /// cache miss, a thousand of them for a Target's request of a thousand devices.
    series: foldhash::HashMap<(i64, i64), Series>,
    /// The resources of each device with a series here: reads of one device, forgetting one.
    resources: foldhash::HashMap<i64, smallvec::SmallVec<[i64; 4]>>,
    points: usize,
}

impl Part {
    fn put(&mut self, device: i64, resource: i64, t: i64, value: Value) {
        let series = match self.series.entry((device, resource)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                self.resources.entry(device).or_default().push(resource);
                e.insert(Series::default())
            }
        };
        if series.insert(t, value) {
            self.points += 1;
        }
    }

    /// Loads the entry and the last point of each series that `ops` put into, in a loop
    /// that does nothing else, so that the processor overlaps the cache misses: a commit's
    /// thousand series are cold again by the next one, and `put` took the misses one after
    /// another (9 % of a Target's samples, after its commit; on a Source, before its answer).
    fn warm(&self, ops: &[Op]) {
        let mut seen = 0i64;
        for op in ops {
            if let Op::Put {
                device, resource, ..
            } = op
                && let Some(series) = self.series.get(&(*device, *resource))
                && let Some((t, _)) = series.sorted.last()
            {
                seen ^= *t;
            }
        }
        std::hint::black_box(seen);
    }

    fn forget(&mut self, device: i64) {
        for resource in self.resources.remove(&device).unwrap_or_default() {
            if let Some(gone) = self.series.remove(&(device, resource)) {
                self.points -= gone.len();
            }
        }
    }

    fn forget_resource(&mut self, resource: i64) {
        let points = &mut self.points;
        self.series.retain(|(_, r), s| {
            if *r == resource {
                *points -= s.len();
            }
            *r != resource
        });
        self.resources.retain(|_, rs| {
            rs.retain(|r| *r != resource);
            !rs.is_empty()
        });
    }

    /// Every series: `(device, resource, its points)`.
    fn all(&self) -> impl Iterator<Item = (i64, i64, &Series)> {
        self.series.iter().map(|((d, r), s)| (*d, *r, s))
    }

    /// The series of a device: `(resource, its points)`.
    fn of_device(&self, device: i64) -> impl Iterator<Item = (i64, &Series)> {
        self.resources
            .get(&device)
            .into_iter()
            .flatten()
            .filter_map(move |r| Some((*r, self.series.get(&(device, *r))?)))
    }

    /// Every point of `other` over this part's (the later write wins).
    fn overlay(&mut self, other: &Part) {
        for (device, resource, series) in other.all() {
            for (t, v) in series.iter() {
                self.put(device, resource, *t, v.clone());
            }
        }
    }

    /// The first `limit` points of a series with `lo <= t < hi`, in `order`.
    fn range(
        &self,
        device: i64,
        resource: i64,
        (lo, hi): (i64, i64),
        order: Order,
        limit: usize,
    ) -> Vec<(i64, Value)> {
        let Some(series) = self.series.get(&(device, resource)) else {
            return Vec::new();
        };
        if lo >= hi {
            return Vec::new();
        }
        series.range(lo, hi, order, limit)
    }

    /// Gives back the room its maps and vectors grew for more points (a part being frozen
    /// takes no more).
    fn shrink_to_fit(&mut self) {
        for series in self.series.values_mut() {
            series.shrink_to_fit();
        }
        self.series.shrink_to_fit();
        self.resources.shrink_to_fit();
    }
}

/// Per connector, an outbox seq.
pub(super) type OutboxHeads = Vec<(String, i64)>;

/// A part of the tail handed to the compactor (`compactor` in `mod.rs`): what installing
/// its fold removes from the log.
pub(super) struct Frozen {
    pub(super) id: u64,
    pub(super) part: Arc<Part>,
    /// The highest `point_batches` position whose row it holds.
    pub(super) log_upto: Option<i64>,
    /// Per connector, the outbox seq up to which it holds the records (`sync_out.head`
    /// when it was frozen).
    pub(super) outbox: OutboxHeads,
}

impl Frozen {
    /// The same part, for the compactor.
    pub(super) fn share(&self) -> Self {
        Self {
            id: self.id,
            part: Arc::clone(&self.part),
            log_upto: self.log_upto,
            outbox: self.outbox.clone(),
        }
    }
}

/// The not-yet-folded points: the active part, which commits add to, and the parts frozen
/// for the compactor, oldest first. A later part wins over an earlier one on a repeated
/// `(device, resource, t)`.
#[derive(Default)]
pub(super) struct Tail {
    frozen: Vec<Frozen>,
    active: Part,
    next_id: u64,
}

impl Tail {
    /// Points held, frozen ones included (one per distinct `(device, resource, t)` of a part).
    pub(super) fn len(&self) -> usize {
        self.active.points + self.frozen.iter().map(|f| f.part.points).sum::<usize>()
    }

    /// Points of the active part.
    pub(super) fn active_len(&self) -> usize {
        self.active.points
    }

    /// Freezes the active part for the compactor (`log_upto` and `outbox`: what the
    /// committed log holds now, all of it in the tail) and returns it; a new active part
    /// starts empty.
    pub(super) fn freeze(&mut self, log_upto: Option<i64>, outbox: OutboxHeads) -> Frozen {
        self.next_id += 1;
        let mut part = std::mem::take(&mut self.active);
        part.shrink_to_fit();
        let frozen = Frozen {
            id: self.next_id,
            part: Arc::new(part),
            log_upto,
            outbox,
        };
        let shared = frozen.share();
        self.frozen.push(frozen);
        shared
    }

    fn parts(&self) -> impl Iterator<Item = &Part> {
        self.frozen
            .iter()
            .map(|f| &*f.part)
            .chain(std::iter::once(&self.active))
    }

    /// Every point of every part in one part (the later part wins).
    fn merged(&self) -> Part {
        let mut merged = Part::default();
        for part in self.parts() {
            merged.overlay(part);
        }
        merged
    }

    fn apply(&mut self, ops: Vec<Op>) {
        self.active.warm(&ops);
        for op in ops {
            match op {
                Op::Put {
                    device,
                    resource,
                    t,
                    value,
                } => self.active.put(device, resource, t, value),
                // A device is deleted only with no part frozen (`delete_device`).
                Op::Forget(device) => self.active.forget(device),
                // Likewise a resource (`delete_resource`).
                Op::ForgetResource(resource) => self.active.forget_resource(resource),
                Op::Folded => {
                    self.frozen.clear();
                    self.active = Part::default();
                }
                Op::Installed(id) => self.frozen.retain(|f| f.id != id),
            }
        }
    }

    /// The first `limit` points of a series with `lo <= t < hi`, in `order`, over all parts.
    fn range(
        &self,
        device: i64,
        resource: i64,
        window: (i64, i64),
        order: Order,
        limit: usize,
    ) -> Vec<(i64, Value)> {
        // The first `limit` of the union are among the first `limit` of each part.
        let mut merged: BTreeMap<i64, Value> = BTreeMap::new();
        for part in self.parts() {
            merged.extend(part.range(device, resource, window, order, limit));
        }
        let points = merged.into_iter();
        match order {
            Order::Asc => points.take(limit).collect(),
            Order::Desc => points.rev().take(limit).collect(),
        }
    }

    /// The timestamps of a resource's points in the tail, per device (every part).
    pub(super) fn times(&self, resource: i64) -> HashMap<i64, BTreeSet<i64>> {
        let mut out: HashMap<i64, BTreeSet<i64>> = HashMap::new();
        for part in self.parts() {
            for (device, r, s) in part.all() {
                if r == resource {
                    out.entry(device)
                        .or_default()
                        .extend(s.iter().map(|(t, _)| *t));
                }
            }
        }
        out
    }

    /// The time of each device's newest tail point, over the resources `keep` accepts (the
    /// device list's last seen; readers only: the writer's open transaction is not looked at).
    pub(super) fn newest_times(&self, keep: impl Fn(i64) -> bool) -> HashMap<i64, i64> {
        let mut out: HashMap<i64, i64> = HashMap::new();
        for part in self.parts() {
            for (device, r, s) in part.all() {
                if let Some((&t, _)) = s.last().filter(|_| keep(r)) {
                    let slot = out.entry(device).or_insert(t);
                    *slot = (*slot).max(t);
                }
            }
        }
        out
    }

    /// The newest tail point of each resource of a device, with the puts of the writer's
    /// current transaction over them (none outside the writer thread).
    pub(super) fn newest(&self, device: i64) -> HashMap<i64, (i64, Value)> {
        let mut out: HashMap<i64, (i64, Value)> = HashMap::new();
        for part in self.parts() {
            for (r, s) in part.of_device(device) {
                if let Some((t, v)) = s.last()
                    && out.get(&r).is_none_or(|(old, _)| t >= old)
                {
                    out.insert(r, (*t, v.clone()));
                }
            }
        }
        OPS.with_borrow(|ops| {
            for op in ops {
                match op {
                    Op::Put {
                        device: d,
                        resource,
                        t,
                        value,
                    } if *d == device && out.get(resource).is_none_or(|(old, _)| t >= old) => {
                        out.insert(*resource, (*t, value.clone()));
                    }
                    Op::Forget(d) if *d == device => out.clear(),
                    Op::ForgetResource(r) => {
                        out.remove(r);
                    }
                    // Folded points are in `latest` now, with the same values.
                    _ => {}
                }
            }
        });
        out
    }
}

/// A change of the Tail, made by a job and applied once its commit is durable.
pub(super) enum Op {
    Put {
        device: i64,
        resource: i64,
        t: i64,
        value: Value,
    },
    Forget(i64),
    /// Every point of a resource (by row id) was deleted.
    ForgetResource(i64),
    /// Everything before it in the transaction, and the committed tail, was folded.
    Folded,
    /// The fold of a frozen part was installed (`install`).
    Installed(u64),
}

thread_local! {
    /// The Tail changes of the writer's open transaction, in order.
    static OPS: RefCell<Vec<Op>> = const { RefCell::new(Vec::new()) };
    /// The points of the open transaction for the live stream, while anyone listens.
    static LIVE: RefCell<Live> = const { RefCell::new(Live::new()) };
    /// Whether anyone listens to the live stream (set by the writer per transaction).
    static LISTENED: Cell<bool> = const { Cell::new(false) };
    /// The points the current job appended, written as its one log row when it ends
    /// ([`flush_log`]).
    static LOG: RefCell<Vec<LogPoint>> = const { RefCell::new(Vec::new()) };
    /// The writer's codec encoder, kept from one job to the next ([`encode_row`]).
    static ENCODER: RefCell<codec::Encoder> = RefCell::new(codec::Encoder::new());
}

/// Rows whose records are estimated larger than this get an encoder of their own, so that
/// the writer's keeps no buffer of a rare large request (up to the codec's 16 MiB).
const KEPT_ENCODER_BYTES: usize = 1 << 20;

/// Encodes the records of a log or outbox row with the writer's encoder, kept for the
/// thread's life: a fresh one per job allocated a zstd context each time, which costs more
/// than encoding a request's points. Writer thread (or any one thread) only.
pub(super) fn encode_row(records: &[Record]) -> std::result::Result<Vec<u8>, codec::CodecError> {
    let size: usize = records.iter().map(Record::estimated_size).sum();
    if size > KEPT_ENCODER_BYTES {
        return codec::Encoder::new().encode(records);
    }
    ENCODER.with_borrow_mut(|e| e.encode(records))
}

/// The live points of the open transaction, already one batch per run of a connector (a
/// connector's id is copied once a batch, not once a point).
struct Live {
    batches: Vec<LiveBatch>,
    /// Points in all batches.
    points: usize,
}

impl Live {
    const fn new() -> Self {
        Self {
            batches: Vec::new(),
            points: 0,
        }
    }

    fn push(&mut self, cid: &ConnectorId, point: LivePoint) {
        match self.batches.last_mut() {
            Some(b) if &b.connector == cid => b.points.push(point),
            _ => self.batches.push(LiveBatch {
                connector: cid.clone(),
                points: vec![point],
                devices: Vec::new(),
            }),
        }
        self.points += 1;
    }

    /// Keeps the first `n` points.
    fn truncate(&mut self, n: usize) {
        while self.points > n {
            let Some(last) = self.batches.last_mut() else {
                break;
            };
            let excess = self.points - n;
            if last.points.len() <= excess {
                self.points -= last.points.len();
                self.batches.pop();
            } else {
                last.points.truncate(last.points.len() - excess);
                self.points = n;
            }
        }
    }
}

/// Where the current job's changes start (to drop them if its savepoint rolls back).
pub(super) fn mark() -> (usize, usize) {
    (OPS.with_borrow(Vec::len), LIVE.with_borrow(|l| l.points))
}

/// Drops the changes of a job whose savepoint rolled back.
pub(super) fn rollback_to((ops, live): (usize, usize)) {
    OPS.with_borrow_mut(|o| o.truncate(ops));
    LIVE.with_borrow_mut(|l| l.truncate(live));
    LOG.with_borrow_mut(Vec::clear);
}

/// The changes of the transaction just ended (empty them whether it committed or not).
pub(super) fn take_ops() -> Vec<Op> {
    OPS.with_borrow_mut(std::mem::take)
}

/// Starts a transaction's collection of live points, if anyone listens.
pub(super) fn listen(on: bool) {
    LISTENED.set(on);
}

/// Whether anyone listens to the live stream during this transaction (`audit.rs` collects
/// device changes for it too).
pub(super) fn listening() -> bool {
    LISTENED.get()
}

/// The live points of the transaction just ended, one batch per run of a connector.
pub(super) fn take_live() -> Vec<LiveBatch> {
    LIVE.with_borrow_mut(|l| {
        l.points = 0;
        std::mem::take(&mut l.batches)
    })
}

/// Applies a committed transaction's changes to the Tail. `announce` (the live stream's
/// send) runs first, under the Tail's write lock: whoever it tells of the commit does not
/// wait for the changes to learn of it, and a read it then makes takes the lock after them,
/// so it finds them (as a caller that heard back does).
pub(super) fn apply(tail: &RwLock<Tail>, ops: Vec<Op>, announce: impl FnOnce()) {
    if ops.is_empty() {
        announce();
        return;
    }
    match tail.write() {
        Ok(mut tail) => {
            announce();
            tail.apply(ops);
        }
        Err(_) => announce(),
    }
}

/// The names of a point's series, for the live stream. A caller that owns them (a
/// Target's apply, which decoded them) hands them over: a live point then takes them
/// without a copy.
pub(super) type Names<'a> = (
    &'a ConnectorId,
    std::borrow::Cow<'a, Identity>,
    std::borrow::Cow<'a, ResourceName>,
);

/// Appends one point to the current job's log row (written when the job ends, see
/// [`flush_log`]) and queues it for the Tail (and the live stream).
pub(super) fn append(
    _conn: &Connection,
    (device, resource): (i64, i64),
    names: Names<'_>,
    t: i64,
    value: Value,
) -> Result<()> {
    // Row ids are never negative; a log row keeps them unsigned.
    let row_id = |id: i64| {
        u64::try_from(id).map_err(|e| StoreError::Backend {
            op: "appending points",
            source: Box::new(e),
        })
    };
    let point = LogPoint {
        device: row_id(device)?,
        resource: row_id(resource)?,
        t,
        value: value.clone(),
    };
    LOG.with_borrow_mut(|l| l.push(point));
    put((device, resource), names, t, value);
    Ok(())
}

/// A point of the log row being written, its device and resource by row id.
struct LogPoint {
    device: u64,
    resource: u64,
    t: i64,
    value: Value,
}

impl LogPoint {
    /// About the bytes it takes in a row.
    fn size(&self) -> usize {
        match &self.value {
            Value::String(s) | Value::Json(s) => 24 + s.len(),
            _ => 24,
        }
    }
}

/// Writes the points the current job appended as its log row(s) in `point_batches`, in
/// the job's savepoint; nothing when it appended none. Called by the writer after each job
/// that succeeded: a failure fails that job alone.
pub(super) fn flush_log(conn: &Connection) -> Result<()> {
    let mut points = LOG.with_borrow_mut(std::mem::take);
    let written = write_log(conn, &points);
    // The next job's points go into the same room, unless a rare large request grew it.
    if points.capacity() <= KEPT_LOG_POINTS {
        points.clear();
        LOG.set(points);
    }
    written
}

/// Points of the log buffer's room kept from one job to the next ([`flush_log`]).
const KEPT_LOG_POINTS: usize = 16_384;

/// Most bytes of one log row: a job's points past it go into further rows, in order.
const LOG_ROW_BYTES: usize = 4 << 20;

/// Writes `points` as log row(s) (none when empty), in the codec's plain layout: no
/// sorting, columns or compression on the writer, where the batch layout took a Target's
/// apply of 1,000 points 0.2 ms (docs/benchmarks.md, "Latency, session 10"). Log rows are
/// read only by [`replay`]; the fold compresses their points into blocks.
fn write_log(conn: &Connection, points: &[LogPoint]) -> Result<()> {
    let op = "appending points";
    let mut rest = points;
    while !rest.is_empty() {
        let mut bytes = 0;
        let n = rest
            .iter()
            .take_while(|p| {
                bytes += p.size();
                bytes <= LOG_ROW_BYTES
            })
            .count()
            .max(1);
        let (row, later) = rest.split_at(n);
        rest = later;
        // `bytes` counted the row's points (and the one after, if the row was cut).
        let mut data = Vec::with_capacity(16 + bytes);
        codec::encode_plain(
            row.iter().map(|p| (p.device, p.resource, p.t, &p.value)),
            &mut data,
        );
        conn.prepare_cached("INSERT INTO point_batches (data) VALUES (?1)")
            .and_then(|mut s| s.execute([data]))
            .map_err(backend(op))?;
    }
    Ok(())
}

/// Queues a point for the Tail (and the live stream) whose durable copy the caller wrote
/// elsewhere in its transaction: a remote-synced point's outbox record.
pub(super) fn put((device, resource): (i64, i64), names: Names<'_>, t: i64, value: Value) {
    if LISTENED.get() {
        let (cid, identity, name) = names;
        LIVE.with_borrow_mut(|l| {
            l.push(
                cid,
                LivePoint {
                    device: identity.into_owned(),
                    resource: name.into_owned(),
                    t,
                    v: value.clone(),
                },
            )
        });
    }
    OPS.with_borrow_mut(|ops| {
        ops.push(Op::Put {
            device,
            resource,
            t,
            value,
        })
    });
}

thread_local! {
    /// The writer's Tail (set once on the writer thread), for folds inside a job.
    static CURRENT_TAIL: RefCell<Option<Arc<RwLock<Tail>>>> = const { RefCell::new(None) };
}

/// Makes the writer's Tail reachable from its jobs (called once on the writer thread).
pub(super) fn set_current_tail(tail: Arc<RwLock<Tail>>) {
    CURRENT_TAIL.set(Some(tail));
}

/// Whether some connector's outbox holds points not folded yet.
fn outbox_unfolded(conn: &Connection) -> Result<bool> {
    conn.prepare_cached("SELECT 1 FROM sync_out WHERE folded < head")
        .and_then(|mut s| s.exists([]))
        .map_err(backend("reading the fold position"))
}

/// Folds everything unfolded (the committed tail and this transaction's points so far)
/// inside the caller's job, if some outbox holds unfolded points: called before a change
/// that would otherwise leave a series' unfolded points in both the log and the outbox, or
/// drop outbox records whose points exist nowhere else. The Tail is emptied when the
/// transaction commits (`Op::Folded`); a rolled-back job takes its fold with it.
pub(super) fn fold_unfolded_outbox(conn: &Connection) -> Result<()> {
    if !outbox_unfolded(conn)? {
        return Ok(());
    }
    fold_now(conn)
}

/// Folds everything unfolded, the committed tail (frozen parts included: their pending
/// installs are then skipped) and this transaction's points so far, inside the caller's
/// job; the Tail is emptied when the transaction commits (`Op::Folded`).
pub(super) fn fold_now(conn: &Connection) -> Result<()> {
    let shared = CURRENT_TAIL.with_borrow(Clone::clone);
    let mut merged = match shared {
        Some(shared) => shared.read().map_err(|_| StoreError::Closed)?.merged(),
        None => Part::default(),
    };
    OPS.with_borrow(|ops| {
        for op in ops {
            match op {
                Op::Put {
                    device,
                    resource,
                    t,
                    value,
                } => merged.put(*device, *resource, *t, value.clone()),
                Op::Forget(device) => merged.forget(*device),
                Op::ForgetResource(resource) => merged.forget_resource(*resource),
                Op::Folded => merged = Part::default(),
                // Its points are in blocks now; folding them again changes no value.
                Op::Installed(_) => {}
            }
        }
    });
    fold(conn, &merged, None)?;
    OPS.with_borrow_mut(|ops| ops.push(Op::Folded));
    // The job's points so far are folded: no log row for them.
    LOG.with_borrow_mut(Vec::clear);
    Ok(())
}

/// Installs the compactor's fold of a frozen part in the caller's job: its blocks and
/// `latest`, its log rows deleted, its outbox records marked folded. Returns `false` (and
/// changes nothing) when the part is no longer pending: a fold of everything (`fold_now`)
/// took it, committed or earlier in this transaction.
pub(super) fn install(conn: &Connection, frozen: &Frozen, encoded: &Encoded) -> Result<bool> {
    let op = "installing a fold";
    let folded_here = OPS.with_borrow(|ops| ops.iter().any(|o| matches!(o, Op::Folded)));
    let shared = CURRENT_TAIL.with_borrow(Clone::clone);
    let pending = match shared {
        Some(shared) => shared
            .read()
            .map_err(|_| StoreError::Closed)?
            .frozen
            .iter()
            .any(|f| f.id == frozen.id),
        None => false,
    };
    if folded_here || !pending {
        return Ok(false);
    }
    write_encoded(conn, encoded)?;
    if let Some(pos) = frozen.log_upto {
        conn.prepare_cached("DELETE FROM point_batches WHERE pos <= ?1")
            .and_then(|mut s| s.execute([pos]))
            .map_err(backend(op))?;
    }
    for (cid, head) in &frozen.outbox {
        conn.prepare_cached("UPDATE sync_out SET folded = ?2 WHERE connector = ?1 AND folded < ?2")
            .and_then(|mut s| s.execute(params![cid, head]))
            .map_err(backend(op))?;
    }
    #[cfg(test)]
    super::crash_tests::failpoint("fold");
    OPS.with_borrow_mut(|ops| ops.push(Op::Installed(frozen.id)));
    Ok(true)
}

/// What a fold of the log holds now (read by the writer between transactions, when it
/// freezes the active part): the highest log position, and each outbox head with records
/// not folded yet.
pub(super) fn log_extent(conn: &Connection) -> Result<(Option<i64>, OutboxHeads)> {
    let op = "measuring the point log";
    let upto: Option<i64> = conn
        .prepare_cached("SELECT MAX(pos) FROM point_batches")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(backend(op))?;
    let outbox = super::select_rows(
        conn,
        "SELECT connector, head FROM sync_out WHERE folded < head",
        [],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
        op,
    )?;
    Ok((upto, outbox))
}

/// Deletes every point of a device: its log rows, blocks and bucket list.
pub(super) fn delete_device(conn: &Connection, device: i64) -> Result<()> {
    delete_series(conn, Owner::Device(device))
}

/// Whose series [`delete_series`] deletes.
#[derive(Clone, Copy)]
enum Owner {
    Device(i64),
    Resource(i64),
}

/// Deletes every series of a device or of a resource: its blocks and bucket lists, and
/// tells the Tail to forget it. Its unfolded outbox records stay (they are still sent):
/// folded first, they are not replayed as the points of a later device or resource of the
/// same row id. A part frozen for the compactor is folded too: its install would bring the
/// points back. The log's rows hold many series' points: everything is folded first (its
/// blocks of this owner go below), so no row of the log holds its points either.
fn delete_series(conn: &Connection, owner: Owner) -> Result<()> {
    let (op, column, id, forget) = match owner {
        Owner::Device(d) => ("deleting a device's points", "device", d, Op::Forget(d)),
        Owner::Resource(r) => (
            "deleting a resource's points",
            "resource",
            r,
            Op::ForgetResource(r),
        ),
    };
    fold_now(conn)?;
    let series = super::select_rows(
        conn,
        &format!("SELECT device, resource, bucket FROM series_buckets WHERE {column} = ?1"),
        [id],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        },
        op,
    )?;
    let mut blocks = conn
        .prepare_cached(
            "DELETE FROM point_blocks WHERE bucket = ?1 AND device = ?2 AND resource = ?3",
        )
        .map_err(backend(op))?;
    for (device, resource, bucket) in series {
        blocks
            .execute(params![bucket, device, resource])
            .map_err(backend(op))?;
    }
    conn.prepare_cached(&format!("DELETE FROM series_buckets WHERE {column} = ?1"))
        .and_then(|mut s| s.execute([id]))
        .map_err(backend(op))?;
    OPS.with_borrow_mut(|ops| ops.push(forget));
    Ok(())
}

/// Retention of stored points: drops every bucket of blocks that ends at or before `before`
/// (µs), as two range deletes on the bucket (`point_blocks` is keyed bucket first,
/// `series_buckets` has an index on it: migration 0014), never a look at each series. The
/// Tail is not touched: its points of those buckets are dropped by a pass after their fold.
/// `latest` stays (the newest value of a series outlives its history).
pub(super) fn expire_blocks(conn: &Connection, before: i64) -> Result<crate::PointsExpiry> {
    let op = "dropping expired points";
    // Buckets below this one end at or before `before`.
    let first_kept = before.div_euclid(BUCKET_US);
    let mut points: u64 = 0;
    let mut blocks = conn
        .prepare_cached("DELETE FROM point_blocks WHERE bucket < ?1 RETURNING n")
        .map_err(backend(op))?;
    let mut rows = blocks.query([first_kept]).map_err(backend(op))?;
    while let Some(r) = rows.next().map_err(backend(op))? {
        points += u64::try_from(r.get::<_, i64>(0).map_err(backend(op))?).unwrap_or(0);
    }
    drop(rows);
    let partitions = conn
        .prepare_cached("DELETE FROM series_buckets WHERE bucket < ?1")
        .and_then(|mut s| s.execute([first_kept]))
        .map_err(backend(op))?;
    Ok(crate::PointsExpiry {
        partitions: partitions as u64,
        points,
    })
}

/// The `(device, resource, t)` of every point the Tail will hold once the writer's open
/// transaction commits (the committed Tail with this transaction's changes so far). Writer
/// thread only; for the model test, which must know what a retention pass leaves alone.
#[cfg(test)]
pub(super) fn unfolded_at_commit() -> std::collections::BTreeSet<(i64, i64, i64)> {
    use std::collections::BTreeSet;
    let keys = |part: &Part| -> BTreeSet<(i64, i64, i64)> {
        part.all()
            .flat_map(|(d, r, s)| s.iter().map(move |(t, _)| (d, r, *t)))
            .collect()
    };
    let (mut frozen, mut active): (Vec<(u64, BTreeSet<_>)>, BTreeSet<_>) =
        match CURRENT_TAIL.with_borrow(Clone::clone) {
            Some(tail) => {
                let tail = tail.read().expect("the tail's lock");
                (
                    tail.frozen.iter().map(|f| (f.id, keys(&f.part))).collect(),
                    keys(&tail.active),
                )
            }
            None => (Vec::new(), BTreeSet::new()),
        };
    OPS.with_borrow(|ops| {
        for op in ops {
            match op {
                Op::Put {
                    device,
                    resource,
                    t,
                    ..
                } => {
                    active.insert((*device, *resource, *t));
                }
                Op::Forget(device) => {
                    for (_, part) in &mut frozen {
                        part.retain(|k| k.0 != *device);
                    }
                    active.retain(|k| k.0 != *device);
                }
                Op::ForgetResource(resource) => {
                    for (_, part) in &mut frozen {
                        part.retain(|k| k.1 != *resource);
                    }
                    active.retain(|k| k.1 != *resource);
                }
                Op::Folded => {
                    frozen.clear();
                    active.clear();
                }
                Op::Installed(id) => frozen.retain(|f| f.0 != *id),
            }
        }
    });
    frozen.into_iter().flat_map(|f| f.1).chain(active).collect()
}

/// Deletes every point of a resource: its log rows, blocks and bucket lists, as
/// [`delete_device`] does a device's.
pub(super) fn delete_resource(conn: &Connection, resource: i64) -> Result<()> {
    delete_series(conn, Owner::Resource(resource))
}

/// How many distinct points of a resource the blocks and the tail hold together (`tail`:
/// its timestamps per device, copied under the Tail's lock before this read's first
/// statement), and on how many devices. Blocks are decoded only where two of a series'
/// blocks, or a block and the tail, may hold the same `t` (their time ranges overlap);
/// otherwise their point counts add up.
pub(super) fn usage(
    conn: &Connection,
    resource: i64,
    mut tail: HashMap<i64, BTreeSet<i64>>,
) -> Result<crate::ResourceUsage> {
    let op = "counting a resource's points";
    let rows = super::select_rows(
        conn,
        "SELECT s.device, s.bucket, b.t_min, b.t_max, b.n FROM series_buckets s
         JOIN point_blocks b ON b.bucket = s.bucket AND b.device = s.device
              AND b.resource = s.resource
         WHERE s.resource = ?1 ORDER BY s.device, s.bucket, b.t_min",
        [resource],
        |r| {
            Ok((
                (r.get::<_, i64>(0)?, r.get::<_, i64>(1)?),
                (
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ),
            ))
        },
        op,
    )?;
    let mut points = 0u64;
    let mut devices: HashSet<i64> = HashSet::new();
    let mut i = 0;
    while i < rows.len() {
        let ((device, bucket), _) = rows[i];
        let end = rows[i..]
            .iter()
            .position(|(key, _)| *key != (device, bucket))
            .map_or(rows.len(), |n| i + n);
        let group = &rows[i..end];
        i = end;
        let lo = group
            .iter()
            .map(|(_, (t_min, _, _))| *t_min)
            .min()
            .unwrap_or(0);
        let hi = group
            .iter()
            .map(|(_, (_, t_max, _))| *t_max)
            .max()
            .unwrap_or(0);
        let in_tail: Vec<i64> = tail
            .get_mut(&device)
            .map(|ts| {
                let inside: Vec<i64> = ts.range(lo..=hi).copied().collect();
                for t in &inside {
                    ts.remove(t);
                }
                inside
            })
            .unwrap_or_default();
        let disjoint = group.windows(2).all(|w| (w[1].1).0 > (w[0].1).1);
        let here = if disjoint && in_tail.is_empty() {
            group
                .iter()
                .map(|(_, (_, _, n))| u64::try_from(*n).unwrap_or(0))
                .sum()
        } else {
            let mut times: BTreeSet<i64> = in_tail.into_iter().collect();
            let mut stmt = conn
                .prepare_cached(
                    "SELECT data FROM point_blocks WHERE bucket = ?1 AND device = ?2 AND resource = ?3",
                )
                .map_err(backend(op))?;
            let mut data = stmt
                .query(params![bucket, device, resource])
                .map_err(backend(op))?;
            let mut decoder = codec::Decoder::new();
            while let Some(b) = data.next().map_err(backend(op))? {
                let bytes = b.get_ref(0).map_err(backend(op))?;
                let bytes = bytes.as_blob().map_err(|e| StoreError::Backend {
                    op,
                    source: Box::new(e),
                })?;
                for record in decoder.decode(bytes).map_err(codec_err(op))? {
                    if let Record::Point(p) = record {
                        times.insert(p.t);
                    }
                }
            }
            times.len() as u64
        };
        if here > 0 {
            devices.insert(device);
        }
        points += here;
    }
    for (device, ts) in tail {
        if !ts.is_empty() {
            devices.insert(device);
            points += ts.len() as u64;
        }
    }
    Ok(crate::ResourceUsage {
        points,
        devices: devices.len() as u64,
    })
}

/// Reads the rows an older version left in `point_log` up to `upto` into a part (in log
/// order, so the last write of a `t` wins). Rows of resources that no longer exist are
/// skipped.
pub(super) fn replay_legacy(conn: &Connection, upto: i64) -> Result<Part> {
    let op = "reading the point log";
    let mut stmt = conn
        .prepare(
            "SELECT l.device, l.resource, l.t, l.v, r.format FROM point_log l
             JOIN resources r ON r.id = l.resource
             WHERE l.pos <= ?1 ORDER BY l.pos",
        )
        .map_err(backend(op))?;
    let mut rows = stmt.query([upto]).map_err(backend(op))?;
    let mut part = Part::default();
    while let Some(r) = rows.next().map_err(backend(op))? {
        let format: String = r.get(4).map_err(backend(op))?;
        let format = Format::parse(&format).map_err(|e| StoreError::Backend {
            op,
            source: Box::new(e),
        })?;
        let value = value_from_sql(format, r.get_ref(3).map_err(backend(op))?);
        part.put(
            r.get(0).map_err(backend(op))?,
            r.get(1).map_err(backend(op))?,
            r.get(2).map_err(backend(op))?,
            value,
        );
    }
    Ok(part)
}

/// The position that ends the next slice of at most `n` rows of `point_log`, if it holds any.
pub(super) fn legacy_slice(conn: &Connection, n: usize) -> Result<Option<i64>> {
    conn.query_row(
        "SELECT MAX(pos) FROM (SELECT pos FROM point_log ORDER BY pos LIMIT ?1)",
        [i64::try_from(n.max(1)).unwrap_or(i64::MAX)],
        |r| r.get(0),
    )
    .map_err(backend("measuring the point log"))
}

/// Rebuilds the Tail from the point batches (in log order, so the last write of a `t`
/// wins), then the outbox records not folded yet. Points of resources that no longer exist
/// are skipped.
pub(super) fn replay(conn: &Connection) -> Result<Tail> {
    let op = "reading the point log";
    let resources: std::collections::HashSet<i64> =
        super::select_rows(conn, "SELECT id FROM resources", [], |r| r.get(0), op)?
            .into_iter()
            .collect();
    let mut tail = Tail::default();
    let mut decoder = codec::Decoder::new();
    let mut stmt = conn
        .prepare("SELECT data FROM point_batches ORDER BY pos")
        .map_err(backend(op))?;
    let mut rows = stmt.query([]).map_err(backend(op))?;
    while let Some(r) = rows.next().map_err(backend(op))? {
        let bytes = r.get_ref(0).map_err(backend(op))?;
        let bytes = bytes.as_blob().map_err(|e| StoreError::Backend {
            op,
            source: Box::new(e),
        })?;
        // A point whose names are row ids of this store; an error names them otherwise.
        let mut put = |ids: (Option<i64>, Option<i64>),
                       names: (&dyn std::fmt::Display, &dyn std::fmt::Display),
                       t,
                       value| {
            let (Some(device), Some(resource)) = ids else {
                return Err(StoreError::Backend {
                    op,
                    source: format!("a log row names {} / {}", names.0, names.1).into(),
                });
            };
            if resources.contains(&resource) {
                tail.active.put(device, resource, t, value);
            }
            Ok(())
        };
        if bytes.first() == Some(&codec::PLAIN_MARK) {
            for p in codec::decode_plain(bytes).map_err(codec_err(op))? {
                let ids = (i64::try_from(p.device).ok(), i64::try_from(p.resource).ok());
                put(ids, (&p.device, &p.resource), p.t, p.value)?;
            }
            continue;
        }
        // A row of an earlier version: the batch codec, row ids as names.
        for record in decoder.decode(bytes).map_err(codec_err(op))? {
            let Record::Point(p) = record else { continue };
            let ids = (
                p.device.as_str().parse::<i64>().ok(),
                p.resource.as_str().parse::<i64>().ok(),
            );
            put(ids, (&p.device, &p.resource), p.t, p.value)?;
        }
    }
    drop(rows);
    // The rest of the log: remote-synced points, stored as outbox records.
    super::sync::replay_unfolded(conn, |d, r, t, v| tail.active.put(d, r, t, v))?;
    Ok(tail)
}

fn codec_err(op: &'static str) -> impl FnOnce(codec::CodecError) -> StoreError {
    move |e| StoreError::Backend {
        op,
        source: Box::new(e),
    }
}

/// One block of a fold, encoded (its generation is given when it is written).
struct Block {
    bucket: i64,
    device: i64,
    resource: i64,
    t_min: i64,
    t_max: i64,
    n: i64,
    data: Vec<u8>,
}

/// A fold of a part, encoded without touching the database (the compactor's work): its
/// blocks and the newest point of each series, for `latest`.
pub(super) struct Encoded {
    blocks: Vec<Block>,
    latest: Vec<(i64, i64, i64, Value)>,
    pub(super) points: usize,
}

/// A point of a block. The codec wants a device and resource per point; a block belongs to
/// one series, named by its key, so a placeholder is all it stores of them (borrowed: a
/// fold of 65,536 points once made two `String`s of it a point).
struct BlockPoint<'a> {
    t: i64,
    value: &'a Value,
}

impl codec::PointView for BlockPoint<'_> {
    fn device(&self) -> &str {
        "_"
    }
    fn resource(&self) -> &str {
        "_"
    }
    fn t(&self) -> i64 {
        self.t
    }
    fn value(&self) -> &Value {
        self.value
    }
}

/// Encodes a part's points as blocks: per series and hour bucket, at most
/// [`MAX_BLOCK_POINTS`] each.
pub(super) fn encode(part: &Part) -> Result<Encoded> {
    let op = "folding the point log";
    let mut encoder = codec::Encoder::new();
    let mut series: Vec<(i64, i64, &Series)> =
        part.all().filter(|(_, _, s)| !s.is_empty()).collect();
    series.sort_by_key(|(d, r, _)| (*d, *r));
    let mut out = Encoded {
        blocks: Vec::new(),
        latest: Vec::with_capacity(series.len()),
        points: part.points,
    };
    let mut records = Vec::with_capacity(MAX_BLOCK_POINTS);
    for (device, resource, points) in series {
        let mut iter = points.iter().peekable();
        while let Some(&(&t0, _)) = iter.peek() {
            let bucket = t0.div_euclid(BUCKET_US);
            records.clear();
            while let Some(&(&t, v)) = iter.peek() {
                if t.div_euclid(BUCKET_US) != bucket || records.len() >= MAX_BLOCK_POINTS {
                    break;
                }
                records.push(BlockPoint { t, value: v });
                iter.next();
            }
            let (t_min, t_max) = match (records.first(), records.last()) {
                (Some(a), Some(b)) => (a.t, b.t),
                _ => continue,
            };
            out.blocks.push(Block {
                bucket,
                device,
                resource,
                t_min,
                t_max,
                n: records.len() as i64,
                data: encoder.encode_points(&records).map_err(codec_err(op))?,
            });
        }
        if let Some((t, v)) = points.last() {
            out.latest.push((device, resource, *t, v.clone()));
        }
    }
    Ok(out)
}

/// Writes encoded blocks (each the next generation of its series and bucket) and `latest`
/// in the caller's transaction; returns the blocks written. This runs on the writer
/// between two commits of ingest or apply (an install holds it for the whole fold), so it
/// keeps to few statements: only the first block of a series' bucket adds the bucket's
/// row (a later one finds it there: blocks and bucket rows are deleted together), and
/// `latest` is upserted [`LATEST_PER_STATEMENT`] series a statement (the rest one at a
/// time). Three statements a block and one a series held the writer 3 to 5 ms a fold of
/// 1,000 series (2 to 3 ms now); a point that came meanwhile waited for it.
fn write_encoded(conn: &Connection, encoded: &Encoded) -> Result<usize> {
    let op = "folding the point log";
    let mut next_gen = conn
        .prepare_cached(
            "SELECT COALESCE(MAX(gen), 0) + 1 FROM point_blocks
             WHERE bucket = ?1 AND device = ?2 AND resource = ?3",
        )
        .map_err(backend(op))?;
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO point_blocks (bucket, device, resource, gen, t_min, t_max, n, data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .map_err(backend(op))?;
    let mut bucket_row = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO series_buckets (device, resource, bucket) VALUES (?1, ?2, ?3)",
        )
        .map_err(backend(op))?;
    for b in &encoded.blocks {
        let generation: i64 = next_gen
            .query_row(params![b.bucket, b.device, b.resource], |r| r.get(0))
            .map_err(backend(op))?;
        insert
            .execute(params![
                b.bucket, b.device, b.resource, generation, b.t_min, b.t_max, b.n, b.data
            ])
            .map_err(backend(op))?;
        if generation == 1 {
            bucket_row
                .execute(params![b.device, b.resource, b.bucket])
                .map_err(backend(op))?;
        }
    }
    // Whole chunks share one cached statement, the rest one of a row each.
    let whole = encoded.latest.len() / LATEST_PER_STATEMENT * LATEST_PER_STATEMENT;
    let (chunks, rest) = encoded.latest.split_at(whole);
    let chunks = chunks.chunks(LATEST_PER_STATEMENT).chain(rest.chunks(1));
    for rows in chunks {
        let mut latest = conn
            .prepare_cached(&latest_upsert(rows.len()))
            .map_err(backend(op))?;
        let values = rows.iter().flat_map(|(device, resource, t, v)| {
            [
                ToSqlOutput::from(*device),
                ToSqlOutput::from(*resource),
                ToSqlOutput::from(*t),
                value_to_sql(v),
            ]
        });
        latest
            .execute(rusqlite::params_from_iter(values))
            .map_err(backend(op))?;
    }
    Ok(encoded.blocks.len())
}

/// Series whose `latest` one statement of [`write_encoded`] upserts (4 parameters each,
/// far below SQLite's limit of 32,766).
const LATEST_PER_STATEMENT: usize = 128;

/// The upsert of `rows` series' newest points into `latest` (a later point wins).
fn latest_upsert(rows: usize) -> String {
    let mut sql = String::from("INSERT INTO latest (device, resource, t, v) VALUES ");
    for i in 0..rows {
        let p = 4 * i;
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&format!("(?{}, ?{}, ?{}, ?{})", p + 1, p + 2, p + 3, p + 4));
    }
    sql.push_str(
        " ON CONFLICT (device, resource) DO UPDATE SET t = excluded.t, v = excluded.v
         WHERE excluded.t >= latest.t",
    );
    sql
}

/// Writes a part's points as blocks (and `latest`), then deletes the log rows up to `upto`
/// (all when `None`: the part is then everything unfolded, the outboxes' records too, and
/// every outbox's `folded` moves to its head), in the caller's transaction. Returns the
/// blocks written.
pub(super) fn fold(conn: &Connection, part: &Part, upto: Option<i64>) -> Result<usize> {
    let op = "folding the point log";
    let written = write_encoded(conn, &encode(part)?)?;
    match upto {
        None => conn.execute_batch(
            "DELETE FROM point_batches; DELETE FROM point_log;
             UPDATE sync_out SET folded = head WHERE folded < head;",
        ),
        Some(pos) => conn
            .execute("DELETE FROM point_log WHERE pos <= ?1", [pos])
            .map(|_| ()),
    }
    .map_err(backend(op))?;
    #[cfg(test)]
    super::crash_tests::failpoint("fold");
    Ok(written)
}

/// A page of one series, `lo <= t < hi`, ascending, at most `limit`, as the writer's open
/// transaction sees it: the blocks (this transaction's folds included), the committed Tail,
/// and the transaction's own puts over it. For a job that must queue the current value of
/// points it reads (a backfill's slice, `sync_site::requeue`), so that a value written
/// earlier in the same group commit is not missed. Writer thread only.
pub(super) fn read_in_writer(
    conn: &Connection,
    (device, resource): (i64, i64),
    (lo, hi): (i64, i64),
    limit: usize,
) -> Result<Vec<Point>> {
    let shared = CURRENT_TAIL.with_borrow(Clone::clone);
    let mut part: BTreeMap<i64, Value> = match shared {
        Some(tail) => tail
            .read()
            .map_err(|_| StoreError::Closed)?
            .range(device, resource, (lo, hi), Order::Asc, limit)
            .into_iter()
            .collect(),
        None => BTreeMap::new(),
    };
    OPS.with_borrow(|ops| {
        for op in ops {
            match op {
                Op::Put {
                    device: d,
                    resource: r,
                    t,
                    value,
                } if *d == device && *r == resource && (lo..hi).contains(t) => {
                    part.insert(*t, value.clone());
                }
                Op::Forget(d) if *d == device => part.clear(),
                Op::ForgetResource(r) if *r == resource => part.clear(),
                // Folded points are in this transaction's blocks, with the same values.
                _ => {}
            }
        }
    });
    let tail = TailPart(part.into_iter().take(limit).collect());
    read(conn, (device, resource), (lo, hi), Order::Asc, limit, tail)
}

/// The Tail's part of a series read, copied under its lock.
pub(super) struct TailPart(Vec<(i64, Value)>);

/// What a series read needs of the Tail: the first `limit` points in `[lo, hi)`, in order.
pub(super) fn tail_part(
    tail: &Tail,
    device: i64,
    resource: i64,
    window: (i64, i64),
    order: Order,
    limit: usize,
) -> TailPart {
    TailPart(tail.range(device, resource, window, order, limit))
}

/// A page of one series, `lo <= t < hi`, in `order`, at most `limit`: blocks merged with the
/// tail's part (the tail wins on a repeated `t`, a later block over an earlier one).
pub(super) fn read(
    conn: &Connection,
    (device, resource): (i64, i64),
    (lo, hi): (i64, i64),
    order: Order,
    limit: usize,
    tail: TailPart,
) -> Result<Vec<Point>> {
    let op = "reading points";
    if lo >= hi || limit == 0 {
        return Ok(Vec::new());
    }
    let mut merged: BTreeMap<i64, Value> = BTreeMap::new();
    let sql = match order {
        Order::Asc => {
            "SELECT bucket FROM series_buckets WHERE device = ?1 AND resource = ?2
             AND bucket >= ?3 AND bucket <= ?4 ORDER BY bucket ASC"
        }
        Order::Desc => {
            "SELECT bucket FROM series_buckets WHERE device = ?1 AND resource = ?2
             AND bucket >= ?3 AND bucket <= ?4 ORDER BY bucket DESC"
        }
    };
    let mut buckets = conn.prepare_cached(sql).map_err(backend(op))?;
    let mut blocks = conn
        .prepare_cached(
            "SELECT data FROM point_blocks WHERE bucket = ?1 AND device = ?2 AND resource = ?3
             AND t_max >= ?4 AND t_min < ?5 ORDER BY gen",
        )
        .map_err(backend(op))?;
    let mut rows = buckets
        .query(params![
            device,
            resource,
            lo.div_euclid(BUCKET_US),
            (hi - 1).div_euclid(BUCKET_US)
        ])
        .map_err(backend(op))?;
    let mut decoder = codec::Decoder::new();
    while let Some(r) = rows.next().map_err(backend(op))? {
        let bucket: i64 = r.get(0).map_err(backend(op))?;
        let mut data = blocks
            .query(params![bucket, device, resource, lo, hi])
            .map_err(backend(op))?;
        while let Some(b) = data.next().map_err(backend(op))? {
            let bytes = b.get_ref(0).map_err(backend(op))?;
            let bytes = bytes.as_blob().map_err(|e| StoreError::Backend {
                op,
                source: Box::new(e),
            })?;
            for record in decoder.decode(bytes).map_err(codec_err(op))? {
                if let Record::Point(p) = record
                    && (lo..hi).contains(&p.t)
                {
                    merged.insert(p.t, p.value);
                }
            }
        }
        // Whole buckets only: a later bucket cannot hold an earlier point.
        if merged.len() >= limit {
            break;
        }
    }
    for (t, v) in tail.0 {
        merged.insert(t, v);
    }
    let points = merged.into_iter().map(|(t, v)| Point { t, v });
    Ok(match order {
        Order::Asc => points.take(limit).collect(),
        Order::Desc => points.rev().take(limit).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row id with a sign has no place in a log row: the append is refused.
    #[test]
    fn a_negative_row_id_is_refused_and_logs_nothing() {
        let conn = Connection::open_in_memory().unwrap();
        let cid = ConnectorId::parse("abcdefghijklmn").unwrap();
        let (identity, name) = (
            Identity::parse("d").unwrap(),
            ResourceName::parse("r").unwrap(),
        );
        for key in [(-1, 1), (1, -1)] {
            let names = (
                &cid,
                std::borrow::Cow::Borrowed(&identity),
                std::borrow::Cow::Borrowed(&name),
            );
            let refused = append(&conn, key, names, 1, Value::Number(1.0));
            assert!(matches!(refused, Err(StoreError::Backend { .. })));
        }
        assert!(LOG.with_borrow(Vec::is_empty));
    }

    /// A refused job's live points are cut from the transaction's batches, whichever
    /// batches they fell into.
    #[test]
    fn live_points_group_per_connector_run_and_roll_back_by_count() {
        let cid = |s: &str| ConnectorId::parse(s).expect("connector id");
        let (a, b) = (cid("aaaaaaaaaaaaaa"), cid("bbbbbbbbbbbbbb"));
        let point = |t| LivePoint {
            device: Identity::parse("d1").expect("identity"),
            resource: ResourceName::parse("temp").expect("resource"),
            t,
            v: Value::Integer(t),
        };
        let shape = |l: &Live| -> Vec<(String, Vec<i64>)> {
            l.batches
                .iter()
                .map(|b| {
                    let ts = b.points.iter().map(|p| p.t).collect();
                    (b.connector.as_str().to_owned(), ts)
                })
                .collect()
        };
        let mut live = Live::new();
        for (c, t) in [(&a, 1), (&a, 2), (&b, 3), (&b, 4), (&a, 5)] {
            live.push(c, point(t));
        }
        let (aa, bb) = (a.as_str().to_owned(), b.as_str().to_owned());
        assert_eq!(
            shape(&live),
            vec![
                (aa.clone(), vec![1, 2]),
                (bb.clone(), vec![3, 4]),
                (aa.clone(), vec![5])
            ]
        );
        live.truncate(3);
        assert_eq!(
            shape(&live),
            vec![(aa.clone(), vec![1, 2]), (bb.clone(), vec![3])]
        );
        live.truncate(3);
        assert_eq!(live.points, 3);
        live.truncate(0);
        assert!(live.batches.is_empty() && live.points == 0);
    }
}
