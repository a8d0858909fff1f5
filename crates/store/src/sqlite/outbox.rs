//! The outbox's stored records: one row per request, covering a range of seqs. Schema:
//! `migrations/0003_sync.sql` (the partition registry) and `0010_outbox_records.sql`;
//! design: `docs/sync.md` ("Storage"). The protocol around it (lease, acknowledgement,
//! expiry, lost spans) is `sync.rs`.
//!
//! ```text
//!  job: appender ── push / push_copy / push_device ──▶ seqs head+1 … (in memory)
//!       finish ──▶ rows (first_seq, last_seq, copy, data = wire codec of the records)
//!                  in sync_out_<cid>_<part>; sync_out.head; sync_partitions.last_seq
//!  read(from, until) ──▶ the row holding `from` and the next ones, decoded, cut to range
//! ```
//!
//! A seq is still one point or one device change (the sender, the receiver, the cursor,
//! acknowledgements and the wire count them), but a commit writes one row per request: the
//! codec's columns (front-coded identities, delta-of-delta times, zstd), about the bytes of
//! its points, instead of a row per point.
//!
//! Invariants:
//! - The rows of a partition cover consecutive seqs, each row `first_seq..=last_seq` with
//!   exactly `last_seq - first_seq + 1` records; the seq of a record is `first_seq` plus its
//!   index in the row's decoded order (the codec's apply order: per series by time, stably,
//!   device changes in stream order), fixed when the row is written, so every read of a seq
//!   gives the same record whichever position it starts at.
//! - A row holds at most [`MAX_ROW_SEQS`] records (a read from inside a row decodes all of
//!   it: bounded work), and all of them are log records (the points' own copy until folded)
//!   or all copies (re-queued points stored elsewhere, never replayed into the tail).
//! - A row is written in the job's savepoint with the head that covers it: a refused job
//!   leaves neither.
//!
//! Deliberately absent: deleting single rows (partitions are dropped whole, `sync.rs`), and
//! any reading of values by resource format (the codec keeps each value's own type).

use std::collections::HashMap;

use proto::model::{ConnectorId, Format, Identity, ResourceName, Role, SyncState, Value};
use proto::sync::{DeviceRecord, Point as SyncPoint, Record, codec};
use rusqlite::{Connection, OptionalExtension, params};

use super::devices::{self, DEVICE_CHANGE};
use super::{backend, identity_col, resource_rows, select_rows, value_from_sql};
use crate::{Result, StoreError};

/// Most seqs one row holds: a sender batch (`max_batch_records`). A read that starts
/// inside a row decodes the whole row, so this bounds what one read decodes beyond its own
/// records.
pub(crate) const MAX_ROW_SEQS: usize = 4_096;
#[cfg(test)]
thread_local! {
    /// The row size a test's store wants (`SqliteConfig::row_seqs`; the model test's small
    /// requests span rows at 5), on the threads that write its rows: the one that opens it
    /// and its writer. Per thread, not per process: `cargo test` runs tests side by side
    /// in one process, and a size one test set changed the rows of another.
    pub(super) static TEST_ROW_SEQS: std::cell::Cell<usize> = const { std::cell::Cell::new(MAX_ROW_SEQS) };
}

/// Most seqs in one row: [`MAX_ROW_SEQS`], or what a test asked for.
fn row_seqs() -> usize {
    #[cfg(test)]
    return TEST_ROW_SEQS.get();
    #[cfg(not(test))]
    MAX_ROW_SEQS
}
/// Bytes a row costs besides its data (rowid, seqs, flag, cell header), for the disk budget.
const ROW_OVERHEAD: u64 = 16;

/// The table of a connector's partition.
pub(super) fn table(cid: &ConnectorId, part: i64) -> String {
    // Connector ids are 14 lowercase alphanumerics (checked by `ConnectorId::parse`), so the
    // name needs no quoting.
    format!("sync_out_{}_{part}", cid.as_str())
}

fn create_table(conn: &Connection, name: &str) -> Result<()> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {name} (
             first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL,
             copy INTEGER NOT NULL DEFAULT 0, data BLOB NOT NULL)"
    ))
    .map_err(backend("creating an outbox partition"))
}

