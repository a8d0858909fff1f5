//! Each connector's latest backfill, kept across restarts (docs/sync.md, "Backfill";
//! `backfills` and `backfill_slices`, migration 15).
//!
//! - [`save`]: a backfill starts (on a Source, which queues it; on a Target, which asked
//!   for it), replacing the connector's previous one with its slices.
//! - [`sliced`]: in the commit of each slice (`sync_site::requeue`), the cursor where the
//!   next one starts, the points queued and the slice's seq run; runs the peer has wholly
//!   acknowledged are dropped there. A slice that finds the range done leaves the backfill
//!   `sending` in the same commit, so a crash between the slice and [`end`] does not queue
//!   the range again.
//! - [`end`]: it stopped queuing (everything queued, cancelled or failed).
//! - [`all`]: what a starting site restores; a Source's `queuing` one goes on from its
//!   cursor, exactly after the last slice committed.
//!
//! Whether a `sending` backfill is done is not stored: the site compares the slices with
//! the acknowledged seq, which moves without the backfill.

use proto::lookup::{BackfillState, BackfillView};
use proto::model::{ConnectorId, Identity};
use rusqlite::{Connection, OptionalExtension, params};

use super::outbox::{to_i64, to_u64};
use super::{backend, connector_exists, select_rows};
use crate::{RequeueCursor, Result, StoreError, StoredBackfill};

fn json_err(op: &'static str) -> impl FnOnce(serde_json::Error) -> StoreError {
    move |e| StoreError::Backend {
        op,
        source: Box::new(e),
    }
}

pub(super) fn save(
    conn: &Connection,
    cid: &ConnectorId,
    view: &BackfillView,
    devices: Option<&[Identity]>,
) -> Result<()> {
    connector_exists(conn, cid)?;
    let op = "keeping a backfill";
    let json = serde_json::to_string(view).map_err(json_err(op))?;
    let devices = devices
        .map(|d| serde_json::to_string(d).map_err(json_err(op)))
        .transpose()?;
    conn.prepare_cached("DELETE FROM backfill_slices WHERE connector = ?1")
        .and_then(|mut s| s.execute([cid.as_str()]))
        .map_err(backend(op))?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO backfills
             (connector, id, view, devices, state, queued, finished_at, next_device, next_t)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL)",
    )
    .and_then(|mut s| {
        s.execute(params![
            cid.as_str(),
            view.id as i64,
            json,
            devices,
            view.state.as_str(),
            to_i64(view.queued),
            view.finished_at,
        ])
    })
    .map_err(backend(op))?;
    Ok(())
}

/// Advances backfill `id` of `cid` by one slice committed in this transaction: `points`
/// records from `first_seq`, the next slice at `next` (`None`: the range is done).
/// Nothing when the stored backfill is another or no longer queuing.
pub(super) fn sliced(
    conn: &Connection,
    cid: &ConnectorId,
    id: u64,
    (first_seq, points): (u64, u64),
    next: Option<&RequeueCursor>,
) -> Result<()> {
    let op = "advancing a backfill";
    let queuing = conn
        .prepare_cached("SELECT state FROM backfills WHERE connector = ?1 AND id = ?2")
        .and_then(|mut s| {
            s.query_row(params![cid.as_str(), id as i64], |r| r.get::<_, String>(0))
                .optional()
        })
        .map_err(backend(op))?
        .is_some_and(|s| s == BackfillState::Queuing.as_str());
    if !queuing {
        return Ok(());
    }
    let state = match next {
        Some(_) => BackfillState::Queuing,
        None => BackfillState::Sending,
    };
    conn.prepare_cached(
        "UPDATE backfills SET queued = queued + ?2, next_device = ?3, next_t = ?4, state = ?5
         WHERE connector = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            cid.as_str(),
            to_i64(points),
            next.map(|c| c.device.as_str()),
            next.map(|c| c.t),
            state.as_str(),
        ])
    })
    .map_err(backend(op))?;
    if points > 0 {
        conn.prepare_cached(
            "INSERT OR REPLACE INTO backfill_slices (connector, first_seq, points)
             VALUES (?1, ?2, ?3)",
        )
        .and_then(|mut s| s.execute(params![cid.as_str(), to_i64(first_seq), to_i64(points)]))
        .map_err(backend(op))?;
    }
    conn.prepare_cached(
        "DELETE FROM backfill_slices WHERE connector = ?1
           AND first_seq + points - 1 <= COALESCE(
               (SELECT acked FROM sync_out WHERE connector = ?1), 0)",
    )
    .and_then(|mut s| s.execute([cid.as_str()]))
    .map_err(backend(op))?;
    Ok(())
}

