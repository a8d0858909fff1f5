//! The device list as SQL: its filters (tags, identity prefix, state, last seen), its sort
//! keys and its keyset paging, shared by the list and its count, so that "12 of 5,000"
//! always counts what the pages show.
//!
//! Sorted by identity, a page is a range of the `(connector, identity)` index. Any other sort
//! key is computed per device in the query (state; last seen: the newest `latest` row of an
//! existing resource or the Tail's newest point, whichever is later; sync: the device
//! record's `out_seq` above the peer's acknowledgement) and SQLite keeps the first `limit`
//! rows of the connector's filtered devices: one pass over them, a few index lookups each,
//! never the whole list loaded into memory. [`crate::sort_key`] computes the same keys from a loaded `Device`,
//! which is what a page's cursor is made of.

use std::collections::HashMap;

use proto::model::{ConnectorId, DeviceSort, SeenFilter};
use rusqlite::Connection;
use rusqlite::types::Value as Sql;

use super::backend;
use super::rows::{DEVICE_COLUMNS, DeviceRow, collect_rows, device_row};
use crate::{DeviceQuery, Result};

/// A device's newest point in the folded store (-1: none), over the resources that exist.
const FOLDED_SEEN: &str =
    "IFNULL((SELECT MAX(l.t) FROM latest l JOIN resources r ON r.id = l.resource
     WHERE l.device = devices.id), -1)";

/// Whether this site's latest change of the device is not yet acknowledged by the peer, as
/// `devices::pending` reads it (1 or 0).
const PENDING: &str = "IFNULL((SELECT r.out_seq > IFNULL((SELECT o.acked FROM sync_out o
     WHERE o.connector = devices.connector), 0)
     FROM device_records r WHERE r.connector = devices.connector
     AND r.identity = devices.identity AND r.out_seq IS NOT NULL), 0)";

/// Whether `query` needs each device's last-seen time (and so the Tail's newest points).
pub(super) fn needs_last_seen(query: &DeviceQuery) -> bool {
    query.sort == DeviceSort::LastSeen || query.seen.is_some()
}

/// The query's devices, `SELECT`ed with the sort key as `sort_key` and the last-seen time as
/// `last_seen` when asked (`tail`: each device's newest unfolded point, by row id), its
/// tag, prefix and state conditions applied; the last-seen filter and the keyset are the
/// caller's, on the outside.
///
/// With a tail, the devices it holds and the others are two branches of a `UNION ALL`: the
/// tail (a JSON object of row id → time, one parameter) drives the first through the
/// `devices` primary key, and the second keeps the devices not in it (an `IN` list SQLite
/// indexes once). Either way a device costs a few index lookups, never a scan of the tail.
fn filtered(
    query: &DeviceQuery,
    cid: &ConnectorId,
    tail: Option<&HashMap<i64, i64>>,
    key: bool,
    args: &mut Vec<Sql>,
) -> String {
    args.push(Sql::Text(cid.as_str().to_owned()));
    let mut conditions = String::new();
    if let Some(prefix) = query.prefix.as_deref().filter(|p| !p.is_empty()) {
        // Identities compare bytewise: every one that starts with `prefix` lies in
        // [prefix, prefix + U+10FFFF), a range the (connector, identity) index answers.
        args.push(Sql::Text(prefix.to_owned()));
        args.push(Sql::Text(format!("{prefix}\u{10FFFF}")));
        conditions.push_str(&format!(
            " AND devices.identity >= ?{} AND devices.identity < ?{}",
            args.len() - 1,
            args.len()
        ));
    }
    if let Some(state) = query.state {
        args.push(Sql::Text(state.as_str().to_owned()));
        conditions.push_str(&format!(" AND devices.state = ?{}", args.len()));
    }
    for (k, v) in &query.tags {
        args.push(Sql::Text(k.clone()));
        args.push(Sql::Text(v.clone()));
        conditions.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM json_each(devices.tags) j
               WHERE j.key = ?{} AND j.value = ?{})",
            args.len() - 1,
            args.len()
        ));
    }
    let columns: Vec<String> = DEVICE_COLUMNS
        .split(", ")
        .map(|c| format!("devices.{c}"))
        .collect();
    let columns = columns.join(", ");
    // One branch's SELECT, with its devices' last-seen time.
    let select = |last_seen: &str| {
        let mut out = columns.clone();
        if key {
            let sort_key = match query.sort {
                DeviceSort::Identity => "0",
                DeviceSort::State => "(devices.state <> 'locked')",
                DeviceSort::LastSeen => last_seen,
                DeviceSort::Sync => PENDING,
            };
            out.push_str(&format!(", {sort_key} AS sort_key"));
        }
        if query.seen.is_some() {
            out.push_str(&format!(", {last_seen} AS last_seen"));
        }
        out
    };
    match tail.filter(|t| !t.is_empty()) {
        None => format!(
            "SELECT {} FROM devices WHERE devices.connector = ?1{conditions}",
            select(FOLDED_SEEN)
        ),
        Some(tail) => {
            let mut object = String::with_capacity(tail.len() * 24 + 2);
            object.push('{');
            for (i, (device, t)) in tail.iter().enumerate() {
                if i > 0 {
                    object.push(',');
                }
                object.push_str(&format!("\"{device}\":{t}"));
            }
            object.push('}');
            args.push(Sql::Text(object));
            let n = args.len();
            format!(
                "SELECT {} FROM json_each(?{n}) AS tail
                   CROSS JOIN devices ON devices.id = CAST(tail.key AS INTEGER)
                   WHERE devices.connector = ?1{conditions}
                 UNION ALL
                 SELECT {} FROM devices WHERE devices.connector = ?1{conditions}
                   AND devices.id NOT IN (SELECT CAST(key AS INTEGER) FROM json_each(?{n}))",
                select(&format!("MAX({FOLDED_SEEN}, tail.value)")),
                select(FOLDED_SEEN),
            )
        }
    }
}

