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
//! Deliberately absent: any change to the synchronised data; the per-connector passes stay
//! in `sync`.

use proto::model::ConnectorId;
use rusqlite::{Connection, OptionalExtension, params};

use super::{backend, collect_rows};
use crate::{Result, Retention};

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