pub(super) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn codec_err(op: &'static str) -> impl FnOnce(codec::CodecError) -> StoreError {
    move |e| StoreError::Backend {
        op,
        source: Box::new(e),
    }
}

/// `(head, last_part)` of a connector's outbox, zeros when it has none.
fn head_row(conn: &Connection, cid: &ConnectorId) -> Result<(u64, i64)> {
    Ok(conn
        .prepare_cached("SELECT head, last_part FROM sync_out WHERE connector = ?1")
        .and_then(|mut s| {
            s.query_row([cid.as_str()], |r| {
                Ok((to_u64(r.get(0)?), r.get::<_, i64>(1)?))
            })
            .optional()
        })
        .map_err(backend("reading the outbox state"))?
        .unwrap_or((0, 0)))
}

/// Appends the records of one job to a connector's outbox. Made once per job by
/// [`appender`]; seqs are given at each push, the rows are written by [`Appender::finish`],
/// which must run before the job's savepoint ends.
pub(super) struct Appender {
    cid: ConnectorId,
    /// The highest seq given (committed head plus this job's pushes).
    head: u64,
    /// Partition the rows go to: the clock's, never older than `last_part`.
    part: i64,
    last_part: i64,
    /// This job's records from `first`, and whether each is a copy (not the log).
    records: Vec<Record>,
    copies: Vec<bool>,
    /// Whether points are replicated (a Source); a Target's stream holds device changes only.
    pub(super) points: bool,
}

