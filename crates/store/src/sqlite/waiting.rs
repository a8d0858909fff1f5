//! What a Target holds for resources it does not have yet (`sync_pending`), summed per
//! resource for the operator: how many points of which format wait, from how many devices.
//! Kept apart from `sync.rs`, which writes and expires those points.

use rusqlite::Connection;

use super::{resource_col, select_rows};
use crate::{Result, WaitingResource};
use proto::model::{ConnectorId, Format};

pub(super) fn waiting(conn: &Connection, cid: &ConnectorId) -> Result<Vec<WaitingResource>> {
    let rows = select_rows(
        conn,
        "SELECT resource, COUNT(*), COUNT(DISTINCT device), MIN(t), MAX(t), MAX(format),
             MIN(received_at)
         FROM sync_pending WHERE connector = ?1 GROUP BY resource ORDER BY resource",
        [cid.as_str()],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?,
            ))
        },
        "summing pending points",
    )?;
    rows.into_iter()
        .map(|(resource, points, devices, from, until, format, since)| {
            Ok(WaitingResource {
                resource: resource_col(resource, "reading a pending resource")?,
                format: super::parse_col(format, |s| Format::parse(s).ok(), "reading a format")?,
                points: u64::try_from(points).unwrap_or(0),
                devices: u64::try_from(devices).unwrap_or(0),
                from_us: from,
                until_us: until,
                since,
            })
        })
        .collect()
}
