//! Alarms (migration `0011_alarms.sql`): each connector's thresholds (`alarm_settings`) and
//! the alarms the site raised and cleared (`alarms`), the active ones and a bounded history.
//!
//! Invariants: at most one active alarm per connector and kind (a unique partial index;
//! raising one that is active answers the active one); the history keeps at most the number
//! of cleared alarms its caller asks for, dropping the oldest when one more is cleared; a
//! connector's alarms and thresholds go with it.
//!
//! Deliberately absent: when to raise or clear, and the default thresholds: both are the
//! site's (`site::alarms`).

use proto::model::ConnectorId;
use rusqlite::{Connection, OptionalExtension, params};

use super::{backend, collect_rows, connector_exists};
use crate::{AlarmKind, AlarmQuery, AlarmRow, AlarmSettings, NewAlarm, Result};

/// Every connector's stored thresholds (connectors without a row have the defaults).
pub(super) fn settings(conn: &Connection) -> Result<Vec<(ConnectorId, AlarmSettings)>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT connector, lag_seconds, backlog_points, unreachable_seconds, gap_points
             FROM alarm_settings ORDER BY connector",
        )
        .map_err(backend("reading alarm thresholds"))?;
    let rows = collect_rows(
        &mut stmt,
        [],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                AlarmSettings {
                    lag_seconds: positive(r.get(1)?),
                    backlog_points: positive(r.get(2)?),
                    unreachable_seconds: positive(r.get(3)?),
                    gap_points: positive(r.get(4)?),
                },
            ))
        },
        "reading alarm thresholds",
    )?;
    Ok(rows
        .into_iter()
        .filter_map(|(c, s)| Some((ConnectorId::parse(&c).ok()?, s)))
        .collect())
}

fn positive(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok()).filter(|v| *v > 0)
}

fn sql_int(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v.max(1)).unwrap_or(i64::MAX))
}

/// Stores the connector's thresholds, all four (`None`: that alarm is off).
pub(super) fn set_settings(conn: &Connection, cid: &ConnectorId, s: AlarmSettings) -> Result<()> {
    connector_exists(conn, cid)?;
    conn.prepare_cached(
        "INSERT INTO alarm_settings
             (connector, lag_seconds, backlog_points, unreachable_seconds, gap_points)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (connector) DO UPDATE SET lag_seconds = excluded.lag_seconds,
             backlog_points = excluded.backlog_points,
             unreachable_seconds = excluded.unreachable_seconds,
             gap_points = excluded.gap_points",
    )
    .and_then(|mut st| {
        st.execute(params![
            cid.as_str(),
            sql_int(s.lag_seconds),
            sql_int(s.backlog_points),
            sql_int(s.unreachable_seconds),
            sql_int(s.gap_points),
        ])
    })
    .map_err(backend("setting alarm thresholds"))?;
    Ok(())
}

const COLUMNS: &str = "id, connector, kind, raised_at, cleared_at, value, threshold, message";

/// A row as read, before its connector and kind are checked.
type Raw = (i64, String, String, i64, Option<i64>, f64, i64, String);

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Raw> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

/// The rows that name a valid connector and kind (a row written by a newer version with a
/// kind this one does not know is left out, not an error).
fn finish(rows: Vec<Raw>) -> Vec<AlarmRow> {
    rows.into_iter()
        .filter_map(
            |(id, c, k, raised_at, cleared_at, value, threshold, message)| {
                Some(AlarmRow {
                    id,
                    connector: ConnectorId::parse(&c).ok()?,
                    kind: AlarmKind::parse(&k)?,
                    raised_at,
                    cleared_at,
                    value,
                    threshold: u64::try_from(threshold).unwrap_or(0),
                    message,
                })
            },
        )
        .collect()
}

/// Records `new` as active and returns it; if an alarm of that connector and kind is active
/// already, returns that one and records nothing.
pub(super) fn raise(conn: &Connection, new: &NewAlarm) -> Result<AlarmRow> {
    connector_exists(conn, &new.connector)?;
    if let Some(active) = active_of(conn, &new.connector, new.kind)? {
        return Ok(active);
    }
    conn.prepare_cached(
        "INSERT INTO alarms (connector, kind, raised_at, value, threshold, message)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut st| {
        st.execute(params![
            new.connector.as_str(),
            new.kind.as_str(),
            new.raised_at,
            new.value,
            sql_int(Some(new.threshold)),
            new.message,
        ])
    })
    .map_err(backend("raising an alarm"))?;
    Ok(AlarmRow {
        id: conn.last_insert_rowid(),
        connector: new.connector.clone(),
        kind: new.kind,
        raised_at: new.raised_at,
        cleared_at: None,
        value: new.value,
        threshold: new.threshold,
        message: new.message.clone(),
    })
}

