//! The SQL of resource data synchronisation (docs/spec.md §6, §7): the Source's outbox in time
//! partitions with its lease, acknowledgement and lost spans, and the Target's applied
//! cursor, pending points and gaps. Schema: `migrations/0003_sync.sql`; design:
//! `docs/sync.md` ("Storage").
//!
//! ```text
//!  ingest job ──▶ point log, or (Source, paired, remote_sync on) sync_out_<cid>_<part>:
//!                 one row of records per request (`outbox.rs`), the points' only copy
//!                 until folded (`sync_out.folded`)
//!                                      seq = head + 1 …, head in sync_out, same transaction
//!  driver: read(from, until) ◀── partitions in seq order (from any seq, inside a row
//!                                 too), or the lost span holding `from`
//!          lease(upto), acked(n) ──▶ sync_out; fully acknowledged older partitions dropped
//!          expire(now) ──▶ expired partitions dropped: delivered ones silently, undelivered
//!                          ones as a lost span (exact summary) unless pinned in (acked, lease]
//!  driver: apply([records | gap]) ──▶ cursor CAS, points / pending / gap rows, cursor
//! ```
//!
//! Invariants:
//! - Seqs are gap-free from 1 per connector and assigned in the transaction of the local
//!   write, so a point is never stored without being queued, nor queued without being stored.
//! - Partition `p` holds the appends made while the clock was in `[p·len, (p+1)·len)`, and
//!   partitions are in seq order (an append never goes to a partition older than the newest
//!   one), so a time-based expiry drops a contiguous seq range.
//! - No record in `(acked, lease]` is ever dropped before it is acknowledged; every other
//!   undelivered record that is dropped is counted in a lost span written in the same
//!   transaction.
//! - `apply` refuses (and changes nothing) unless the stored cursor is exactly one before
//!   each item's first seq; the cursor only grows.
//!
//! Device changes share the outbox (`Record::Device` records, in stream order with the
//! points) on both sides of a pairing: on a Source with the points, on a Target alone (the
//! Target → Source stream). Their SQL is in `devices.rs`; the stored layout of records in
//! `outbox.rs`.
//!
//! Deliberately absent: any clock reading: `now` is passed in.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use proto::model::{ConnectorId, Format, Identity, ResourceName, Value};
use proto::sync::{Held, LostSpan, Record, ResourceLoss};
use rusqlite::{Connection, OptionalExtension, params};

pub(super) use super::outbox::{append_device, appender};
use super::outbox::{rows_from, table, to_i64, to_u64};
use super::{
    ResourceRow, backend, collect_rows, identity_col, parse_col, resource_col, resource_rows,
    select_rows, value_from_sql, value_to_sql,
};
use super::{device_ids, devices};
use crate::{
    ExpiryReport, GapReason, GapRow, Inbound, OutboxChunk, Result, Retention, StoreError,
    SyncDurable,
};

/// A lost span covers at most this many partitions (a longer run becomes several adjacent
/// spans), so that one span's summary reads a bounded part of the outbox.
const MAX_PARTS_PER_SPAN: usize = 256;

fn json_err(op: &'static str) -> impl FnOnce(serde_json::Error) -> StoreError {
    move |e| StoreError::Backend {
        op,
        source: Box::new(e),
    }
}

/// `(head, acked, lease, last_part)` of a connector's outbox, zeros when it has none.
fn out_row(conn: &Connection, cid: &ConnectorId) -> Result<(u64, u64, u64, i64)> {
    Ok(conn
        .prepare_cached("SELECT head, acked, lease, last_part FROM sync_out WHERE connector = ?1")
        .and_then(|mut s| {
            s.query_row([cid.as_str()], |r| {
                Ok((
                    to_u64(r.get(0)?),
                    to_u64(r.get(1)?),
                    to_u64(r.get(2)?),
                    r.get::<_, i64>(3)?,
                ))
            })
            .optional()
        })
        .map_err(backend("reading the outbox state"))?
        .unwrap_or((0, 0, 0, 0)))
}