pub(super) fn end(
    conn: &Connection,
    cid: &ConnectorId,
    id: u64,
    state: BackfillState,
    at: i64,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE backfills SET state = ?3, finished_at = ?4 WHERE connector = ?1 AND id = ?2",
    )
    .and_then(|mut s| s.execute(params![cid.as_str(), id as i64, state.as_str(), at]))
    .map_err(backend("ending a backfill"))?;
    Ok(())
}

/// Forgets the connector's backfill (its sync state is forgotten).
pub(super) fn forget(conn: &Connection, cid: &ConnectorId) -> Result<()> {
    for sql in [
        "DELETE FROM backfills WHERE connector = ?1",
        "DELETE FROM backfill_slices WHERE connector = ?1",
    ] {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([cid.as_str()]))
            .map_err(backend("forgetting a backfill"))?;
    }
    Ok(())
}

type Row = (
    String,
    String,
    Option<String>,
    String,
    i64,
    Option<i64>,
    Option<String>,
    Option<i64>,
);

pub(super) fn all(conn: &Connection) -> Result<Vec<StoredBackfill>> {
    let op = "reading the backfills";
    let rows: Vec<Row> = select_rows(
        conn,
        "SELECT connector, view, devices, state, queued, finished_at, next_device, next_t
         FROM backfills ORDER BY connector",
        [],
        |r| {
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
        },
        op,
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for (connector, view, devices, state, queued, finished_at, next_device, next_t) in rows {
        let bad = |what: &str| StoreError::Backend {
            op,
            source: format!(
                "{what} of connector {connector}'s backfill is not one this store writes"
            )
            .into(),
        };
        let cid = ConnectorId::parse(&connector).map_err(|_| bad("the connector id"))?;
        let mut view: BackfillView = serde_json::from_str(&view).map_err(|_| bad("the view"))?;
        view.state = parse_state(&state).ok_or_else(|| bad("the state"))?;
        view.queued = to_u64(queued);
        view.applied = 0;
        view.finished_at = finished_at;
        let devices = devices
            .map(|d| serde_json::from_str::<Vec<Identity>>(&d))
            .transpose()
            .map_err(|_| bad("the devices"))?;
        let next = match (next_device, next_t) {
            (Some(d), Some(t)) => Some(RequeueCursor {
                device: Identity::parse(&d).map_err(|_| bad("the cursor"))?,
                t,
            }),
            _ => None,
        };
        let slices = select_rows(
            conn,
            "SELECT first_seq, points FROM backfill_slices
             WHERE connector = ?1 AND first_seq + points - 1 > COALESCE(
                 (SELECT acked FROM sync_out WHERE connector = ?1), 0)
             ORDER BY first_seq",
            [cid.as_str()],
            |r| Ok((to_u64(r.get(0)?), to_u64(r.get(1)?))),
            op,
        )?;
        out.push(StoredBackfill {
            connector: cid,
            view,
            devices,
            next,
            slices,
        });
    }
    Ok(out)
}

fn parse_state(s: &str) -> Option<BackfillState> {
    [
        BackfillState::Queuing,
        BackfillState::Sending,
        BackfillState::Done,
        BackfillState::Cancelled,
        BackfillState::Failed,
    ]
    .into_iter()
    .find(|st| st.as_str() == s)
}