fn active_of(conn: &Connection, cid: &ConnectorId, kind: AlarmKind) -> Result<Option<AlarmRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM alarms WHERE connector = ?1 AND kind = ?2 AND cleared_at IS NULL"
    );
    let found = conn
        .prepare_cached(&sql)
        .and_then(|mut st| {
            st.query_row(params![cid.as_str(), kind.as_str()], row)
                .optional()
        })
        .map_err(backend("reading an active alarm"))?;
    Ok(found.and_then(|r| finish(vec![r]).pop()))
}

/// Clears the active alarm `id` at `at` and drops the oldest cleared alarms beyond `keep`;
/// returns the cleared alarm, or `None` when `id` is not an active alarm (cleared already,
/// or gone with its connector).
pub(super) fn clear(conn: &Connection, id: i64, at: i64, keep: usize) -> Result<Option<AlarmRow>> {
    let changed = conn
        .prepare_cached("UPDATE alarms SET cleared_at = ?2 WHERE id = ?1 AND cleared_at IS NULL")
        .and_then(|mut st| st.execute(params![id, at]))
        .map_err(backend("clearing an alarm"))?;
    if changed == 0 {
        return Ok(None);
    }
    conn.prepare_cached(
        "DELETE FROM alarms WHERE cleared_at IS NOT NULL AND id NOT IN
             (SELECT id FROM alarms WHERE cleared_at IS NOT NULL ORDER BY id DESC LIMIT ?1)",
    )
    .and_then(|mut st| st.execute([i64::try_from(keep).unwrap_or(i64::MAX)]))
    .map_err(backend("trimming the alarm history"))?;
    let sql = format!("SELECT {COLUMNS} FROM alarms WHERE id = ?1");
    let found = conn
        .prepare_cached(&sql)
        .and_then(|mut st| st.query_row([id], row).optional())
        .map_err(backend("reading a cleared alarm"))?;
    Ok(found.and_then(|r| finish(vec![r]).pop()))
}

/// The alarms `q` selects, newest first (a limit of 0 is taken as 1).
pub(super) fn list(conn: &Connection, q: &AlarmQuery) -> Result<Vec<AlarmRow>> {
    let state = match q.active {
        None => "",
        Some(true) => " AND cleared_at IS NULL",
        Some(false) => " AND cleared_at IS NOT NULL",
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM alarms WHERE (?1 IS NULL OR connector = ?1) AND id < ?2{state}
         ORDER BY id DESC LIMIT ?3"
    );
    let mut stmt = conn
        .prepare_cached(&sql)
        .map_err(backend("listing alarms"))?;
    let rows = collect_rows(
        &mut stmt,
        params![
            q.connector.as_ref().map(ConnectorId::as_str),
            q.before.unwrap_or(i64::MAX),
            i64::try_from(q.limit.max(1)).unwrap_or(i64::MAX),
        ],
        row,
        "listing alarms",
    )?;
    Ok(finish(rows))
}

#[cfg(test)]
mod tests {
    use crate::Store;
    use crate::sqlite::fixtures::{cid, create_plant};
    use crate::sqlite::{SqliteConfig, SqliteStore};
    use crate::*;

    fn new(kind: AlarmKind, at: i64) -> NewAlarm {
        NewAlarm {
            connector: cid(),
            kind,
            raised_at: at,
            value: 130.0,
            threshold: 120,
            message: format!("{} at {at}", kind.as_str()),
        }
    }

    fn query(active: Option<bool>, before: Option<i64>, limit: usize) -> AlarmQuery {
        AlarmQuery {
            connector: None,
            active,
            before,
            limit,
        }
    }