fn ensure_out_row(conn: &Connection, cid: &ConnectorId) -> Result<()> {
    conn.prepare_cached("INSERT OR IGNORE INTO sync_out (connector) VALUES (?1)")
        .and_then(|mut s| s.execute([cid.as_str()]))
        .map_err(backend("creating the outbox"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Sending side.

struct Part {
    part: i64,
    first: u64,
    last: u64,
    bytes: u64,
}

fn partitions(conn: &Connection, cid: &ConnectorId) -> Result<Vec<Part>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT part, first_seq, last_seq, bytes FROM sync_partitions
             WHERE connector = ?1 ORDER BY part",
        )
        .map_err(backend("listing outbox partitions"))?;
    collect_rows(
        &mut stmt,
        [cid.as_str()],
        |r| {
            Ok(Part {
                part: r.get(0)?,
                first: to_u64(r.get(1)?),
                last: to_u64(r.get(2)?),
                bytes: to_u64(r.get(3)?),
            })
        },
        "listing outbox partitions",
    )
}

fn drop_partition(conn: &Connection, cid: &ConnectorId, part: i64) -> Result<()> {
    super::recent::dropped(cid);
    conn.execute_batch(&format!("DROP TABLE IF EXISTS {}", table(cid, part)))
        .map_err(backend("dropping an outbox partition"))?;
    conn.prepare_cached("DELETE FROM sync_partitions WHERE connector = ?1 AND part = ?2")
        .and_then(|mut s| s.execute(params![cid.as_str(), part]))
        .map_err(backend("unregistering an outbox partition"))?;
    Ok(())
}

/// Forgets everything a connector's sync holds (a pairing cancelled before its first
/// session): the outbox and its partitions, lost spans, the cursor, pending points, gaps,
/// and which device changes were queued.
pub(super) fn forget(conn: &Connection, cid: &ConnectorId) -> Result<()> {
    super::recent::dropped(cid);
    // The unfolded points of its records exist nowhere else yet.
    super::series::fold_unfolded_outbox(conn)?;
    for p in partitions(conn, cid)? {
        drop_partition(conn, cid, p.part)?;
    }
    for table in [
        "sync_out",
        "sync_lost",
        "sync_in",
        "sync_pending",
        "sync_gaps",
    ] {
        conn.execute(
            &format!("DELETE FROM {table} WHERE connector = ?1"),
            [cid.as_str()],
        )
        .map_err(backend("forgetting a connector's sync state"))?;
    }
    conn.execute(
        "UPDATE device_records SET out_seq = NULL WHERE connector = ?1",
        [cid.as_str()],
    )
    .map_err(backend("forgetting a connector's sync state"))?;
    super::backfill::forget(conn, cid)
}

/// Calls `f(device, resource, t, value)` for every point record not folded yet (above
/// `sync_out.folded`; copies are not the log and are skipped), connector by connector in
/// seq order: the part of the point log that lives in outboxes (`series::replay`). Records
/// of devices or resources that no longer exist are skipped.
pub(super) fn replay_unfolded(
    conn: &Connection,
    mut f: impl FnMut(i64, i64, i64, Value),
) -> Result<()> {
    let op = "replaying the outbox";
    let outs = select_rows(
        conn,
        "SELECT connector, folded FROM sync_out WHERE folded < head",
        [],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
        op,
    )?;
    for (cid, folded) in outs {
        let cid = parse_col(
            cid,
            |s| ConnectorId::parse(s).ok(),
            "reading a connector id",
        )?;
        let folded = to_u64(folded);
        let rids: HashMap<ResourceName, i64> = resource_rows(conn, &cid)?
            .into_iter()
            .map(|(name, r)| (name, r.id))
            .collect();
        let mut ids: HashMap<Identity, Option<i64>> = HashMap::new();
        for p in partitions(conn, &cid)?
            .into_iter()
            .filter(|p| p.last > folded)
        {
            rows_from(conn, &cid, p.part, folded + 1, |row| {
                if row.copy {
                    return Ok(true);
                }
                for (seq, record) in (row.first..).zip(row.records) {
                    let Record::Point(point) = record else {
                        continue;
                    };
                    if seq <= folded {
                        continue;
                    }
                    let Some(rid) = rids.get(&point.resource) else {
                        continue; // a resource that is gone
                    };
                    let id = match ids.get(&point.device) {
                        Some(id) => *id,
                        None => {
                            let id = conn
                                .prepare_cached(
                                    "SELECT id FROM devices WHERE connector = ?1 AND identity = ?2",
                                )
                                .and_then(|mut s| {
                                    s.query_row([cid.as_str(), point.device.as_str()], |r| r.get(0))
                                        .optional()
                                })
                                .map_err(backend(op))?;
                            ids.insert(point.device.clone(), id);
                            id
                        }
                    };
                    let Some(device) = id else { continue };
                    f(device, *rid, point.t, point.value);
                }
                Ok(true)
            })?;
        }
    }
    Ok(())
}

/// The highest seq of the connector's outbox whose points are folded (0: none).
fn folded(conn: &Connection, cid: &ConnectorId) -> Result<u64> {
    Ok(conn
        .prepare_cached("SELECT folded FROM sync_out WHERE connector = ?1")
        .and_then(|mut s| {
            s.query_row([cid.as_str()], |r| r.get::<_, i64>(0))
                .optional()
        })
        .map_err(backend("reading the fold position"))?
        .map_or(0, to_u64))
}

pub(super) fn head(conn: &Connection, cid: &ConnectorId) -> Result<u64> {
    Ok(out_row(conn, cid)?.0)
}

pub(super) fn state(conn: &Connection, cid: &ConnectorId) -> Result<SyncDurable> {
    let (head, acked, lease, _) = out_row(conn, cid)?;
    let live_lease = live_lease(conn, cid)?;
    let held = held(conn, cid)?;
    let last_applied_at = conn
        .prepare_cached("SELECT last_applied_at FROM sync_in WHERE connector = ?1")
        .and_then(|mut s| {
            s.query_row([cid.as_str()], |r| r.get::<_, Option<i64>>(0))
                .optional()
        })
        .map_err(backend("reading the applied cursor"))?
        .flatten();
    let (partitions, bytes): (i64, i64) = conn
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM sync_partitions WHERE connector = ?1",
        )
        .and_then(|mut s| s.query_row([cid.as_str()], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(backend("measuring the outbox"))?;
    Ok(SyncDurable {
        head,
        acked,
        lease,
        live_lease,
        applied: held.applied,
        live: held.live,
        last_applied_at,
        partitions: to_u64(partitions),
        outbox_bytes: to_u64(bytes),
    })
}

/// Consecutive records of `[from, until)` (at most `max`), or the lost span holding `from`.
/// `from` may be any seq, inside a stored row too.
pub(super) fn read(
    conn: &Connection,
    cid: &ConnectorId,
    (from, until): (u64, u64),
    max: usize,
) -> Result<OutboxChunk> {
    let lost: Option<String> = conn
        .prepare_cached(
            "SELECT span FROM sync_lost WHERE connector = ?1 AND first_seq <= ?2 AND last_seq >= ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![cid.as_str(), to_i64(from)], |r| r.get(0))
                .optional()
        })
        .map_err(backend("reading lost spans"))?;
    if let Some(span) = lost {
        return Ok(OutboxChunk::Lost(
            serde_json::from_str(&span).map_err(json_err("reading a lost span"))?,
        ));
    }
    let mut out = Vec::new();
    let mut next = from;
    let wanted = |out: &Vec<Record>, next: u64| out.len() < max && next < until;
    for p in partitions(conn, cid)?
        .into_iter()
        .filter(|p| p.last >= from)
    {
        if p.first > next || !wanted(&out, next) {
            break;
        }
        rows_from(conn, cid, p.part, next, |row| {
            if row.first > next {
                return Ok(false); // a hole: only what is consecutive from `from`
            }
            let skip = usize::try_from(next - row.first).unwrap_or(usize::MAX);
            let room = (max - out.len()).min(usize::try_from(until - next).unwrap_or(usize::MAX));
            let before = out.len();
            out.extend(row.records.into_iter().skip(skip).take(room));
            next += (out.len() - before) as u64;
            Ok(next == row.last + 1 && wanted(&out, next))
        })?;
        if next <= p.last {
            break;
        }
    }
    Ok(OutboxChunk::Records(out))
}

/// The live lease `(from, upto)`, once a live lane was opened.
fn live_lease(conn: &Connection, cid: &ConnectorId) -> Result<Option<(u64, u64)>> {
    Ok(conn
        .prepare_cached("SELECT live_from, live_lease FROM sync_out WHERE connector = ?1")
        .and_then(|mut s| {
            s.query_row([cid.as_str()], |r| {
                Ok((to_u64(r.get(0)?), to_u64(r.get(1)?)))
            })
            .optional()
        })
        .map_err(backend("reading the live lease"))?
        .filter(|(from, _)| *from > 0))
}

/// Persists the live lease `[from, upto]`; a live lease of another `from` is folded into
/// the send lease first, so that nothing it pinned loses its pin.
pub(super) fn set_live_lease(
    conn: &Connection,
    cid: &ConnectorId,
    from: u64,
    upto: u64,
) -> Result<()> {
    ensure_out_row(conn, cid)?;
    conn.prepare_cached(
        "UPDATE sync_out SET
             lease = CASE WHEN live_from = ?2 THEN lease ELSE MAX(lease, live_lease) END,
             live_lease = CASE WHEN live_from = ?2 THEN MAX(live_lease, ?3) ELSE ?3 END,
             live_from = ?2
         WHERE connector = ?1",
    )
    .and_then(|mut s| s.execute(params![cid.as_str(), to_i64(from), to_i64(upto)]))
    .map_err(backend("persisting the live lease"))?;
    Ok(())
}

/// Opens a live lane at the head (docs/sync.md, "Two lanes"): re-appends the current record
/// of every device with a change not yet acknowledged, so that on the new lane devices
/// still go before the data that needs them, and leases the lane from the first of them
/// through `records` more. Returns `(from, upto)`.
pub(super) fn open_live(
    conn: &Connection,
    cid: &ConnectorId,
    records: u64,
    now: i64,
    partition_us: i64,
) -> Result<(u64, u64)> {
    let (head, acked, _, _) = out_row(conn, cid)?;
    let from = head + 1;
    let pending: Vec<Identity> = conn
        .prepare_cached(
            "SELECT identity FROM device_records WHERE connector = ?1 AND out_seq > ?2
             ORDER BY out_seq",
        )
        .and_then(|mut s| {
            s.query_map(params![cid.as_str(), to_i64(acked)], |r| {
                r.get::<_, String>(0)
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(backend("listing pending devices"))?
        .into_iter()
        .map(identity_col)
        .collect::<Result<_>>()?;
    devices::resend(conn, cid, &pending, now, partition_us, false)?;
    let upto = from - 1 + records;
    set_live_lease(conn, cid, from, upto)?;
    Ok((from, upto))
}

pub(super) fn set_lease(conn: &Connection, cid: &ConnectorId, upto: u64) -> Result<()> {
    ensure_out_row(conn, cid)?;
    conn.prepare_cached("UPDATE sync_out SET lease = MAX(lease, ?2) WHERE connector = ?1")
        .and_then(|mut s| s.execute(params![cid.as_str(), to_i64(upto)]))
        .map_err(backend("persisting the send lease"))?;
    Ok(())
}

/// Persists the acknowledgement and drops what it made useless: fully delivered partitions
/// (except the one appends go to) and lost spans the peer has recorded.
pub(super) fn acked(conn: &Connection, cid: &ConnectorId, applied: u64) -> Result<()> {
    ensure_out_row(conn, cid)?;
    conn.prepare_cached("UPDATE sync_out SET acked = MAX(acked, ?2) WHERE connector = ?1")
        .and_then(|mut s| s.execute(params![cid.as_str(), to_i64(applied)]))
        .map_err(backend("persisting an acknowledgement"))?;
    let (_, acked, _, last_part) = out_row(conn, cid)?;
    conn.prepare_cached("DELETE FROM sync_lost WHERE connector = ?1 AND last_seq <= ?2")
        .and_then(|mut s| s.execute(params![cid.as_str(), to_i64(acked)]))
        .map_err(backend("forgetting delivered lost spans"))?;
    let droppable: Vec<Part> = partitions(conn, cid)?
        .into_iter()
        .filter(|p| p.last <= acked && p.part < last_part)
        .collect();
    let folded_at = folded(conn, cid)?;
    if droppable.last().is_some_and(|p| p.last > folded_at) {
        // Their points are only in these records yet (the outbox is the log).
        super::series::fold_unfolded_outbox(conn)?;
    }
    for p in droppable {
        drop_partition(conn, cid, p.part)?;
    }
    Ok(())
}

/// One retention pass over a connector: the outbox (Source) and pending points (Target).
pub(super) fn expire(
    conn: &Connection,
    cid: &ConnectorId,
    retention: Retention,
    partition_us: i64,
) -> Result<ExpiryReport> {
    let mut report = ExpiryReport::default();
    let cutoff = retention.now.saturating_sub(retention.keep_us);
    let (_, acked, lease, _) = out_row(conn, cid)?;
    let pin = acked.max(lease);
    let live_pin = live_lease(conn, cid)?;
    let parts = partitions(conn, cid)?;
    let mut total: u64 = parts.iter().map(|p| p.bytes).sum();
    let expiring = parts.first().is_some_and(|p| {
        p.part.saturating_add(1).saturating_mul(partition_us) <= cutoff
            || retention.budget_bytes.is_some_and(|b| total > b)
    });
    if expiring && folded(conn, cid)? < parts.last().map_or(0, |p| p.last) {
        // Dropped records may hold the only copy of unfolded points (the outbox is the log).
        super::series::fold_unfolded_outbox(conn)?;
    }
    let mut runs: Vec<Vec<Part>> = Vec::new();
    for p in parts {
        let end = p.part.saturating_add(1).saturating_mul(partition_us);
        let over_budget = retention.budget_bytes.is_some_and(|b| total > b);
        if end > cutoff && !over_budget {
            break;
        }
        if p.last <= acked || p.last < p.first {
            total -= p.bytes;
            drop_partition(conn, cid, p.part)?;
            report.partitions_dropped += 1;
            continue;
        }
        if p.first <= pin || live_pin.is_some_and(|(f, u)| p.first <= u && p.last >= f) {
            // Possibly applied on the Target without this site knowing: kept until acked.
            continue;
        }
        total -= p.bytes;
        match runs.last_mut() {
            Some(run)
                if run.len() < MAX_PARTS_PER_SPAN
                    && run.last().is_some_and(|l| l.last + 1 == p.first) =>
            {
                run.push(p)
            }
            _ => runs.push(vec![p]),
        }
    }
    let mut resend = BTreeSet::new();
    for run in runs {
        let (span, changed) = summarize(conn, cid, &run)?;
        resend.extend(changed);
        report.points_lost += span.points();
        conn.prepare_cached(
            "INSERT INTO sync_lost (connector, first_seq, last_seq, span, lost_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut s| {
            s.execute(params![
                cid.as_str(),
                to_i64(span.first_seq),
                to_i64(span.last_seq),
                serde_json::to_string(&span)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
                retention.now
            ])
        })
        .map_err(backend("recording a lost span"))?;
        tracing::warn!(connector = %cid, first = span.first_seq, last = span.last_seq,
            points = span.points(), "retention dropped undelivered records");
        for p in &run {
            drop_partition(conn, cid, p.part)?;
            report.partitions_dropped += 1;
        }
    }
    if !resend.is_empty() {
        // Device changes are never lost: the latest record of each device whose undelivered
        // change was dropped goes out again (docs/sync.md).
        let ids: Vec<Identity> = resend.into_iter().collect();
        let n = devices::resend(conn, cid, &ids, retention.now, partition_us, false)?;
        tracing::info!(connector = %cid, devices = n,
            "re-queued the latest record of devices whose undelivered changes expired");
    }
    report.pending_expired = expire_pending(conn, cid, cutoff, retention.now)?;
    Ok(report)
}

/// A row of (resource, points, devices, first t, last t): a span of points per resource.
fn span_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, i64, i64, i64, i64)> {
    Ok((
        r.get::<_, String>(0)?,
        r.get::<_, i64>(1)?,
        r.get::<_, i64>(2)?,
        r.get::<_, i64>(3)?,
        r.get::<_, i64>(4)?,
    ))
}

/// Counters of one resource's points in a lost span.
struct Loss {
    points: u64,
    devices: BTreeSet<Identity>,
    from: i64,
    until: i64,
}

/// The exact summary of the records of a run of partitions about to be dropped, and the
/// devices whose changes are among them; row by row, so memory holds one row and the
/// distinct devices.
fn summarize(
    conn: &Connection,
    cid: &ConnectorId,
    run: &[Part],
) -> Result<(LostSpan, Vec<Identity>)> {
    let mut per: BTreeMap<ResourceName, Loss> = BTreeMap::new();
    let mut changed: BTreeSet<Identity> = BTreeSet::new();
    let mut device_changes = 0;
    for p in run {
        rows_from(conn, cid, p.part, 0, |row| {
            for record in row.records {
                match record {
                    Record::Point(pt) => {
                        let l = per.entry(pt.resource).or_insert(Loss {
                            points: 0,
                            devices: BTreeSet::new(),
                            from: i64::MAX,
                            until: i64::MIN,
                        });
                        l.points += 1;
                        l.from = l.from.min(pt.t);
                        l.until = l.until.max(pt.t);
                        l.devices.insert(pt.device);
                    }
                    Record::Device(d) => {
                        device_changes += 1;
                        changed.insert(d.identity);
                    }
                }
            }
            Ok(true)
        })?;
    }
    let resources = per
        .into_iter()
        .map(|(resource, l)| ResourceLoss {
            resource,
            points: l.points,
            devices: l.devices.len() as u64,
            from_us: l.from,
            until_us: l.until,
        })
        .collect();
    Ok((
        LostSpan {
            first_seq: run.first().map_or(0, |p| p.first),
            last_seq: run.last().map_or(0, |p| p.last),
            resources,
            device_changes,
        },
        changed.into_iter().collect(),
    ))
}

fn expire_pending(conn: &Connection, cid: &ConnectorId, cutoff: i64, now: i64) -> Result<u64> {
    let rows = select_rows(
        conn,
        "SELECT resource, COUNT(*), COUNT(DISTINCT device), MIN(t), MAX(t) FROM sync_pending
         WHERE connector = ?1 AND received_at <= ?2 GROUP BY resource",
        params![cid.as_str(), cutoff],
        span_row,
        "expiring pending points",
    )?;
    let mut total = 0;
    for (resource, points, devices, from, until) in rows {
        total += to_u64(points);
        insert_gap(
            conn,
            cid,
            &GapRow {
                resource: resource_col(resource, "reading a resource")?,
                devices: to_u64(devices),
                points: to_u64(points),
                from_us: from,
                until_us: until,
                detected_at: now,
                seqs: None,
                reason: GapReason::PendingExpired,
            },
        )?;
    }
    if total > 0 {
        conn.prepare_cached("DELETE FROM sync_pending WHERE connector = ?1 AND received_at <= ?2")
            .and_then(|mut s| s.execute(params![cid.as_str(), cutoff]))
            .map_err(backend("expiring pending points"))?;
        tracing::warn!(connector = %cid, points = total,
            "points for a resource this connector never got expired");
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------
// Receiving side.

fn insert_gap(conn: &Connection, cid: &ConnectorId, g: &GapRow) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO sync_gaps (connector, resource, devices, points, from_us, until_us,
             detected_at, first_seq, last_seq, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .and_then(|mut s| {
        s.execute(params![
            cid.as_str(),
            g.resource.as_str(),
            to_i64(g.devices),
            to_i64(g.points),
            g.from_us,
            g.until_us,
            g.detected_at,
            g.seqs.map(|s| to_i64(s.0)),
            g.seqs.map(|s| to_i64(s.1)),
            g.reason.as_str()
        ])
    })
    .map_err(backend("recording a gap"))?;
    Ok(())
}

pub(super) fn gaps(conn: &Connection, cid: &ConnectorId) -> Result<Vec<GapRow>> {
    let rows = select_rows(
        conn,
        "SELECT resource, devices, points, from_us, until_us, detected_at, first_seq,
             last_seq, reason
         FROM sync_gaps WHERE connector = ?1 ORDER BY id",
        [cid.as_str()],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, Option<i64>>(7)?,
                r.get::<_, String>(8)?,
            ))
        },
        "listing gaps",
    )?;
    rows.into_iter()
        .map(
            |(res, devices, points, from, until, at, first, last, reason)| {
                Ok(GapRow {
                    resource: resource_col(res, "reading a resource")?,
                    devices: to_u64(devices),
                    points: to_u64(points),
                    from_us: from,
                    until_us: until,
                    detected_at: at,
                    seqs: first.zip(last).map(|(f, l)| (to_u64(f), to_u64(l))),
                    reason: parse_col(reason, GapReason::parse, "reading a gap reason")?,
                })
            },
        )
        .collect()
}

/// A value as the Target's resource format wants it, if it fits.
pub(super) fn fit(format: Format, name: &ResourceName, v: Value) -> Option<Value> {
    match (format, v) {
        (Format::Number, v @ Value::Number(_))
        | (Format::Integer, v @ Value::Integer(_))
        | (Format::String, v @ Value::String(_))
        | (Format::Boolean, v @ Value::Boolean(_))
        | (Format::Json, v @ Value::Json(_)) => Some(v),
        // A whole number sent as a float (a Source resource of format `number`).
        (Format::Integer, Value::Number(x))
            if x.fract() == 0.0 && x.abs() < 9.007_199_254_740_992e15 =>
        {
            Some(Value::Integer(x as i64))
        }
        (format, v) => format.check(name, &v.to_json()).ok(),
    }
}

fn value_format(v: &Value) -> Format {
    match v {
        Value::Number(_) => Format::Number,
        Value::Integer(_) => Format::Integer,
        Value::String(_) => Format::String,
        Value::Boolean(_) => Format::Boolean,
        Value::Json(_) => Format::Json,
    }
}

/// Counters of points that could not be stored, per resource, for a gap row.
#[derive(Default)]
struct Refused {
    points: u64,
    devices: BTreeSet<Identity>,
    from: i64,
    until: i64,
}

/// Writes received points into the Target's series, creating devices as needed.
struct PointWriter {
    /// Devices of this apply found deleted, until a change of theirs arrives (the writer's
    /// cache keeps only rows that exist).
    deleted: HashSet<Identity>,
    /// Points of deleted devices, dropped.
    dropped: u64,
    refused: BTreeMap<ResourceName, Refused>,
}

impl PointWriter {
    fn new() -> Self {
        Self {
            deleted: HashSet::new(),
            dropped: 0,
            refused: BTreeMap::new(),
        }
    }

    /// The device's row, created if missing; `None` when the device was deleted (its record
    /// is a tombstone), whose points are then dropped as its delete dropped the others.
    /// Known rows come from the writer's cache (`device_ids.rs`), without a `SELECT`.
    fn device(
        &mut self,
        conn: &Connection,
        cid: &ConnectorId,
        identity: &Identity,
        now: i64,
    ) -> Result<Option<i64>> {
        if let Some(row) = device_ids::lookup(conn, cid, identity)? {
            return Ok(Some(row.id));
        }
        if self.deleted.contains(identity) {
            self.dropped += 1;
            return Ok(None);
        }
        if devices::is_deleted(conn, cid, identity)? {
            self.deleted.insert(identity.clone());
            self.dropped += 1;
            return Ok(None);
        }
        conn.prepare_cached(
            "INSERT INTO devices (connector, identity, created_at) VALUES (?1, ?2, ?3)",
        )
        .and_then(|mut s| s.execute(params![cid.as_str(), identity.as_str(), now]))
        .map_err(backend("creating a replicated device"))?;
        let id = conn.last_insert_rowid();
        device_ids::remember(cid, identity, id);
        Ok(Some(id))
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        conn: &Connection,
        cid: &ConnectorId,
        (rid, format, name): (i64, Format, ResourceName),
        identity: Identity,
        t: i64,
        value: Value,
        now: i64,
        known: Option<i64>,
    ) -> Result<()> {
        let Some(value) = fit(format, &name, value) else {
            let r = self.refused.entry(name).or_insert(Refused {
                from: i64::MAX,
                until: i64::MIN,
                ..Default::default()
            });
            r.points += 1;
            r.from = r.from.min(t);
            r.until = r.until.max(t);
            r.devices.insert(identity);
            return Ok(());
        };
        let device = match known {
            Some(id) => id,
            None => match self.device(conn, cid, &identity, now)? {
                Some(id) => id,
                None => return Ok(()),
            },
        };
        let names = (
            cid,
            std::borrow::Cow::Owned(identity),
            std::borrow::Cow::Owned(name),
        );
        super::series::append(conn, (device, rid), names, t, value)
    }

    fn finish(self, conn: &Connection, cid: &ConnectorId, now: i64) -> Result<()> {
        if self.dropped > 0 {
            tracing::info!(connector = %cid, points = self.dropped,
                "dropped replicated points of devices deleted on either side");
        }
        for (resource, r) in self.refused {
            tracing::warn!(connector = %cid, %resource, points = r.points,
                "replicated values do not fit this resource's format; recorded as a gap");
            insert_gap(
                conn,
                cid,
                &GapRow {
                    resource,
                    devices: r.devices.len() as u64,
                    points: r.points,
                    from_us: r.from,
                    until_us: r.until,
                    detected_at: now,
                    seqs: None,
                    reason: GapReason::Format,
                },
            )?;
        }
        Ok(())
    }
}

/// Applies received batches and gaps in order, with the cursor, in the caller's transaction.
pub(super) fn apply(
    conn: &Connection,
    cid: &ConnectorId,
    items: Vec<Inbound>,
    now: i64,
) -> Result<u64> {
    super::connector_exists(conn, cid)?;
    let mut held = held(conn, cid)?;
    let resources = resource_rows(conn, cid)?;
    let mut writer = PointWriter::new();
    let mut pending = conn
        .prepare_cached(
            "INSERT INTO sync_pending (connector, resource, device, t, format, v, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (connector, resource, device, t)
             DO UPDATE SET format = excluded.format, v = excluded.v",
        )
        .map_err(backend("keeping pending points"))?;
    // Points come grouped per series: the resource of the point before, without a lookup.
    let mut last_resource: Option<(ResourceName, Option<&ResourceRow>)> = None;
    for item in items {
        let (first, last, opens) = match &item {
            Inbound::Records(a) => (a.first_seq, a.last_seq, a.opens),
            Inbound::Gap(g) => (g.first_seq, g.last_seq, g.opens),
        };
        // The compare-and-set: adjacent to what is applied and disjoint from it, or the start
        // of the live lane above it (docs/sync.md, "Two lanes").
        if !held.add(first, last, opens) {
            return Err(StoreError::SyncCursor {
                connector: cid.clone(),
                cursor: held.applied,
                first,
            });
        }
        match item {
            Inbound::Records(a) => {
                // The device rows of the batch's points, from the writer's cache at once
                // (`device_ids::rows_of`); not for a batch that changes devices itself, whose
                // points must see those changes in order.
                let known = if a.records.iter().all(|r| matches!(r, Record::Point(_))) {
                    device_ids::rows_of(
                        conn,
                        cid,
                        a.records.iter().filter_map(|r| match r {
                            Record::Point(p) => Some(&p.device),
                            Record::Device(_) => None,
                        }),
                    )?
                } else {
                    Vec::new()
                };
                for (i, record) in a.records.into_iter().enumerate() {
                    match record {
                        Record::Point(p) => {
                            let row = match &last_resource {
                                Some((name, row)) if *name == p.resource => *row,
                                _ => {
                                    let row = resources.get(&p.resource);
                                    last_resource = Some((p.resource.clone(), row));
                                    row
                                }
                            };
                            match row {
                                Some(r) => writer.write(
                                    conn,
                                    cid,
                                    (r.id, r.format, p.resource),
                                    p.device,
                                    p.t,
                                    p.value,
                                    now,
                                    known.get(i).copied().flatten().map(|row| row.id),
                                )?,
                                None => {
                                    // The device exists at once; its points wait for the resource.
                                    if writer.device(conn, cid, &p.device, now)?.is_none() {
                                        continue;
                                    }
                                    pending
                                        .execute(params![
                                            cid.as_str(),
                                            p.resource.as_str(),
                                            p.device.as_str(),
                                            p.t,
                                            value_format(&p.value).as_str(),
                                            value_to_sql(&p.value),
                                            now
                                        ])
                                        .map_err(backend("keeping pending points"))?;
                                }
                            }
                        }
                        Record::Device(d) => {
                            // Authenticated, so never forged; a record this version cannot
                            // accept is kept out of the registry, loudly, and the stream
                            // goes on (the drift check will show the device).
                            if let Err(e) = d.check_received(u64::try_from(now).unwrap_or(0)) {
                                tracing::error!(connector = %cid, error = %e,
                                    "refused a replicated device change");
                                continue;
                            }
                            writer.deleted.remove(&d.identity);
                            devices::apply_remote(conn, cid, &d, now)?;
                        }
                    }
                }
            }
            Inbound::Gap(g) => {
                for loss in &g.span.resources {
                    insert_gap(
                        conn,
                        cid,
                        &GapRow {
                            resource: loss.resource.clone(),
                            devices: loss.devices,
                            points: loss.points,
                            from_us: loss.from_us,
                            until_us: loss.until_us,
                            detected_at: now,
                            seqs: Some((g.first_seq, g.last_seq)),
                            reason: GapReason::Retention,
                        },
                    )?;
                }
                tracing::warn!(connector = %cid, first = g.first_seq, last = g.last_seq,
                    points = g.span.points(), exact = g.exact, "recorded a gap: the Source's retention dropped these");
            }
        }
    }
    writer.finish(conn, cid, now)?;
    #[cfg(test)]
    super::crash_tests::failpoint("apply");
    let (live_from, live_to) = held.live.unwrap_or((0, 0));
    conn.prepare_cached(
        "INSERT INTO sync_in (connector, applied, last_applied_at, live_from, live_to)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (connector) DO UPDATE SET applied = excluded.applied,
             last_applied_at = excluded.last_applied_at, live_from = excluded.live_from,
             live_to = excluded.live_to",
    )
    .and_then(|mut s| {
        s.execute(params![
            cid.as_str(),
            to_i64(held.applied),
            now,
            to_i64(live_from),
            to_i64(live_to)
        ])
    })
    .map_err(backend("moving the applied cursor"))?;
    Ok(held.applied)
}

/// What the receiving side holds: the applied cursor and the live lane.
fn held(conn: &Connection, cid: &ConnectorId) -> Result<Held> {
    let (applied, from, to) = conn
        .prepare_cached("SELECT applied, live_from, live_to FROM sync_in WHERE connector = ?1")
        .and_then(|mut s| {
            s.query_row([cid.as_str()], |r| {
                Ok((to_u64(r.get(0)?), to_u64(r.get(1)?), to_u64(r.get(2)?)))
            })
            .optional()
        })
        .map_err(backend("reading the applied cursor"))?
        .unwrap_or((0, 0, 0));
    Held::from_parts(applied, from, to).ok_or_else(|| StoreError::Backend {
        op: "reading the applied cursor",
        source: format!("applied {applied} and live lane {from}..={to} overlap").into(),
    })
}

/// Applies the points kept for resource `name`, which has just been created.
pub(super) fn adopt_pending(
    conn: &Connection,
    cid: &ConnectorId,
    name: &ResourceName,
    now: i64,
) -> Result<u64> {
    let resources = resource_rows(conn, cid)?;
    let Some(r) = resources.get(name) else {
        return Ok(0);
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT device, t, format, v FROM sync_pending WHERE connector = ?1 AND resource = ?2
             ORDER BY device, t",
        )
        .map_err(backend("reading pending points"))?;
    let mut rows = stmt
        .query(params![cid.as_str(), name.as_str()])
        .map_err(backend("reading pending points"))?;
    let mut kept = Vec::new();
    while let Some(row) = rows.next().map_err(backend("reading pending points"))? {
        let device: String = row.get(0).map_err(backend("reading pending points"))?;
        let t: i64 = row.get(1).map_err(backend("reading pending points"))?;
        let format: String = row.get(2).map_err(backend("reading pending points"))?;
        let format = parse_col(format, |s| Format::parse(s).ok(), "reading a format")?;
        let v = value_from_sql(
            format,
            row.get_ref(3).map_err(backend("reading pending points"))?,
        );
        kept.push((identity_col(device)?, t, v));
    }
    drop(rows);
    let n = kept.len() as u64;
    let mut writer = PointWriter::new();
    for (device, t, v) in kept {
        writer.write(
            conn,
            cid,
            (r.id, r.format, name.clone()),
            device,
            t,
            v,
            now,
            None,
        )?;
    }
    writer.finish(conn, cid, now)?;
    conn.prepare_cached("DELETE FROM sync_pending WHERE connector = ?1 AND resource = ?2")
        .and_then(|mut s| s.execute(params![cid.as_str(), name.as_str()]))
        .map_err(backend("clearing pending points"))?;
    if n > 0 {
        tracing::info!(connector = %cid, resource = %name, points = n,
            "applied points that arrived before the resource existed");
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    use proto::model::{Format, Value};
    use proto::sync::{
        Apply, GapRecord, LostSpan, Point as SyncPoint, Record, ResourceLoss, codec,
    };
    use serde_json::json;

    use super::super::fixtures::*;
    use crate::*;

    const PART: i64 = 1_000;
    /// Seqs the pairing of a paired fixture takes: the snapshots of `dev1` and `dev2`.
    const SNAP: u64 = 2;

    /// A store whose clock the test moves, with a connector holding `temp` (remote-synced)
    /// and `mode` (not), and device `dev1`.
    async fn fixture(paired: bool) -> (tempfile::TempDir, SqliteStore, Arc<AtomicI64>) {
        let dir = tempfile::tempdir().unwrap();
        let now = Arc::new(AtomicI64::new(0));
        let mut cfg = SqliteConfig::new(dir.path().join("site.db"));
        let clock = Arc::clone(&now);
        cfg.clock = Clock::new(move || clock.load(Ordering::SeqCst));
        cfg.sync_partition_us = PART;
        let store = SqliteStore::open(cfg).unwrap();
        source_plant(&store, paired).await;
        if paired {
            assert_eq!(store.outbox_head(&cid()).await.unwrap(), SNAP);
        }
        (dir, store, now)
    }

    fn pts(dev: &str, t: i64, temp: f64) -> PointsIn {
        PointsIn {
            identity: id(dev),
            t,
            values: vec![(name("temp"), json!(temp)), (name("mode"), json!(1))],
        }
    }

    fn point(dev: &str, res: &str, t: i64, v: f64) -> Record {
        Record::Point(SyncPoint {
            device: id(dev),
            resource: name(res),
            t,
            value: Value::Number(v),
        })
    }

    async fn records(store: &SqliteStore, from: u64, max: usize) -> Vec<Record> {
        match store.outbox_read(&cid(), from, max).await.unwrap() {
            OutboxChunk::Records(r) => r,
            OutboxChunk::Lost(span) => panic!("lost {span:?}"),
        }
    }

    #[tokio::test]
    async fn only_remote_synced_points_of_a_paired_source_are_queued() {
        let (_dir, unpaired, _) = fixture(false).await;
        unpaired
            .ingest(&cid(), vec![pts("dev1", 1, 1.0)])
            .await
            .unwrap();
        assert_eq!(unpaired.outbox_head(&cid()).await.unwrap(), 0);

        let (_dir, store, _) = fixture(true).await;
        store
            .ingest(&cid(), vec![pts("dev1", 5, 1.5), pts("dev2", 6, 2.5)])
            .await
            .unwrap();
        // A refused request queues nothing either.
        let bad = PointsIn {
            identity: id("dev1"),
            t: 7,
            values: vec![(name("temp"), json!("hot"))],
        };
        assert!(
            store
                .ingest(&cid(), vec![pts("dev1", 7, 3.0), bad])
                .await
                .is_err()
        );
        store
            .ingest(&cid(), vec![pts("dev2", 8, 4.5)])
            .await
            .unwrap();
        assert_eq!(store.outbox_head(&cid()).await.unwrap(), SNAP + 3);
        // Pairing queued the registry first: every device, before any data.
        let snapshots: Vec<String> = records(&store, 1, 2)
            .await
            .into_iter()
            .map(|r| match r {
                Record::Device(d) if d.is_live() => d.identity.to_string(),
                other => panic!("expected a device snapshot, got {other:?}"),
            })
            .collect();
        assert_eq!(snapshots, ["dev1", "dev2"]);
        assert_eq!(
            records(&store, SNAP + 1, 10).await,
            vec![
                point("dev1", "temp", 5, 1.5),
                point("dev2", "temp", 6, 2.5),
                point("dev2", "temp", 8, 4.5)
            ]
        );
        assert_eq!(
            records(&store, SNAP + 2, 1).await,
            vec![point("dev2", "temp", 6, 2.5)]
        );
        assert!(records(&store, SNAP + 4, 10).await.is_empty());
    }

    /// The sync driver hears of an append as soon as its commit is durable, before the
    /// writing caller hears back; with the records to send already where its read finds
    /// them. A refused
    /// request, or one that queues nothing, wakes nobody; a second waker is refused.
    #[tokio::test]
    async fn a_durable_append_wakes_the_driver_before_its_writer_hears_back() {
        let (_dir, store, _) = fixture(true).await;
        type Woken = std::sync::Mutex<Vec<(ConnectorId, Option<u64>)>>;
        let woken: Arc<Woken> = Arc::default();
        let recent = Arc::clone(&store.recent);
        let seen = Arc::clone(&woken);
        assert!(store.wake_on_append(Arc::new(move |c: &ConnectorId| {
            // What the driver's read finds at this instant: the head the append left.
            let head = recent.head(c);
            seen.lock().unwrap().push((c.clone(), head));
        })));
        assert!(!store.wake_on_append(Arc::new(|_: &ConnectorId| {})));
        let bad = PointsIn {
            identity: id("dev1"),
            t: 7,
            values: vec![(name("temp"), json!("hot"))],
        };
        assert!(store.ingest(&cid(), vec![bad]).await.is_err());
        store
            .ingest(
                &cid(),
                vec![PointsIn {
                    identity: id("dev1"),
                    t: 4,
                    values: vec![(name("mode"), json!(2))],
                }],
            )
            .await
            .unwrap();
        assert!(
            woken.lock().unwrap().is_empty(),
            "nothing queued, nobody woken"
        );
        store
            .ingest(&cid(), vec![pts("dev1", 5, 1.5), pts("dev2", 6, 2.5)])
            .await
            .unwrap();
        assert_eq!(*woken.lock().unwrap(), vec![(cid(), Some(SNAP + 2))]);
    }

    /// The read after a wake-up comes from the records the latest commits appended, kept in
    /// memory (`recent.rs`): it must give exactly what the outbox holds, in its order, with
    /// the head, and nothing of a refused request or of dropped records.
    #[tokio::test]
    async fn the_read_after_an_append_gives_what_the_outbox_holds() {
        let (_dir, store, now) = fixture(true).await;
        let head_read = |from| {
            let store = &store;
            async move {
                let read = store.outbox_head_read(&cid(), from, 4096).await.unwrap();
                match read.chunk {
                    OutboxChunk::Records(r) => {
                        // A payload is exactly the records given.
                        if let Some(payload) = &read.payload {
                            assert_eq!(&codec::decode(payload).unwrap(), &r);
                        }
                        (read.head, r, read.payload.is_some())
                    }
                    OutboxChunk::Lost(span) => panic!("lost {span:?}"),
                }
            }
        };
        // The pairing's snapshots, as the driver takes them.
        assert_eq!(head_read(1).await.0, SNAP);
        // Out of the codec's order: the outbox stores them by device, resource and time.
        let request = vec![
            pts("dev2", 9, 1.0),
            pts("dev1", 8, 2.0),
            pts("dev2", 3, 3.0),
            pts("dev1", 5, 4.0),
        ];
        store.ingest(&cid(), request.clone()).await.unwrap();
        let stored = records(&store, SNAP + 1, 4096).await;
        assert_eq!(stored.len(), 4);
        // With the row the request wrote: the sender's payload.
        assert_eq!(head_read(SNAP + 1).await, (SNAP + 4, stored.clone(), true));
        // Taken: the next read of the same seqs is the database's, and the same.
        assert_eq!(
            head_read(SNAP + 3).await,
            (SNAP + 4, stored[2..].to_vec(), false)
        );
        // Two commits in a row: the second continues the first.
        store
            .ingest(&cid(), vec![pts("dev1", 20, 5.0)])
            .await
            .unwrap();
        store
            .ingest(&cid(), vec![pts("dev2", 21, 6.0)])
            .await
            .unwrap();
        let stored = records(&store, SNAP + 5, 4096).await;
        assert_eq!(stored.len(), 2);
        // Two rows: no payload.
        assert_eq!(head_read(SNAP + 5).await, (SNAP + 6, stored, false));
        // A refused request appends nothing.
        let bad = PointsIn {
            identity: id("dev1"),
            t: 30,
            values: vec![(name("temp"), json!("hot"))],
        };
        assert!(
            store
                .ingest(&cid(), vec![pts("dev1", 29, 7.0), bad])
                .await
                .is_err()
        );
        assert_eq!(head_read(SNAP + 7).await, (SNAP + 6, vec![], false));
        // Records dropped since they were appended are not given from memory: everything
        // acknowledged, a later partition appended and then lost to retention.
        store.outbox_acked(&cid(), SNAP + 6).await.unwrap();
        now.store(5 * PART, Ordering::SeqCst);
        store
            .ingest(&cid(), vec![pts("dev1", 40, 8.0)])
            .await
            .unwrap();
        let retention = Retention {
            now: 20 * PART,
            keep_us: PART,
            budget_bytes: None,
        };
        store.sync_expire(&cid(), retention).await.unwrap();
        let read = store
            .outbox_head_read(&cid(), SNAP + 7, 4096)
            .await
            .unwrap();
        assert_eq!(read.head, SNAP + 7);
        assert!(
            matches!(read.chunk, OutboxChunk::Lost(_)),
            "{:?}",
            read.chunk
        );
    }

    /// Acknowledges the pairing's snapshots (dropping their partition, the clock's zero), then
    /// appends two points per partition for partitions `1..=n`: seqs SNAP+2p-1 and SNAP+2p.
    async fn two_per_partition(store: &SqliteStore, now: &AtomicI64, n: i64) {
        for p in 1..=n {
            now.store(p * PART, Ordering::SeqCst);
            let q = p - 1;
            let dev = if q % 2 == 0 { "dev1" } else { "dev2" };
            store
                .ingest(
                    &cid(),
                    vec![pts(dev, q * 10, 1.0), pts("dev1", q * 10 + 1, 2.0)],
                )
                .await
                .unwrap();
            if p == 1 {
                store.outbox_acked(&cid(), SNAP).await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn a_restart_cuts_a_lease_that_ran_ahead_of_the_head() {
        let (dir, store, _) = fixture(true).await;
        store.outbox_lease(&cid(), SNAP + 1_000).await.unwrap();
        assert_eq!(store.sync_state(&cid()).await.unwrap().lease, SNAP + 1_000);
        drop(store);
        let store = SqliteStore::open(SqliteConfig::new(dir.path().join("site.db"))).unwrap();
        // Only what existed can have been sent: appends after the restart are not pinned.
        assert_eq!(store.sync_state(&cid()).await.unwrap().lease, SNAP);
    }

    #[tokio::test]
    async fn acknowledged_partitions_are_dropped_except_the_one_being_appended() {
        let (_dir, store, now) = fixture(true).await;
        two_per_partition(&store, &now, 3).await;
        assert_eq!(store.sync_state(&cid()).await.unwrap().partitions, 3);
        store.outbox_acked(&cid(), SNAP + 3).await.unwrap();
        let st = store.sync_state(&cid()).await.unwrap();
        assert_eq!(
            (st.acked, st.partitions),
            (SNAP + 3, 2),
            "partition 1 (SNAP+1..=SNAP+2) dropped"
        );
        store.outbox_acked(&cid(), SNAP + 6).await.unwrap();
        assert_eq!(store.sync_state(&cid()).await.unwrap().partitions, 1);
        assert_eq!(records(&store, SNAP + 5, 10).await.len(), 2);
        // The clock stepping back never reopens an older partition.
        now.store(0, Ordering::SeqCst);
        store
            .ingest(&cid(), vec![pts("dev1", 100, 1.0)])
            .await
            .unwrap();
        assert_eq!(records(&store, SNAP + 5, 10).await.len(), 3);
    }

    #[tokio::test]
    async fn expiry_keeps_the_lease_and_reports_exact_lost_spans() {
        let (_dir, store, now) = fixture(true).await;
        two_per_partition(&store, &now, 5).await;
        store.outbox_acked(&cid(), SNAP + 1).await.unwrap();
        store.outbox_lease(&cid(), SNAP + 3).await.unwrap();
        // Partitions 0..=3 are past the retention at 5·PART + 0; partition 4 is not.
        let report = store
            .sync_expire(
                &cid(),
                Retention {
                    now: 6 * PART,
                    keep_us: PART,
                    budget_bytes: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(report.points_lost, 4, "{report:?}");
        assert_eq!(report.partitions_dropped, 2);
        // (acked, lease] = 2..=3 survives, with the rest of its partitions. A request's
        // records are in the codec's order (by device, then time): dev1's point first.
        assert_eq!(
            records(&store, SNAP + 2, 10).await,
            vec![
                point("dev1", "temp", 1, 2.0),
                point("dev1", "temp", 11, 2.0),
                point("dev2", "temp", 10, 1.0)
            ]
        );
        let OutboxChunk::Lost(span) = store.outbox_read(&cid(), SNAP + 6, 10).await.unwrap() else {
            panic!("seq 6 should be lost");
        };
        assert_eq!((span.first_seq, span.last_seq), (SNAP + 5, SNAP + 8));
        assert_eq!(
            span.resources,
            vec![ResourceLoss {
                resource: name("temp"),
                points: 4,
                devices: 2,
                from_us: 20,
                until_us: 31,
            }]
        );
        assert_eq!(records(&store, SNAP + 9, 10).await.len(), 2);
        // Once the peer has recorded the gap, the span is forgotten.
        store.outbox_acked(&cid(), SNAP + 8).await.unwrap();
        assert!(records(&store, SNAP + 6, 10).await.is_empty());
    }

    #[tokio::test]
    async fn a_live_lane_starts_with_pending_devices_and_retention_keeps_its_lease() {
        let (_dir, store, now) = fixture(true).await;
        // Pairing queued both devices, not acknowledged yet: the new lane starts with them.
        assert_eq!(
            store.outbox_open_live(&cid(), SNAP).await.unwrap(),
            (SNAP + 1, 2 * SNAP)
        );
        let lane = records(&store, SNAP + 1, 10).await;
        assert_eq!(lane.len(), 2);
        assert!(lane.iter().all(|r| matches!(r, Record::Device(_))));
        let d = store.sync_state(&cid()).await.unwrap();
        assert_eq!(
            (d.head, d.live_lease),
            (2 * SNAP, Some((SNAP + 1, 2 * SNAP)))
        );
        store.outbox_acked(&cid(), 2 * SNAP).await.unwrap();
        // A lane opened later: the first live lease folds into the send lease.
        two_per_partition(&store, &now, 5).await;
        let base = 2 * SNAP;
        store
            .outbox_live_lease(&cid(), base + 5, base + 6)
            .await
            .unwrap();
        let d = store.sync_state(&cid()).await.unwrap();
        assert_eq!(
            (d.lease, d.live_lease),
            (2 * SNAP, Some((base + 5, base + 6)))
        );
        // Partitions 1..=4 are past the retention; the live lease (partition 3) is kept, the
        // unleased ones around it are lost exactly.
        let report = store
            .sync_expire(
                &cid(),
                Retention {
                    now: 6 * PART,
                    keep_us: PART,
                    budget_bytes: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(report.points_lost, 6, "{report:?}");
        let OutboxChunk::Lost(span) = store.outbox_read(&cid(), base + 1, 10).await.unwrap() else {
            panic!("the partitions before the live lease should be lost");
        };
        assert_eq!((span.first_seq, span.last_seq), (base + 1, base + 4));
        assert_eq!(
            records(&store, base + 5, 2).await,
            vec![
                point("dev1", "temp", 20, 1.0),
                point("dev1", "temp", 21, 2.0)
            ]
        );
        let OutboxChunk::Lost(span) = store.outbox_read(&cid(), base + 7, 10).await.unwrap() else {
            panic!("the partition after the live lease should be lost");
        };
        assert_eq!((span.first_seq, span.last_seq), (base + 7, base + 8));
    }

    #[tokio::test]
    async fn a_live_lane_is_applied_above_the_backlog_once_and_merges() {
        let (_dir, store, _) = fixture(false).await;
        let p = |t: i64| point("dev1", "temp", t, t as f64);
        let live = |first: u64, t: i64| {
            Inbound::Records(Apply {
                opens: true,
                first_seq: first,
                last_seq: first,
                records: vec![p(t)],
            })
        };
        store
            .sync_apply(&cid(), vec![batch(1, vec![p(1)])], 10)
            .await
            .unwrap();
        // A range above a hole is refused unless it opens the live lane.
        assert!(matches!(
            store
                .sync_apply(&cid(), vec![batch(5, vec![p(5)])], 11)
                .await,
            Err(StoreError::SyncCursor {
                cursor: 1,
                first: 5,
                ..
            })
        ));
        store
            .sync_apply(&cid(), vec![live(5, 5), batch(6, vec![p(6)])], 12)
            .await
            .unwrap();
        let d = store.sync_state(&cid()).await.unwrap();
        assert_eq!((d.applied, d.live), (1, Some((5, 6))));
        // Replays of either lane, a range overlapping the live lane, and a second lane are
        // refused whole.
        for bad in [
            batch(1, vec![p(1)]),
            live(6, 6),
            batch(2, vec![p(2), p(3), p(4), p(5)]),
            live(9, 9),
        ] {
            assert!(matches!(
                store.sync_apply(&cid(), vec![bad], 13).await,
                Err(StoreError::SyncCursor { .. })
            ));
        }
        // The backlog reaches the live lane: one cursor again.
        store
            .sync_apply(&cid(), vec![batch(2, vec![p(2), p(3), p(4)])], 14)
            .await
            .unwrap();
        let d = store.sync_state(&cid()).await.unwrap();
        assert_eq!((d.applied, d.live), (6, None));
        let got: Vec<i64> = series(&store, "dev1", "temp")
            .await
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(got, vec![1, 2, 3, 4, 5, 6]);
    }

    #[tokio::test]
    async fn a_disk_budget_drops_the_oldest_undelivered_partitions() {
        let (_dir, store, now) = fixture(true).await;
        two_per_partition(&store, &now, 4).await;
        let total = store.sync_state(&cid()).await.unwrap().outbox_bytes;
        let report = store
            .sync_expire(
                &cid(),
                Retention {
                    now: 5 * PART,
                    keep_us: 1_000 * PART,
                    budget_bytes: Some(total / 2),
                },
            )
            .await
            .unwrap();
        assert_eq!(report.points_lost, 4, "{report:?}");
        let OutboxChunk::Lost(span) = store.outbox_read(&cid(), SNAP + 1, 10).await.unwrap() else {
            panic!("seq 1 should be lost");
        };
        assert_eq!((span.first_seq, span.last_seq), (SNAP + 1, SNAP + 4));
        assert_eq!(records(&store, SNAP + 5, 10).await.len(), 4);
    }

    fn batch(first: u64, records: Vec<Record>) -> Inbound {
        Inbound::Records(Apply {
            opens: false,
            first_seq: first,
            last_seq: first + records.len() as u64 - 1,
            records,
        })
    }

    #[tokio::test]
    async fn the_target_applies_once_creates_devices_and_keeps_early_points() {
        let (_dir, store, _) = fixture(false).await;
        let first = vec![
            point("new1", "temp", 1, 1.0),
            point("new1", "humidity", 2, 50.0),
            point("dev1", "temp", 3, 3.0),
        ];
        assert_eq!(
            store
                .sync_apply(&cid(), vec![batch(1, first.clone())], 100)
                .await
                .unwrap(),
            3
        );
        // A replay is refused whole, and so is a batch after a hole.
        for replay in [
            batch(1, first),
            batch(5, vec![point("dev1", "temp", 9, 9.0)]),
        ] {
            assert!(matches!(
                store.sync_apply(&cid(), vec![replay], 101).await,
                Err(StoreError::SyncCursor { cursor: 3, .. })
            ));
        }
        assert_eq!(
            series(&store, "new1", "temp").await,
            vec![(1, Value::Number(1.0))]
        );
        assert_eq!(
            series(&store, "dev1", "temp").await,
            vec![(3, Value::Number(3.0))]
        );
        let st = store.sync_state(&cid()).await.unwrap();
        assert_eq!((st.applied, st.last_applied_at), (3, Some(100)));

        // A gap and a batch in one transaction.
        let span = LostSpan {
            first_seq: 4,
            last_seq: 9,
            resources: vec![ResourceLoss {
                resource: name("temp"),
                points: 6,
                devices: 2,
                from_us: 10,
                until_us: 20,
            }],
            device_changes: 0,
        };
        let gap = Inbound::Gap(GapRecord {
            opens: false,
            first_seq: 4,
            last_seq: 9,
            span,
            exact: true,
        });
        store
            .sync_apply(
                &cid(),
                vec![gap, batch(10, vec![point("new1", "temp", 30, 3.0)])],
                102,
            )
            .await
            .unwrap();
        let gaps = store.sync_gaps(&cid()).await.unwrap();
        assert_eq!(gaps.len(), 1);
        assert_eq!(
            (
                gaps[0].points,
                gaps[0].devices,
                gaps[0].from_us,
                gaps[0].until_us,
                gaps[0].seqs
            ),
            (6, 2, 10, 20, Some((4, 9)))
        );
        assert_eq!(gaps[0].reason, GapReason::Retention);

        // `humidity` does not exist yet: its point waits, and arrives with the resource.
        store
            .create_resource(
                &cid(),
                NewResource {
                    name: name("humidity"),
                    format: Format::Integer,
                    unit: None,
                    settable: false,
                    remote_sync: false,
                    created_at: 200,
                },
            )
            .await
            .unwrap();
        assert_eq!(
            series(&store, "new1", "humidity").await,
            vec![(2, Value::Integer(50))]
        );
        let device = store.device(&cid(), &id("new1")).await.unwrap();
        assert_eq!(device.values[&name("humidity")].t, 2);
    }

    async fn create(store: &SqliteStore, dev: &str, token: u8) {
        let new = NewDevice {
            identity: id(dev),
            tags: Default::default(),
            permissions: vec![],
            state: proto::model::DeviceState::Provisioned,
            token: [token; 32],
            created_at: 1,
        };
        store.create_device(&cid(), new, &admin()).await.unwrap();
    }

    /// The writer caches device rows across transactions (`device_ids.rs`); a row id freed by
    /// a delete, or by a refused apply that had inserted it, is taken by the next device
    /// created, and a point of the old device must never reach it.
    #[tokio::test]
    async fn a_freed_device_row_is_never_reached_through_the_cache() {
        let (_dir, store, _) = fixture(false).await;
        store
            .sync_apply(
                &cid(),
                vec![batch(1, vec![point("gone", "temp", 1, 1.0)])],
                100,
            )
            .await
            .unwrap();
        // Creates `ghost`, then is refused whole (a hole in the cursor): its row is undone.
        let refused = vec![
            batch(2, vec![point("ghost", "temp", 2, 2.0)]),
            batch(9, vec![point("gone", "temp", 9, 9.0)]),
        ];
        assert!(store.sync_apply(&cid(), refused, 101).await.is_err());
        store
            .delete_device(&cid(), &id("gone"), &admin())
            .await
            .unwrap();
        // They take the freed row ids (the largest id plus one).
        create(&store, "other", 7).await;
        create(&store, "another", 8).await;
        let next = vec![
            point("gone", "temp", 5, 5.0),
            point("ghost", "temp", 6, 6.0),
        ];
        store
            .sync_apply(&cid(), vec![batch(2, next)], 102)
            .await
            .unwrap();
        assert_eq!(series(&store, "other", "temp").await, vec![]);
        assert_eq!(series(&store, "another", "temp").await, vec![]);
        assert_eq!(
            series(&store, "ghost", "temp").await,
            vec![(6, Value::Number(6.0))]
        );
        assert!(matches!(
            store.device(&cid(), &id("gone")).await,
            Err(StoreError::DeviceNotFound(_))
        ));

        // Created again, it is a device of its own: a new row, none of its former points.
        create(&store, "gone", 9).await;
        store
            .sync_apply(
                &cid(),
                vec![batch(4, vec![point("gone", "temp", 7, 7.0)])],
                103,
            )
            .await
            .unwrap();
        assert_eq!(
            series(&store, "gone", "temp").await,
            vec![(7, Value::Number(7.0))]
        );
        assert_eq!(series(&store, "other", "temp").await, vec![]);

        // Locked after its row was cached, a device takes no more data.
        store
            .ingest(&cid(), vec![pts("other", 10, 1.0)])
            .await
            .unwrap();
        let lock = DevicePatch {
            state: Some(proto::model::DeviceState::Locked),
            ..Default::default()
        };
        store
            .update_device(&cid(), &id("other"), lock, &admin())
            .await
            .unwrap();
        assert!(matches!(
            store.ingest(&cid(), vec![pts("other", 11, 1.0)]).await,
            Err(StoreError::DeviceLocked(_))
        ));
        // A replicated point still lands (the Source decides), and its apply leaves the
        // locked row in the cache; an ingest that finds it there (the request's rows are
        // looked up together, `device_ids::rows_of`) is still refused.
        store
            .sync_apply(
                &cid(),
                vec![batch(5, vec![point("other", "temp", 12, 2.0)])],
                104,
            )
            .await
            .unwrap();
        assert!(matches!(
            store.ingest(&cid(), vec![pts("other", 13, 1.0)]).await,
            Err(StoreError::DeviceLocked(_))
        ));
    }

    /// Another connection (another process) deleting a device and creating one in its row:
    /// the writer's cache does not see the delete, so it starts over.
    #[tokio::test]
    async fn a_write_of_another_connection_empties_the_cache() {
        let (dir, store, _) = fixture(false).await;
        store
            .sync_apply(
                &cid(),
                vec![batch(1, vec![point("gone", "temp", 1, 1.0)])],
                100,
            )
            .await
            .unwrap();
        let other = rusqlite::Connection::open(dir.path().join("site.db")).unwrap();
        other
            .execute_batch(
                "DELETE FROM devices WHERE identity = 'gone';
                 INSERT INTO devices (connector, identity, created_at)
                 SELECT connector, 'usurper', 1 FROM devices WHERE identity = 'dev1';",
            )
            .unwrap();
        drop(other);
        store
            .sync_apply(
                &cid(),
                vec![batch(2, vec![point("gone", "temp", 2, 2.0)])],
                101,
            )
            .await
            .unwrap();
        // (The store's own tail still shows `gone`'s first point under its former row: a
        // delete behind the store's back cannot reach its memory. The cache must not add to it.)
        assert_eq!(
            series(&store, "usurper", "temp").await,
            vec![(1, Value::Number(1.0))]
        );
        assert_eq!(
            series(&store, "gone", "temp").await,
            vec![(2, Value::Number(2.0))]
        );
    }

    #[tokio::test]
    async fn pending_points_expire_into_a_gap() {
        let (_dir, store, _) = fixture(false).await;
        let early = vec![
            point("a", "humidity", 5, 1.0),
            point("b", "humidity", 7, 2.0),
        ];
        store
            .sync_apply(&cid(), vec![batch(1, early)], 1_000)
            .await
            .unwrap();
        let retention = |now| Retention {
            now,
            keep_us: 500,
            budget_bytes: None,
        };
        let kept = store.sync_expire(&cid(), retention(1_400)).await.unwrap();
        assert_eq!(kept.pending_expired, 0);
        let waiting = store.sync_waiting(&cid()).await.unwrap();
        assert_eq!(
            waiting,
            vec![crate::WaitingResource {
                resource: name("humidity"),
                format: proto::model::Format::Number,
                points: 2,
                devices: 2,
                from_us: 5,
                until_us: 7,
                since: 1_000,
            }]
        );
        let report = store.sync_expire(&cid(), retention(1_600)).await.unwrap();
        assert_eq!(report.pending_expired, 2);
        assert!(store.sync_waiting(&cid()).await.unwrap().is_empty());
        let gaps = store.sync_gaps(&cid()).await.unwrap();
        assert_eq!(
            (
                gaps[0].points,
                gaps[0].devices,
                gaps[0].from_us,
                gaps[0].until_us,
                gaps[0].reason
            ),
            (2, 2, 5, 7, GapReason::PendingExpired)
        );
    }
}