/// An appender when `cid` is paired (device changes are replicated; on a Source, points
/// too), else `None`.
pub(super) fn appender(
    conn: &Connection,
    cid: &ConnectorId,
    now: i64,
    partition_us: i64,
) -> Result<Option<Appender>> {
    let row: Option<(String, String)> = conn
        .prepare_cached("SELECT role, sync_state FROM connectors WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([cid.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(backend("reading a connector's role"))?;
    let Some((role, state)) = row else {
        return Ok(None);
    };
    if SyncState::parse(&state) != Some(SyncState::Paired) {
        return Ok(None);
    }
    let (head, last_part) = head_row(conn, cid)?;
    Ok(Some(Appender {
        cid: cid.clone(),
        head,
        part: (now.max(0) / partition_us.max(1)).max(last_part),
        last_part,
        records: Vec::new(),
        copies: Vec::new(),
        points: Role::parse(&role) == Some(Role::Source),
    }))
}

/// Appends one device change to the outbox of a paired connector; returns its seq, or
/// `None` when the connector is not paired (nothing to replicate to).
pub(super) fn append_device(
    conn: &Connection,
    cid: &ConnectorId,
    now: i64,
    partition_us: i64,
    record: &DeviceRecord,
) -> Result<Option<u64>> {
    let Some(mut out) = appender(conn, cid, now, partition_us)? else {
        return Ok(None);
    };
    let seq = out.push_device(conn, record)?;
    out.finish(conn)?;
    Ok(Some(seq))
}

impl Appender {
    fn add(&mut self, record: Record, copy: bool) -> u64 {
        self.records.push(record);
        self.copies.push(copy);
        self.head += 1;
        self.head
    }

    /// Queues one device change under the next seq; returns the seq.
    pub(super) fn push_device(&mut self, _conn: &Connection, record: &DeviceRecord) -> Result<u64> {
        Ok(self.add(Record::Device(Box::new(record.clone())), false))
    }

    /// Queues one point under the next seq, as the point's log record: its only stored
    /// copy until the tail is folded (the caller puts it in the tail, `series::put`).
    pub(super) fn push(
        &mut self,
        _conn: &Connection,
        device: &Identity,
        resource: &ResourceName,
        t: i64,
        value: &Value,
    ) -> Result<()> {
        self.add(point(device, resource, t, value), false);
        Ok(())
    }

    /// Queues one point under the next seq as a copy of a point stored elsewhere (a point
    /// sent again): never replayed into the tail.
    pub(super) fn push_copy(
        &mut self,
        _conn: &Connection,
        device: &Identity,
        resource: &ResourceName,
        t: i64,
        value: &Value,
    ) -> Result<()> {
        self.add(point(device, resource, t, value), true);
        Ok(())
    }

    /// Writes the job's records as rows and records the new head; returns it when anything
    /// was appended.
    pub(super) fn finish(mut self, conn: &Connection) -> Result<Option<u64>> {
        if self.records.is_empty() {
            return Ok(None);
        }
        self.sort_points();
        let op = "appending to the outbox";
        let name = self.open_partition(conn)?;
        let first = self.head + 1 - self.records.len() as u64;
        let mut insert = conn
            .prepare_cached(&format!(
                "INSERT INTO {name} (first_seq, last_seq, copy, data) VALUES (?1, ?2, ?3, ?4)"
            ))
            .map_err(backend(op))?;
        let mut bytes = 0;
        // Runs of one kind, at most MAX_ROW_SEQS each, halved while too large to encode.
        let mut chunks: Vec<(usize, usize)> = Vec::new();
        let mut start = 0;
        for i in 1..=self.records.len() {
            if i == self.records.len()
                || self.copies[i] != self.copies[start]
                || i - start == row_seqs()
            {
                chunks.push((start, i));
                start = i;
            }
        }
        chunks.reverse();
        // The data of a row that holds every record of the job: the sender's payload.
        let mut whole = None;
        while let Some((a, b)) = chunks.pop() {
            match super::series::encode_row(&self.records[a..b]) {
                Ok(data) => {
                    insert
                        .execute(params![
                            to_i64(first + a as u64),
                            to_i64(first + b as u64 - 1),
                            self.copies[a],
                            data
                        ])
                        .map_err(backend(op))?;
                    bytes += data.len() as u64 + ROW_OVERHEAD;
                    if b - a == self.records.len() {
                        whole = Some(data);
                    }
                }
                // Many long strings: in halves, each its own row, in order.
                Err(codec::CodecError::TooLarge { .. }) if b - a > 1 => {
                    let mid = a + (b - a) / 2;
                    chunks.push((mid, b));
                    chunks.push((a, mid));
                }
                Err(e) => return Err(codec_err(op)(e)),
            }
        }
        conn.prepare_cached("INSERT OR IGNORE INTO sync_out (connector) VALUES (?1)")
            .and_then(|mut s| s.execute([self.cid.as_str()]))
            .map_err(backend("creating the outbox"))?;
        conn.prepare_cached("UPDATE sync_out SET head = ?2, last_part = ?3 WHERE connector = ?1")
            .and_then(|mut s| {
                s.execute(params![
                    self.cid.as_str(),
                    to_i64(self.head),
                    self.part.max(self.last_part)
                ])
            })
            .map_err(backend("moving the outbox head"))?;
        conn.prepare_cached(
            "UPDATE sync_partitions SET last_seq = ?3, bytes = bytes + ?4
             WHERE connector = ?1 AND part = ?2",
        )
        .and_then(|mut s| {
            s.execute(params![
                self.cid.as_str(),
                self.part,
                to_i64(self.head),
                to_i64(bytes)
            ])
        })
        .map_err(backend("updating an outbox partition"))?;
        // In seq order, as a read gives them: the driver's next read, right after the
        // commit, takes them from memory (`recent.rs`), with their row if it is one.
        super::recent::appended(&self.cid, first, self.records, whole);
        Ok(Some(self.head))
    }

    /// Puts each run of points (between device changes, of one kind) in the codec's order:
    /// by device, resource and time, stably (two writes of one `t` keep their order). So a
    /// request's records have the same seqs whatever rows they are cut into, and each row
    /// decodes in the order it was given.
    fn sort_points(&mut self) {
        let mut start = 0;
        for i in 1..=self.records.len() {
            let boundary = i == self.records.len()
                || self.copies[i] != self.copies[start]
                || matches!(self.records[i], Record::Device(_))
                || matches!(self.records[start], Record::Device(_));
            if boundary {
                self.records[start..i].sort_by(|a, b| match (a, b) {
                    (Record::Point(a), Record::Point(b)) => a
                        .device
                        .as_str()
                        .cmp(b.device.as_str())
                        .then_with(|| a.resource.as_str().cmp(b.resource.as_str()))
                        .then_with(|| a.t.cmp(&b.t)),
                    _ => std::cmp::Ordering::Equal,
                });
                start = i;
            }
        }
    }

    /// Creates the partition's table and registry row unless they exist; returns its table.
    fn open_partition(&self, conn: &Connection) -> Result<String> {
        let name = table(&self.cid, self.part);
        let known = conn
            .prepare_cached("SELECT 1 FROM sync_partitions WHERE connector = ?1 AND part = ?2")
            .and_then(|mut s| s.exists(params![self.cid.as_str(), self.part]))
            .map_err(backend("looking up an outbox partition"))?;
        if !known {
            create_table(conn, &name)?;
            let first = self.head + 1 - self.records.len() as u64;
            conn.prepare_cached(
                "INSERT INTO sync_partitions (connector, part, first_seq, last_seq, bytes)
                 VALUES (?1, ?2, ?3, ?4, 0)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    self.cid.as_str(),
                    self.part,
                    to_i64(first),
                    to_i64(first - 1)
                ])
            })
            .map_err(backend("registering an outbox partition"))?;
        }
        Ok(name)
    }
}