    #[tokio::test]
    async fn thresholds_are_kept_across_a_reopen_and_go_with_their_connector() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.db");
        let store = SqliteStore::open(SqliteConfig::new(path.clone())).unwrap();
        let s = AlarmSettings {
            lag_seconds: Some(60),
            backlog_points: None,
            unreachable_seconds: Some(5),
            gap_points: Some(1),
        };
        assert!(matches!(
            store.set_alarm_settings(&cid(), s).await,
            Err(StoreError::ConnectorNotFound(_))
        ));
        create_plant(&store).await;
        assert_eq!(store.alarm_settings().await.unwrap(), vec![]);
        store.set_alarm_settings(&cid(), s).await.unwrap();
        drop(store);
        let store = SqliteStore::open(SqliteConfig::new(path)).unwrap();
        assert_eq!(store.alarm_settings().await.unwrap(), vec![(cid(), s)]);
        let off = AlarmSettings::default();
        store.set_alarm_settings(&cid(), off).await.unwrap();
        assert_eq!(store.alarm_settings().await.unwrap(), vec![(cid(), off)]);
        store.raise_alarm(new(AlarmKind::Lag, 1)).await.unwrap();
        store.delete_connector(&cid()).await.unwrap();
        assert_eq!(store.alarm_settings().await.unwrap(), vec![]);
        let all = store.alarms(query(None, None, 10)).await.unwrap();
        assert!(all.is_empty(), "{all:?}");
    }

    #[tokio::test]
    async fn one_active_alarm_per_kind_raised_and_cleared_with_its_times() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(SqliteConfig::new(dir.path().join("site.db"))).unwrap();
        assert!(matches!(
            store.raise_alarm(new(AlarmKind::Lag, 1)).await,
            Err(StoreError::ConnectorNotFound(_))
        ));
        create_plant(&store).await;
        let lag = store.raise_alarm(new(AlarmKind::Lag, 10)).await.unwrap();
        let again = store.raise_alarm(new(AlarmKind::Lag, 20)).await.unwrap();
        assert_eq!(again, lag, "raising an active alarm answers the active one");
        let gap = store.raise_alarm(new(AlarmKind::Gap, 30)).await.unwrap();
        assert!(gap.id > lag.id);
        let active = store.alarms(query(Some(true), None, 10)).await.unwrap();
        assert_eq!(active, vec![gap.clone(), lag.clone()], "newest first");

        let cleared = store.clear_alarm(lag.id, 40, 100).await.unwrap().unwrap();
        assert_eq!(cleared.cleared_at, Some(40));
        assert_eq!(cleared.raised_at, 10);
        assert_eq!(store.clear_alarm(lag.id, 50, 100).await.unwrap(), None);
        assert_eq!(
            store.alarms(query(Some(false), None, 10)).await.unwrap(),
            vec![cleared]
        );
        // A new lag alarm may be raised once the last one is cleared.
        let lag2 = store.raise_alarm(new(AlarmKind::Lag, 60)).await.unwrap();
        assert!(lag2.id > gap.id);
        assert_eq!(lag2.cleared_at, None);
    }

    #[tokio::test]
    async fn the_history_is_bounded_and_paged_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(SqliteConfig::new(dir.path().join("site.db"))).unwrap();
        create_plant(&store).await;
        let mut ids = Vec::new();
        for at in 0..8 {
            let a = store
                .raise_alarm(new(AlarmKind::Unreachable, at))
                .await
                .unwrap();
            store.clear_alarm(a.id, at + 1, 5).await.unwrap().unwrap();
            ids.push(a.id);
        }
        let active = store
            .raise_alarm(new(AlarmKind::Unreachable, 100))
            .await
            .unwrap();
        // The five newest cleared ones are kept, and the active one.
        let all = store.alarms(query(None, None, 100)).await.unwrap();
        let got: Vec<i64> = all.iter().map(|a| a.id).collect();
        let mut want = vec![active.id];
        want.extend(ids[3..].iter().rev());
        assert_eq!(got, want);
        // Pages of two, each starting below the last id of the previous one.
        let p1 = store.alarms(query(None, None, 2)).await.unwrap();
        let p2 = store.alarms(query(None, Some(p1[1].id), 2)).await.unwrap();
        let p3 = store.alarms(query(None, Some(p2[1].id), 2)).await.unwrap();
        let paged: Vec<i64> = [p1, p2, p3].concat().iter().map(|a| a.id).collect();
        assert_eq!(paged, want);
        let other = ConnectorId::parse("aaaaaaaaaaaaaa").unwrap();
        let none = store
            .alarms(AlarmQuery {
                connector: Some(other),
                ..query(None, None, 10)
            })
            .await
            .unwrap();
        assert!(none.is_empty());
        assert_eq!(store.alarms(query(None, None, 0)).await.unwrap().len(), 1);
    }
}
