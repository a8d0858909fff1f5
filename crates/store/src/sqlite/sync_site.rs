//! Site-wide sync queries: the questions the sync drivers ask about all pairings at once, so
//! that what an idle pairing costs does not grow with the number of pairings (docs/sync.md,
//! "Idle pairings").
//!
//! - [`expiring`]: which connectors a retention pass ([`super::sync::expire`]) would change
//!   anything for, in one read, so the site runs retention only for those instead of one
//!   write job per connector every few seconds.
//!
//! - [`budget`], [`set_budget`]: each connector's bandwidth budget (`sync_budgets`,
//!   migration `0009_sync_budget.sql`), which its sync driver enforces.
//!
//! - [`requeue`]: one slice of a backfill (docs/sync.md, "Backfill"): the points a paired
//!   Source holds for a resource and time range, queued again as new outbox records.
//!
//! Deliberately absent: any change to the synchronised data; the per-connector passes stay
//! in `sync`. A backfill adds records to the outbox, as an ingest does, and changes no
//! point.

use proto::model::{ConnectorId, Identity, Role, SyncState};
use rusqlite::{Connection, OptionalExtension, params};

use super::{backend, collect_rows, resource_rows, select_rows, series, sync};
use crate::{Requeue, RequeueCursor, Requeued, Result, Retention, StoreError};

/// The connectors for which [`super::sync::expire`] with `retention` has something to look
/// at: an outbox partition that ended at or before the cutoff, an outbox over the byte
/// budget, or pending points received at or before the cutoff. A superset of those it would
/// change (a pinned partition stays), never a subset.
pub(super) fn expiring(
    conn: &Connection,
    retention: Retention,
    partition_us: i64,
) -> Result<Vec<ConnectorId>> {
    let cutoff = retention.now.saturating_sub(retention.keep_us);
    let budget = retention
        .budget_bytes
        .map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
    let mut stmt = conn
        .prepare_cached(
            "SELECT connector, MIN(part), SUM(bytes) FROM sync_partitions GROUP BY connector",
        )
        .map_err(backend("finding expiring outboxes"))?;
    let rows = collect_rows(
        &mut stmt,
        [],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        },
        "finding expiring outboxes",
    )?;
    let mut found: Vec<String> = rows
        .into_iter()
        // The same test as `sync::expire`'s for its oldest partition.
        .filter(|(_, part, bytes)| {
            part.saturating_add(1).saturating_mul(partition_us) <= cutoff || *bytes > budget
        })
        .map(|(c, ..)| c)
        .collect();
    let mut stmt = conn
        .prepare_cached("SELECT DISTINCT connector FROM sync_pending WHERE received_at <= ?1")
        .map_err(backend("finding expiring pending points"))?;
    found.extend(collect_rows(
        &mut stmt,
        params![cutoff],
        |r| r.get::<_, String>(0),
        "finding expiring pending points",
    )?);
    found.sort();
    found.dedup();
    Ok(found
        .into_iter()
        .filter_map(|c| ConnectorId::parse(&c).ok())
        .collect())
}

/// The connector's budget in bytes per second, if it has one.
pub(super) fn budget(conn: &Connection, cid: &ConnectorId) -> Result<Option<u64>> {
    let v: Option<i64> = conn
        .prepare_cached("SELECT max_bytes_per_s FROM sync_budgets WHERE connector = ?1")
        .and_then(|mut s| s.query_row([cid.as_str()], |r| r.get(0)).optional())
        .map_err(backend("reading a bandwidth budget"))?;
    Ok(v.and_then(|v| u64::try_from(v).ok()))
}

/// Sets or (`None`) removes the connector's budget.
pub(super) fn set_budget(conn: &Connection, cid: &ConnectorId, bytes: Option<u64>) -> Result<()> {
    super::connector_exists(conn, cid)?;
    match bytes {
        Some(b) => conn
            .prepare_cached(
                "INSERT INTO sync_budgets (connector, max_bytes_per_s) VALUES (?1, ?2)
                 ON CONFLICT (connector) DO UPDATE SET max_bytes_per_s = excluded.max_bytes_per_s",
            )
            .and_then(|mut s| {
                s.execute(params![
                    cid.as_str(),
                    i64::try_from(b.max(1)).unwrap_or(i64::MAX)
                ])
            }),
        None => conn
            .prepare_cached("DELETE FROM sync_budgets WHERE connector = ?1")
            .and_then(|mut s| s.execute([cid.as_str()])),
    }
    .map_err(backend("setting a bandwidth budget"))?;
    Ok(())
}