fn point(device: &Identity, resource: &ResourceName, t: i64, value: &Value) -> Record {
    Record::Point(SyncPoint {
        device: device.clone(),
        resource: resource.clone(),
        t,
        value: value.clone(),
    })
}

/// One stored row, decoded.
pub(super) struct Row {
    pub(super) first: u64,
    pub(super) last: u64,
    pub(super) copy: bool,
    pub(super) records: Vec<Record>,
}

/// Calls `f` with each row of a partition from the one holding seq `from` on, in seq order,
/// until it returns `false`. A row whose records do not match its seq range is an error.
pub(super) fn rows_from(
    conn: &Connection,
    cid: &ConnectorId,
    part: i64,
    from: u64,
    mut f: impl FnMut(Row) -> Result<bool>,
) -> Result<()> {
    let op = "reading the outbox";
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT first_seq, last_seq, copy, data FROM {t}
             WHERE first_seq >= (SELECT COALESCE(MAX(first_seq), 0) FROM {t} WHERE first_seq <= ?1)
             ORDER BY first_seq",
            t = table(cid, part)
        ))
        .map_err(backend(op))?;
    let mut rows = stmt.query([to_i64(from)]).map_err(backend(op))?;
    let mut decoder = codec::Decoder::new();
    while let Some(r) = rows.next().map_err(backend(op))? {
        let first = to_u64(r.get(0).map_err(backend(op))?);
        let last = to_u64(r.get(1).map_err(backend(op))?);
        let copy: bool = r.get(2).map_err(backend(op))?;
        let data = r.get_ref(3).map_err(backend(op))?;
        let data = data.as_blob().map_err(|e| StoreError::Backend {
            op,
            source: Box::new(e),
        })?;
        let records = decoder.decode(data).map_err(|e| StoreError::Backend {
            op,
            source: format!("the row of seqs {first}..={last} does not decode: {e}").into(),
        })?;
        if last < first || records.len() as u64 != last - first + 1 {
            return Err(StoreError::Backend {
                op,
                source: format!(
                    "the row of seqs {first}..={last} holds {} records",
                    records.len()
                )
                .into(),
            });
        }
        let row = Row {
            first,
            last,
            copy,
            records,
        };
        if !f(row)? {
            break;
        }
    }
    Ok(())
}