/// `inner` as the table `listed`, `computed` when its rows carry a computed key or last-seen
/// time: then each is computed once per device into a transient table, not again for every
/// condition of the outer query that SQLite would push down into it.
fn listed(inner: &str, computed: bool) -> String {
    let how = if computed {
        "MATERIALIZED"
    } else {
        "NOT MATERIALIZED"
    };
    format!("WITH listed AS {how} ({inner})")
}

/// The last-seen condition on the outer query, if any.
fn seen_condition(query: &DeviceQuery, args: &mut Vec<Sql>) -> String {
    match query.seen {
        None => String::new(),
        Some(SeenFilter::Since(t)) => {
            args.push(Sql::Integer(t));
            format!(" AND last_seen >= ?{}", args.len())
        }
        Some(SeenFilter::Before(t)) => {
            args.push(Sql::Integer(t));
            format!(" AND last_seen >= 0 AND last_seen < ?{}", args.len())
        }
        Some(SeenFilter::Never) => " AND last_seen < 0".to_owned(),
    }
}

/// One page of the list as `query` describes it, in list order (a page going back too).
pub(super) fn page(
    conn: &Connection,
    cid: &ConnectorId,
    query: &DeviceQuery,
    tail: Option<&HashMap<i64, i64>>,
) -> Result<Vec<DeviceRow>> {
    let mut args = Vec::new();
    let by_identity = query.sort == DeviceSort::Identity;
    let inner = filtered(query, cid, tail, !by_identity, &mut args);
    let mut sql = format!(
        "{} SELECT {DEVICE_COLUMNS} FROM listed WHERE 1{}",
        listed(&inner, !by_identity || query.seen.is_some()),
        seen_condition(query, &mut args)
    );
    let back = query.from.as_ref().is_some_and(|p| p.back);
    // Going back reads the list backwards from the place, then turns the page around.
    let descending = query.descending != back;
    let (cmp, dir) = if descending {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    if let Some(place) = &query.from {
        args.push(Sql::Text(place.identity.as_str().to_owned()));
        let id = args.len();
        if by_identity {
            sql.push_str(&format!(" AND identity {cmp} ?{id}"));
        } else {
            args.push(Sql::Integer(place.key));
            sql.push_str(&format!(
                " AND (sort_key, identity) {cmp} (?{}, ?{id})",
                args.len()
            ));
        }
    }
    if by_identity {
        sql.push_str(&format!(" ORDER BY identity {dir}"));
    } else {
        sql.push_str(&format!(" ORDER BY sort_key {dir}, identity {dir}"));
    }
    sql.push_str(&format!(" LIMIT {}", query.limit));
    let mut stmt = conn.prepare(&sql).map_err(backend("listing devices"))?;
    let mut rows = collect_rows(
        &mut stmt,
        rusqlite::params_from_iter(args.iter()),
        device_row,
        "listing devices",
    )?;
    if back {
        rows.reverse();
    }
    Ok(rows)
}

/// How many devices pass `query`'s filters.
pub(super) fn count(
    conn: &Connection,
    cid: &ConnectorId,
    query: &DeviceQuery,
    tail: Option<&HashMap<i64, i64>>,
) -> Result<u64> {
    let mut args = Vec::new();
    let inner = filtered(query, cid, tail, false, &mut args);
    let sql = format!(
        "{} SELECT COUNT(*) FROM listed WHERE 1{}",
        listed(&inner, query.seen.is_some()),
        seen_condition(query, &mut args)
    );
    let n: i64 = conn
        .prepare(&sql)
        .and_then(|mut s| s.query_row(rusqlite::params_from_iter(args.iter()), |r| r.get(0)))
        .map_err(backend("counting devices"))?;
    Ok(u64::try_from(n).unwrap_or(0))
}