/// Queues again one slice of a backfill: the points connector `cid`, a paired Source, holds
/// for `req.resource` in `[req.since, req.until)`, device by device in identity order and
/// each device's in time order, from `req.from` on, at most `req.max_points` of them and
/// `req.max_devices` devices looked at. Each is appended to the outbox as a new record (the
/// next seqs, consecutive) with the value stored *now*, read in the writer's transaction
/// (`series::read_in_writer`): a newer value written at the same `t` before this job is
/// the one queued, and one written after it has a higher seq, so the Target never ends with
/// an older value than the Source.
///
/// The records are copies of points the Source keeps anyway (`Appender::push_copy`): sent,
/// never put in the Tail nor replayed into it (docs/sync.md "Backfill").
pub(super) fn requeue(
    conn: &Connection,
    cid: &ConnectorId,
    req: &Requeue,
    now: i64,
    partition_us: i64,
) -> Result<Requeued> {
    let refuse = |reason| StoreError::SyncState {
        connector: cid.clone(),
        reason,
    };
    let (role, state): (String, String) = conn
        .prepare_cached("SELECT role, sync_state FROM connectors WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([cid.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(backend("reading a connector's role"))?
        .ok_or_else(|| StoreError::ConnectorNotFound(cid.clone()))?;
    if Role::parse(&role) != Some(Role::Source)
        || SyncState::parse(&state) != Some(SyncState::Paired)
    {
        return Err(refuse("only a paired Source queues points for its Target"));
    }
    let resources = resource_rows(conn, cid)?;
    let res = resources
        .get(&req.resource)
        .ok_or_else(|| StoreError::ResourceNotFound(req.resource.clone()))?;
    if !res.remote_sync {
        return Err(refuse("the resource does not have Remote-Sync on"));
    }
    let Some(mut out) = sync::appender(conn, cid, now, partition_us)? else {
        return Err(refuse("only a paired Source queues points for its Target"));
    };
    let first_seq = sync::head(conn, cid)? + 1;
    let cap = req.max_devices.max(1);
    let start = req.from.as_ref().map(|c| c.device.clone());
    let visit = devices_from(conn, cid, req.devices.as_deref(), start.as_ref(), cap + 1)?;
    let mut points = 0usize;
    let mut next = None;
    for (i, (id, identity)) in visit.iter().enumerate() {
        if i == cap {
            next = Some(RequeueCursor {
                device: identity.clone(),
                t: req.since,
            });
            break;
        }
        let from_t = match &req.from {
            Some(c) if &c.device == identity => c.t.max(req.since),
            _ => req.since,
        };
        let want = req.max_points.saturating_sub(points);
        let found = series::read_in_writer(
            conn,
            (*id, res.id),
            (from_t, req.until),
            want.saturating_add(1),
        )?;
        for p in found.iter().take(want) {
            out.push_copy(conn, identity, &req.resource, p.t, &p.v)?;
            points += 1;
        }
        if let Some(p) = found.get(want) {
            next = Some(RequeueCursor {
                device: identity.clone(),
                t: p.t,
            });
            break;
        }
    }
    out.finish(conn)?;
    let points = points as u64;
    if let Some(id) = req.backfill {
        super::backfill::sliced(conn, cid, id, (first_seq, points), next.as_ref())?;
    }
    Ok(Requeued {
        points,
        first_seq: if points == 0 { 0 } else { first_seq },
        next,
    })
}

/// At most `limit` devices of connector `cid` with their row ids, in identity order, from
/// `start` on (inclusive): those of `only` that exist, or every device.
fn devices_from(
    conn: &Connection,
    cid: &ConnectorId,
    only: Option<&[Identity]>,
    start: Option<&Identity>,
    limit: usize,
) -> Result<Vec<(i64, Identity)>> {
    let op = "listing devices to backfill";
    let parse = |id: i64, identity: String| {
        Identity::parse(&identity)
            .map(|i| (id, i))
            .map_err(|e| StoreError::Backend {
                op,
                source: Box::new(e),
            })
    };
    match only {
        Some(list) => {
            let mut out = Vec::new();
            let mut stmt = conn
                .prepare_cached("SELECT id FROM devices WHERE connector = ?1 AND identity = ?2")
                .map_err(backend(op))?;
            for identity in list.iter().filter(|d| start.is_none_or(|s| *d >= s)) {
                if out.len() == limit {
                    break;
                }
                let id: Option<i64> = stmt
                    .query_row([cid.as_str(), identity.as_str()], |r| r.get(0))
                    .optional()
                    .map_err(backend(op))?;
                if let Some(id) = id {
                    out.push((id, identity.clone()));
                }
            }
            Ok(out)
        }
        None => select_rows(
            conn,
            "SELECT id, identity FROM devices WHERE connector = ?1 AND identity >= ?2
             ORDER BY identity LIMIT ?3",
            params![
                cid.as_str(),
                start.map_or("", Identity::as_str),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            op,
        )?
        .into_iter()
        .map(|(id, identity)| parse(id, identity))
        .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PART: i64 = 1_000;

    /// The two tables `expiring` reads, with one row per `(connector, part, bytes)` and per
    /// `(connector, received_at)`.
    fn db(parts: &[(&str, i64, i64)], pending: &[(&str, i64)]) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE sync_partitions (connector TEXT, part INTEGER, first_seq INTEGER,
                 last_seq INTEGER, bytes INTEGER);
             CREATE TABLE sync_pending (connector TEXT, received_at INTEGER);",
        )
        .unwrap();
        for (c, part, bytes) in parts {
            conn.execute(
                "INSERT INTO sync_partitions VALUES (?1, ?2, 1, 1, ?3)",
                params![c, part, bytes],
            )
            .unwrap();
        }
        for (c, at) in pending {
            conn.execute("INSERT INTO sync_pending VALUES (?1, ?2)", params![c, at])
                .unwrap();
        }
        conn
    }

    use crate::StoreError;

    #[tokio::test]
    async fn a_budget_is_kept_across_a_reopen_and_removed_with_null() {
        use crate::Store;
        use crate::sqlite::fixtures::{cid, create_plant};
        use crate::sqlite::{SqliteConfig, SqliteStore};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.db");
        let store = SqliteStore::open(SqliteConfig::new(path.clone())).unwrap();
        assert!(matches!(
            store.set_sync_budget(&cid(), Some(5)).await,
            Err(StoreError::ConnectorNotFound(_))
        ));
        create_plant(&store).await;
        assert_eq!(store.sync_budget(&cid()).await.unwrap(), None);
        store.set_sync_budget(&cid(), Some(20_000)).await.unwrap();
        store.set_sync_budget(&cid(), Some(30_000)).await.unwrap();
        drop(store);
        let store = SqliteStore::open(SqliteConfig::new(path)).unwrap();
        assert_eq!(store.sync_budget(&cid()).await.unwrap(), Some(30_000));
        store.set_sync_budget(&cid(), None).await.unwrap();
        assert_eq!(store.sync_budget(&cid()).await.unwrap(), None);
    }

    mod requeue {
        use std::sync::Arc;

        use proto::model::Value;
        use proto::sync::Record;
        use serde_json::json;

        use crate::sqlite::fixtures::{cid, id, name, source_plant};
        use crate::sqlite::{SqliteConfig, SqliteStore};
        use crate::*;

        /// A paired Source with `temp` (Remote-Sync on) and `mode` (off), devices `dev1` and
        /// `dev2`; the pairing queued their two snapshots (seqs 1 and 2).
        async fn source(paired: bool) -> (tempfile::TempDir, Arc<SqliteStore>) {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(SqliteConfig::new(dir.path().join("site.db"))).unwrap();
            source_plant(&store, paired).await;
            (dir, Arc::new(store))
        }

        fn temp(dev: &str, t: i64, v: f64) -> PointsIn {
            PointsIn {
                identity: id(dev),
                t,
                values: vec![(name("temp"), json!(v))],
            }
        }

        fn slice(from: Option<RequeueCursor>, max_points: usize) -> Requeue {
            Requeue {
                resource: name("temp"),
                since: 10,
                until: 40,
                devices: None,
                from,
                max_points,
                max_devices: 100,
                backfill: None,
            }
        }

        /// `(device, t, value)` of the point records from `from` on, in seq order.
        async fn queued(store: &SqliteStore, from: u64) -> Vec<(String, i64, f64)> {
            let OutboxChunk::Records(records) =
                store.outbox_read(&cid(), from, 1000).await.unwrap()
            else {
                panic!("lost records");
            };
            records
                .into_iter()
                .filter_map(|r| match r {
                    Record::Point(p) => match p.value {
                        Value::Number(v) => Some((p.device.to_string(), p.t, v)),
                        other => panic!("unexpected value {other:?}"),
                    },
                    Record::Device(_) => None,
                })
                .collect()
        }

        #[tokio::test]
        async fn slices_queue_the_current_value_of_each_point_in_the_range_once() {
            let (_dir, store) = source(true).await;
            store
                .ingest(
                    &cid(),
                    vec![
                        temp("dev1", 5, 0.5),
                        temp("dev1", 10, 1.0),
                        temp("dev1", 20, 2.0),
                        temp("dev2", 10, 3.0),
                        temp("dev2", 40, 4.0),
                    ],
                )
                .await
                .unwrap();
            // Some points in blocks, some rewritten since (in the tail): the newest counts.
            store.fold().await.unwrap();
            store
                .ingest(&cid(), vec![temp("dev1", 20, 2.5), temp("dev2", 30, 3.5)])
                .await
                .unwrap();
            let head = store.outbox_head(&cid()).await.unwrap();
            let mut from = None;
            let mut slices = Vec::new();
            loop {
                let done = store
                    .sync_requeue(&cid(), slice(from.clone(), 2))
                    .await
                    .unwrap();
                slices.push((done.points, done.first_seq));
                from = done.next;
                if from.is_none() {
                    break;
                }
            }
            // Slices of at most two points, each a run of consecutive seqs after the head.
            assert_eq!(slices, vec![(2, head + 1), (2, head + 3)]);
            assert_eq!(
                queued(&store, head + 1).await,
                vec![
                    ("dev1".into(), 10, 1.0),
                    ("dev1".into(), 20, 2.5),
                    ("dev2".into(), 10, 3.0),
                    ("dev2".into(), 30, 3.5),
                ]
            );
            // Only the devices asked for (one that does not exist is passed over).
            let head = store.outbox_head(&cid()).await.unwrap();
            let mut only = slice(None, 100);
            only.devices = Some(vec![id("dev0"), id("dev2")]);
            let done = store.sync_requeue(&cid(), only).await.unwrap();
            assert_eq!((done.points, done.next), (2, None));
            assert_eq!(
                queued(&store, head + 1).await,
                vec![("dev2".into(), 10, 3.0), ("dev2".into(), 30, 3.5)]
            );
            // A slice looks at no more than `max_devices` devices, and says where to go on.
            let mut narrow = slice(None, 100);
            narrow.since = 35;
            narrow.max_devices = 1;
            let done = store.sync_requeue(&cid(), narrow).await.unwrap();
            assert_eq!(done.points, 0);
            assert_eq!(
                done.next,
                Some(RequeueCursor {
                    device: id("dev2"),
                    t: 35
                })
            );
        }

        #[tokio::test]
        async fn a_value_written_with_the_backfill_is_never_followed_by_an_older_copy() {
            let (_dir, store) = source(true).await;
            store
                .ingest(&cid(), vec![temp("dev1", 10, 1.0)])
                .await
                .unwrap();
            let head = store.outbox_head(&cid()).await.unwrap();
            // The rewrite and the slice race into the writer, often in one group commit.
            for round in 0..50 {
                let v = 2.0 + f64::from(round);
                let (a, b) = (Arc::clone(&store), Arc::clone(&store));
                let (wrote, requeued) = tokio::join!(
                    tokio::spawn(async move { a.ingest(&cid(), vec![temp("dev1", 10, v)]).await }),
                    tokio::spawn(async move { b.sync_requeue(&cid(), slice(None, 10)).await }),
                );
                wrote.unwrap().unwrap();
                requeued.unwrap().unwrap();
                // What the Target applies last for (dev1, 10) is the value the Source holds.
                let last = queued(&store, head + 1)
                    .await
                    .into_iter()
                    .rev()
                    .find(|(d, t, _)| d == "dev1" && *t == 10)
                    .unwrap();
                assert_eq!(last.2, v, "round {round}");
            }
        }

        #[tokio::test]
        async fn only_a_paired_source_requeues_and_only_remote_synced_resources() {
            let (_dir, store) = source(true).await;
            let mut mode = slice(None, 10);
            mode.resource = name("mode");
            assert!(matches!(
                store.sync_requeue(&cid(), mode).await,
                Err(StoreError::SyncState { .. })
            ));
            let mut unknown = slice(None, 10);
            unknown.resource = name("nope");
            assert!(matches!(
                store.sync_requeue(&cid(), unknown).await,
                Err(StoreError::ResourceNotFound(_))
            ));
            let head = store.outbox_head(&cid()).await.unwrap();
            let (_dir2, standalone) = source(false).await;
            assert!(matches!(
                standalone.sync_requeue(&cid(), slice(None, 10)).await,
                Err(StoreError::SyncState { .. })
            ));
            assert_eq!(store.outbox_head(&cid()).await.unwrap(), head);
        }

        fn view(id: u64) -> proto::lookup::BackfillView {
            proto::lookup::BackfillView {
                id,
                resource: name("temp"),
                since: 10,
                until: 40,
                devices: Some(1),
                state: proto::lookup::BackfillState::Queuing,
                queued: 0,
                applied: 0,
                started_at: 7,
                finished_at: None,
                by_target: true,
            }
        }

        /// A restart goes on exactly after the last slice committed: the store keeps the
        /// backfill's cursor, points queued and unacknowledged slices with each slice.
        #[tokio::test]
        async fn a_backfill_is_kept_with_each_slice_and_found_again_after_a_reopen() {
            use proto::lookup::BackfillState;
            let (dir, store) = source(true).await;
            store
                .ingest(
                    &cid(),
                    vec![
                        temp("dev1", 10, 1.0),
                        temp("dev1", 20, 2.0),
                        temp("dev1", 30, 3.0),
                    ],
                )
                .await
                .unwrap();
            store
                .save_backfill(&cid(), view(9), Some(vec![id("dev1")]))
                .await
                .unwrap();
            let mut req = slice(None, 2);
            req.devices = Some(vec![id("dev1")]);
            req.backfill = Some(9);
            let first = store.sync_requeue(&cid(), req.clone()).await.unwrap();
            assert_eq!(first.points, 2);
            // A slice of another backfill (or none) changes nothing of it.
            let mut other = req.clone();
            other.backfill = Some(8);
            store.sync_requeue(&cid(), other).await.unwrap();
            drop(store);
            let store = SqliteStore::open(SqliteConfig::new(dir.path().join("site.db"))).unwrap();
            let kept = store.backfills().await.unwrap();
            assert_eq!(kept.len(), 1);
            let b = &kept[0];
            assert_eq!(
                (b.view.id, b.view.state, b.view.queued),
                (9, BackfillState::Queuing, 2)
            );
            assert_eq!(b.devices, Some(vec![id("dev1")]));
            assert_eq!(b.next, first.next);
            assert_eq!(b.slices, vec![(first.first_seq, 2)]);
            // The next slice goes on from the kept cursor and ends the range: `sending`.
            req.from = b.next.clone();
            let last = store.sync_requeue(&cid(), req).await.unwrap();
            assert_eq!((last.points, last.next.clone()), (1, None));
            // The peer acknowledges the first slice: only the second is kept.
            store
                .outbox_acked(&cid(), first.first_seq + 1)
                .await
                .unwrap();
            let b = store.backfills().await.unwrap().remove(0);
            assert_eq!((b.view.state, b.view.queued), (BackfillState::Sending, 3));
            assert_eq!(b.slices, vec![(last.first_seq, 1)]);
            store
                .end_backfill(&cid(), 9, BackfillState::Sending, 50)
                .await
                .unwrap();
            assert_eq!(
                store.backfills().await.unwrap()[0].view.finished_at,
                Some(50)
            );
            // A new one replaces it with its slices.
            store.save_backfill(&cid(), view(10), None).await.unwrap();
            let b = store.backfills().await.unwrap().remove(0);
            assert_eq!((b.view.id, b.view.queued, b.devices), (10, 0, None));
            assert!(b.slices.is_empty() && b.next.is_none());
        }
    }

    fn ids(v: Vec<ConnectorId>) -> Vec<String> {
        v.into_iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn only_connectors_with_something_past_retention_or_over_budget_are_named() {
        let (old, fresh, fat, waiting) = (
            "aaaaaaaaaaaaaa",
            "bbbbbbbbbbbbbb",
            "cccccccccccccc",
            "dddddddddddddd",
        );
        let conn = db(
            &[
                // Partition 2 ends at 3·PART: past a cutoff of 3·PART.
                (old, 2, 10),
                (old, 5, 10),
                (fresh, 3, 10),
                (fat, 4, 600),
            ],
            &[(waiting, 3 * PART), (fresh, 3 * PART + 1)],
        );
        let retention = |budget| Retention {
            now: 5 * PART,
            keep_us: 2 * PART,
            budget_bytes: budget,
        };
        assert_eq!(
            ids(expiring(&conn, retention(None), PART).unwrap()),
            vec![old, waiting]
        );
        assert_eq!(
            ids(expiring(&conn, retention(Some(500)), PART).unwrap()),
            vec![old, fat, waiting]
        );
        // Idle pairings, caught up within retention: nothing to do, whatever their number.
        let idle: Vec<(String, i64, i64)> =
            (0..1_000).map(|i| (format!("{i:0>14}"), 4, 10)).collect();
        let rows: Vec<(&str, i64, i64)> =
            idle.iter().map(|(c, p, b)| (c.as_str(), *p, *b)).collect();
        let conn = db(&rows, &[]);
        assert!(expiring(&conn, retention(None), PART).unwrap().is_empty());
    }
}