/// Rewrites the partitions an older version stored one row per seq (listed in
/// `sync_out_legacy` by migration 10) as rows of records, one partition per transaction;
/// called on open, before the tail is replayed. A row of the new layout keeps the old seq
/// of every record: consecutive old rows share a new row only where the codec's order is
/// the seq order.
pub(super) fn convert_legacy(conn: &Connection) -> Result<()> {
    let op = "converting the outbox";
    let todo = select_rows(
        conn,
        "SELECT connector, part FROM sync_out_legacy ORDER BY connector, part",
        [],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
        op,
    )?;
    for (cid, part) in todo {
        conn.execute_batch("BEGIN IMMEDIATE").map_err(backend(op))?;
        let converted = convert_partition(conn, &cid, part).and_then(|()| {
            conn.prepare_cached("DELETE FROM sync_out_legacy WHERE connector = ?1 AND part = ?2")
                .and_then(|mut s| s.execute(params![cid, part]))
                .map_err(backend(op))?;
            conn.execute_batch("COMMIT").map_err(backend(op))
        });
        if let Err(e) = converted {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        tracing::info!(connector = %cid, part, "converted an outbox partition to records");
    }
    Ok(())
}

fn convert_partition(conn: &Connection, cid: &str, part: i64) -> Result<()> {
    let op = "converting the outbox";
    let Ok(cid) = ConnectorId::parse(cid) else {
        return Ok(());
    };
    let name = table(&cid, part);
    if super::connector_exists(conn, &cid).is_err() {
        // Left behind by a deleted connector: nothing can read it, and its records name
        // resources that are gone.
        conn.execute_batch(&format!("DROP TABLE IF EXISTS {name}"))
            .map_err(backend(op))?;
        conn.prepare_cached("DELETE FROM sync_partitions WHERE connector = ?1 AND part = ?2")
            .and_then(|mut s| s.execute(params![cid.as_str(), part]))
            .map_err(backend(op))?;
        return Ok(());
    }
    let exists = conn
        .prepare_cached("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1")
        .and_then(|mut s| s.exists([&name]))
        .map_err(backend(op))?;
    if !exists {
        return Ok(());
    }
    let old = format!("sync_old_{}_{part}", cid.as_str());
    conn.execute_batch(&format!("ALTER TABLE {name} RENAME TO {old}"))
        .map_err(backend(op))?;
    create_table(conn, &name)?;
    let resources: HashMap<i64, (ResourceName, Format)> = resource_rows(conn, &cid)?
        .into_iter()
        .map(|(n, r)| (r.id, (n, r.format)))
        .collect();
    let mut stmt = conn
        .prepare(&format!(
            "SELECT seq, device, resource, t, v FROM {old} ORDER BY seq"
        ))
        .map_err(backend(op))?;
    let mut rows = stmt.query([]).map_err(backend(op))?;
    let mut run: Vec<Record> = Vec::new();
    let mut run_first = 0u64;
    let mut bytes = 0u64;
    let mut encoder = codec::Encoder::new();
    let mut decoder = codec::Decoder::new();
    while let Some(r) = rows.next().map_err(backend(op))? {
        let seq = to_u64(r.get(0).map_err(backend(op))?);
        let device: String = r.get(1).map_err(backend(op))?;
        let rid: i64 = r.get(2).map_err(backend(op))?;
        let record = if rid == DEVICE_CHANGE {
            let text: String = r.get(4).map_err(backend(op))?;
            Record::Device(Box::new(devices::decode(&text)?))
        } else {
            let (resource, format) = resources.get(&rid).ok_or_else(|| StoreError::Backend {
                op,
                source: format!("outbox record {seq} names resource {rid}, which is gone").into(),
            })?;
            Record::Point(SyncPoint {
                device: identity_col(device)?,
                resource: resource.clone(),
                t: r.get(3).map_err(backend(op))?,
                value: value_from_sql(*format, r.get_ref(4).map_err(backend(op))?),
            })
        };
        if !run.is_empty() && (seq != run_first + run.len() as u64 || run.len() == row_seqs()) {
            bytes += write_in_seq_order(conn, &name, run_first, &run, &mut encoder, &mut decoder)?;
            run.clear();
        }
        if run.is_empty() {
            run_first = seq;
        }
        run.push(record);
    }
    drop(rows);
    drop(stmt);
    if !run.is_empty() {
        bytes += write_in_seq_order(conn, &name, run_first, &run, &mut encoder, &mut decoder)?;
    }
    conn.execute_batch(&format!("DROP TABLE {old}"))
        .map_err(backend(op))?;
    conn.prepare_cached("UPDATE sync_partitions SET bytes = ?3 WHERE connector = ?1 AND part = ?2")
        .and_then(|mut s| s.execute(params![cid.as_str(), part, to_i64(bytes)]))
        .map_err(backend(op))?;
    Ok(())
}

/// Writes `records` (seqs from `first`) as rows whose decoded order is exactly theirs:
/// a run the codec would reorder is split in halves until it is not (one record always
/// is). Returns the bytes written.
fn write_in_seq_order(
    conn: &Connection,
    table: &str,
    first: u64,
    records: &[Record],
    encoder: &mut codec::Encoder,
    decoder: &mut codec::Decoder,
) -> Result<u64> {
    let op = "converting the outbox";
    let mut insert = conn
        .prepare_cached(&format!(
            "INSERT INTO {table} (first_seq, last_seq, copy, data) VALUES (?1, ?2, 0, ?3)"
        ))
        .map_err(backend(op))?;
    let mut bytes = 0;
    let mut chunks = vec![(0, records.len())];
    while let Some((a, b)) = chunks.pop() {
        let slice = &records[a..b];
        let data = match encoder.encode(slice) {
            Ok(data) if b - a == 1 || decoder.decode(&data).is_ok_and(|d| d == slice) => data,
            Ok(_) | Err(codec::CodecError::TooLarge { .. }) if b - a > 1 => {
                let mid = a + (b - a) / 2;
                chunks.push((mid, b));
                chunks.push((a, mid));
                continue;
            }
            Ok(data) => data,
            Err(e) => return Err(codec_err(op)(e)),
        };
        insert
            .execute(params![
                to_i64(first + a as u64),
                to_i64(first + b as u64 - 1),
                data
            ])
            .map_err(backend(op))?;
        bytes += data.len() as u64 + ROW_OVERHEAD;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use proto::model::{DeviceState, Format, Value};
    use proto::sync::Record;
    use rusqlite::{Connection, params};
    use serde_json::json;

    use super::super::fixtures::*;
    use super::super::{SqliteConfig, SqliteStore, devices};
    use crate::*;

    const DEVICES: [&str; 3] = ["dev9", "dev10", "dev1"];

    /// A paired Source whose `temp` is remote-synced, with [`DEVICES`] (pairing queues
    /// their snapshots: seqs 1..=3).
    async fn paired(dir: &std::path::Path) -> SqliteStore {
        let store = SqliteStore::open(SqliteConfig::new(dir.join("site.db"))).unwrap();
        create_plant(&store).await;
        store
            .create_resource(
                &cid(),
                NewResource {
                    name: name("temp"),
                    format: Format::Number,
                    unit: None,
                    settable: false,
                    remote_sync: true,
                    created_at: 1,
                },
            )
            .await
            .unwrap();
        for (i, d) in DEVICES.into_iter().enumerate() {
            store
                .create_device(
                    &cid(),
                    NewDevice {
                        identity: id(d),
                        tags: Default::default(),
                        permissions: vec![],
                        state: DeviceState::Provisioned,
                        token: [i as u8; 32],
                        created_at: 1,
                    },
                    &admin(),
                )
                .await
                .unwrap();
        }
        store.open_pairing(&cid(), "CODE", i64::MAX).await.unwrap();
        let peer = Peer {
            site: "b".into(),
            connector_id: ConnectorId::parse("abcdefghijklmn").unwrap(),
        };
        store
            .complete_pairing(&cid(), peer, keys(), 1)
            .await
            .unwrap();
        store
    }

    /// One request: a point of each device at each of `times`, `v` = t / 10.
    fn request(times: std::ops::Range<i64>) -> Vec<PointsIn> {
        times
            .flat_map(|t| {
                DEVICES.map(|d| PointsIn {
                    identity: id(d),
                    t,
                    values: vec![(name("temp"), json!(t as f64 / 10.0))],
                })
            })
            .collect()
    }

    async fn read_all(store: &SqliteStore, from: u64) -> Vec<Record> {
        match store.outbox_read(&cid(), from, 100_000).await.unwrap() {
            OutboxChunk::Records(r) => r,
            OutboxChunk::Lost(span) => panic!("lost {span:?}"),
        }
    }

    async fn temps(store: &SqliteStore, device: &str) -> Vec<(i64, Value)> {
        let q = RangeQuery {
            since: 0,
            until: i64::MAX,
            after: None,
            limit: 10_000,
            order: Order::Asc,
        };
        store
            .points(&cid(), &id(device), &name("temp"), q)
            .await
            .unwrap()
            .into_iter()
            .map(|p| (p.t, p.v))
            .collect()
    }

    /// The partitions of a data directory of the version before migration 10 hold one row
    /// per seq: reopened, every seq reads the same record as before from any start, a read
    /// stops at `until`, and the points only those records held are in the series.
    #[tokio::test]
    async fn a_data_dir_of_one_row_per_seq_is_converted_on_open_seq_for_seq() {
        let dir = tempfile::tempdir().unwrap();
        let store = paired(dir.path()).await;
        store.ingest(&cid(), request(0..40)).await.unwrap();
        store.ingest(&cid(), request(20..50)).await.unwrap();
        let before = read_all(&store, 1).await;
        let series = temps(&store, "dev10").await;
        assert_eq!(before.len(), 3 + 3 * 70);
        drop(store);

        // The former layout, in seq order as an older version appended it: the points of a
        // request in request order (by time, then device), which the codec would reorder.
        let conn = Connection::open(dir.path().join("site.db")).unwrap();
        let temp: i64 = conn
            .query_row("SELECT id FROM resources WHERE name = 'temp'", [], |r| {
                r.get(0)
            })
            .unwrap();
        let parts: Vec<i64> = conn
            .prepare("SELECT part FROM sync_partitions")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(parts.len(), 1);
        let table = super::table(&cid(), parts[0]);
        conn.execute_batch(&format!(
            "DROP TABLE {table};
             CREATE TABLE {table} (seq INTEGER PRIMARY KEY, device TEXT NOT NULL,
                 resource INTEGER NOT NULL, t INTEGER NOT NULL, v);
             INSERT INTO sync_out_legacy SELECT connector, part FROM sync_partitions;"
        ))
        .unwrap();
        let mut legacy: Vec<Record> = before[..3].to_vec();
        for times in [0..40, 20..50] {
            for t in times {
                for d in DEVICES {
                    legacy.push(Record::Point(proto::sync::Point {
                        device: id(d),
                        resource: name("temp"),
                        t,
                        value: Value::Number(t as f64 / 10.0),
                    }));
                }
            }
        }
        for (seq, record) in (1..).zip(&legacy) {
            match record {
                Record::Device(d) => conn.execute(
                    &format!("INSERT INTO {table} VALUES (?1, ?2, 0, 0, ?3)"),
                    params![seq, d.identity.as_str(), devices::encode(d).unwrap()],
                ),
                Record::Point(p) => conn.execute(
                    &format!("INSERT INTO {table} VALUES (?1, ?2, ?3, ?4, ?5)"),
                    params![seq, p.device.as_str(), temp, p.t, p.t as f64 / 10.0],
                ),
            }
            .unwrap();
        }
        drop(conn);

        let store = SqliteStore::open(SqliteConfig::new(dir.path().join("site.db"))).unwrap();
        for from in 1..=legacy.len() as u64 {
            assert_eq!(
                read_all(&store, from).await,
                legacy[from as usize - 1..],
                "from {from}"
            );
        }
        let OutboxChunk::Records(some) = store.outbox_range(&cid(), 50, 57, 100).await.unwrap()
        else {
            panic!("nothing lost here");
        };
        assert_eq!(some, legacy[49..56]);
        // Nothing was folded: the points are replayed from the converted records.
        assert_eq!(temps(&store, "dev10").await, series);
        let left: i64 = Connection::open(dir.path().join("site.db"))
            .unwrap()
            .query_row("SELECT COUNT(*) FROM sync_out_legacy", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }

    /// A partition of the former layout that a deleted connector left behind does not stop
    /// the open: it is dropped (nothing can read it), the others are converted.
    #[tokio::test]
    async fn a_former_partition_of_a_deleted_connector_is_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = paired(dir.path()).await;
        store.ingest(&cid(), request(0..1)).await.unwrap();
        let before = read_all(&store, 1).await;
        drop(store);
        let gone = ConnectorId::parse("zzzzzzzzzzzzzz").unwrap();
        let orphan = super::table(&gone, 7);
        let conn = Connection::open(dir.path().join("site.db")).unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE {orphan} (seq INTEGER PRIMARY KEY, device TEXT NOT NULL,
                 resource INTEGER NOT NULL, t INTEGER NOT NULL, v);
             INSERT INTO {orphan} VALUES (1, 'dev1', 99, 5, 1.5);
             INSERT INTO sync_partitions VALUES ('{gone}', 7, 1, 1, 40);
             INSERT INTO sync_out_legacy VALUES ('{gone}', 7);"
        ))
        .unwrap();
        drop(conn);
        let store = SqliteStore::open(SqliteConfig::new(dir.path().join("site.db"))).unwrap();
        assert_eq!(read_all(&store, 1).await, before);
        let conn = Connection::open(dir.path().join("site.db")).unwrap();
        let left: i64 = conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM sqlite_schema WHERE name = ?1)
                      + (SELECT COUNT(*) FROM sync_partitions WHERE connector = ?2)
                      + (SELECT COUNT(*) FROM sync_out_legacy)",
                params![orphan, gone.as_str()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0);
    }

    /// A stored row that does not decode (a disk fault, a hand edit) fails the reads that
    /// need it with an error naming its seqs, never a panic nor records silently skipped;
    /// reads before it, and ingest, go on.
    #[tokio::test]
    async fn a_row_that_does_not_decode_fails_its_reads_with_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = paired(dir.path()).await;
        store.ingest(&cid(), request(0..2)).await.unwrap(); // seqs 4..=9
        store.ingest(&cid(), request(2..4)).await.unwrap(); // seqs 10..=15
        let conn = Connection::open(dir.path().join("site.db")).unwrap();
        let part: i64 = conn
            .query_row("SELECT part FROM sync_partitions", [], |r| r.get(0))
            .unwrap();
        let table = super::table(&cid(), part);
        conn.execute(
            &format!("UPDATE {table} SET data = x'28b52ffd00' WHERE first_seq = 10"),
            [],
        )
        .unwrap();
        for from in [10, 12, 4] {
            let err = store.outbox_read(&cid(), from, 100).await.unwrap_err();
            let StoreError::Backend { op, .. } = &err else {
                panic!("expected a backend error, got {err}");
            };
            assert_eq!(*op, "reading the outbox");
            assert!(
                err.to_string()
                    .contains("the row of seqs 10..=15 does not decode"),
                "{err}"
            );
        }
        assert_eq!(read_all_upto(&store, 4, 6).await.len(), 6);
        // A row whose count of records does not match its seqs is named too.
        conn.execute(
            &format!("UPDATE {table} SET last_seq = 8 WHERE first_seq = 4"),
            [],
        )
        .unwrap();
        let err = store.outbox_read(&cid(), 5, 2).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("the row of seqs 4..=8 holds 6 records"),
            "{err}"
        );
        store.ingest(&cid(), request(4..5)).await.unwrap();
        assert_eq!(store.outbox_head(&cid()).await.unwrap(), 18);
    }

    async fn read_all_upto(store: &SqliteStore, from: u64, max: usize) -> Vec<Record> {
        match store.outbox_read(&cid(), from, max).await.unwrap() {
            OutboxChunk::Records(r) => r,
            OutboxChunk::Lost(span) => panic!("lost {span:?}"),
        }
    }

    /// A re-queued copy of a stored point goes out like any record, but is not the point's
    /// log: a restart does not replay it into the tail, and it changes no value.
    #[tokio::test]
    async fn a_copy_is_sent_but_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let store = paired(dir.path()).await;
        store.ingest(&cid(), request(0..2)).await.unwrap();
        store.fold().await.unwrap();
        store
            .write(|conn| {
                let mut out = super::appender(conn, &cid(), 1, 600_000_000)?.unwrap();
                out.push_copy(conn, &id("dev1"), &name("temp"), 1, &Value::Number(0.1))?;
                out.finish(conn)
            })
            .await
            .unwrap();
        let head = store.outbox_head(&cid()).await.unwrap();
        assert_eq!(head, 3 + 6 + 1);
        assert_eq!(
            read_all(&store, head).await,
            vec![Record::Point(proto::sync::Point {
                device: id("dev1"),
                resource: name("temp"),
                t: 1,
                value: Value::Number(0.1),
            })]
        );
        drop(store);
        let store = SqliteStore::open(SqliteConfig::new(dir.path().join("site.db"))).unwrap();
        assert_eq!(store.tail_len(), 0);
        assert_eq!(
            temps(&store, "dev1").await,
            vec![(0, Value::Number(0.0)), (1, Value::Number(0.1))]
        );
    }
}
