//! The filters of a device list (tags, identity prefix) as SQL, shared by the list and its
//! count, so that "12 of 5,000" always counts what the pages show.

use rusqlite::Connection;

use super::backend;
use crate::{DeviceQuery, Result};
use proto::model::ConnectorId;

/// Appends `query`'s tag and prefix conditions to `sql` (a `SELECT … FROM devices WHERE …`),
/// with their arguments numbered after those already in `args`.
pub(super) fn filter(query: &DeviceQuery, sql: &mut String, args: &mut Vec<String>) {
    if let Some(prefix) = query.prefix.as_deref().filter(|p| !p.is_empty()) {
        // Identities compare bytewise: every one that starts with `prefix` lies in
        // [prefix, prefix + U+10FFFF), a range the (connector, identity) index answers.
        args.push(prefix.to_owned());
        args.push(format!("{prefix}\u{10FFFF}"));
        sql.push_str(&format!(
            " AND identity >= ?{} AND identity < ?{}",
            args.len() - 1,
            args.len()
        ));
    }
    for (k, v) in &query.tags {
        args.push(k.clone());
        args.push(v.clone());
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM json_each(devices.tags) j
               WHERE j.key = ?{} AND j.value = ?{})",
            args.len() - 1,
            args.len()
        ));
    }
}

pub(super) fn count(conn: &Connection, cid: &ConnectorId, query: &DeviceQuery) -> Result<u64> {
    let mut sql = "SELECT COUNT(*) FROM devices WHERE connector = ?1".to_owned();
    let mut args: Vec<String> = vec![cid.as_str().to_owned()];
    filter(query, &mut sql, &mut args);
    let n: i64 = conn
        .prepare(&sql)
        .and_then(|mut s| s.query_row(rusqlite::params_from_iter(args.iter()), |r| r.get(0)))
        .map_err(backend("counting devices"))?;
    Ok(u64::try_from(n).unwrap_or(0))
}
