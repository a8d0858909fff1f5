//! Data: points devices write, and series read back in pages.
//!
//! An ingest is answered only after the store committed every point of it; one bad point
//! refuses the whole request and stores nothing. On a paired Source the same store job
//! appends the points of Remote-Sync resources to the outbox, so the driver is woken here.

use std::time::Instant;

use proto::model::{ConnectorId, Identity, ResourceName};
use store::{Point, PointsIn, RangeQuery};

use super::Result;
use crate::state::AppState;

/// Stores points of connector `cid`; answers how many. `started` is when the request
/// arrived, for the ingest latency histogram.
pub async fn ingest(
    state: &AppState,
    cid: &ConnectorId,
    points: Vec<PointsIn>,
    started: Instant,
) -> Result<usize> {
    let result = state
        .store
        .ingest(cid, points)
        .await
        .map_err(super::Error::from);
    // Ingest is the site's main writer: it tells whether the disk has room (`/health`).
    match &result {
        Ok(_) => state.metrics.set_storage_full(false),
        Err(super::Error::StorageFull) => state.metrics.set_storage_full(true),
        Err(_) => {}
    }
    match result {
        Ok(n) => {
            // Wake the connector's sync driver, the outbox may have grown (unless the
            // store did as soon as the commit was durable).
            state.remote.sync.ingested(cid);
            state.metrics.ingest_points.increment(n as u64);
            state
                .metrics
                .ingest_seconds
                .record(started.elapsed().as_secs_f64());
            Ok(n)
        }
        Err(e) => {
            refused(state);
            Err(e)
        }
    }
}

/// Counts an ingest request refused before it reached the store (bad input).
pub fn refused(state: &AppState) {
    state.metrics.ingest_refused.increment(1);
}

/// A page of one series, and the cursor of the next page when more follow.
pub struct Series {
    pub points: Vec<Point>,
    pub next: Option<i64>,
}

/// Points of one device's resource: `query.limit` is the page size asked.
pub async fn series(
    state: &AppState,
    cid: &ConnectorId,
    id: &Identity,
    name: &ResourceName,
    query: RangeQuery,
) -> Result<Series> {
    let want = query.limit;
    let query = RangeQuery {
        limit: want.saturating_add(1),
        ..query
    };
    let mut points = state.store.points(cid, id, name, query).await?;
    let mut next = None;
    if points.len() > want {
        points.truncate(want);
        next = points.last().map(|p| p.t);
    }
    Ok(Series { points, next })
}
