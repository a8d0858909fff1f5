//! The live stream of a connector's data (issue 11): `GET
//! /api/v1/connectors/{cid}/data/live`, Server-Sent Events. Each commit that makes points of
//! the connector durable (an ingest here, or on a Target an applied sync batch) becomes one
//! `points` event once it is durable:
//!
//! ```text
//! event: points
//! data: {"points":[{"device":"d1","resource":"temp","t":1700000000000000,"v":21.5}, …]}
//! ```
//!
//! in commit order, each point once, and each series in the order applied: as written on
//! the site that took the request; on a Target as the Source's batches carry them (in time
//! order within a batch). `device=`
//! and `resource=` keep only that device's or resource's points (an event with none left
//! is not sent). Each commit that changes devices of the connector (an edit here, or the
//! peer's applied) also becomes one `device` event, `{"changes": [AuditEntry, …]}` (the
//! entries of the audit log, docs/api.md), kept to the one device by `device=`; this is how
//! an open device page rewrites its tags, permissions and configuration in place. A client
//! too slow to keep up gets `event: lagged` with `{"missed": N}`
//! (commits it will not see; read them with the data API) and the stream goes on.
//! Authentication as for reads (a user's token or session).

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde_json::json;
use store::LiveBatch;
use tokio::sync::broadcast::error::RecvError;

use super::extract::QueryPairs;
use super::render::audit_entry_json;
use crate::auth::User;
use crate::error::ApiError;
use crate::ops::{connector_id, identity, resource_name};
use crate::state::AppState;

pub async fn live(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
    q: QueryPairs,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let cid = connector_id(&cid)?;
    let device = q.get("device").map(identity).transpose()?;
    let resource = q.get("resource").map(resource_name).transpose()?;
    // Subscribed before the connector is checked: nothing committed after this answer's
    // start is missed.
    let rx = state.store.live();
    state.store.connector(&cid).await?;
    let events = futures::stream::unfold(rx, move |mut rx| {
        let (cid, device, resource) = (cid.clone(), device.clone(), resource.clone());
        async move {
            loop {
                let event = match rx.recv().await {
                    Ok(batch) => render(&batch, &cid, device.as_ref(), resource.as_ref()),
                    Err(RecvError::Lagged(missed)) => Some(
                        Event::default()
                            .event("lagged")
                            .data(json!({ "missed": missed }).to_string()),
                    ),
                    Err(RecvError::Closed) => return None,
                };
                if let Some(event) = event {
                    return Some((Ok(event), rx));
                }
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// The event of a batch for this stream, if any of it passes the filters: `points`, or
/// `device` for a batch of device changes (only the `device` filter applies to those).
fn render(
    batch: &LiveBatch,
    cid: &proto::model::ConnectorId,
    device: Option<&proto::model::Identity>,
    resource: Option<&proto::model::ResourceName>,
) -> Option<Event> {
    if &batch.connector != cid {
        return None;
    }
    if !batch.devices.is_empty() {
        let changes: Vec<_> = batch
            .devices
            .iter()
            .filter(|e| device.is_none_or(|d| &e.identity == d))
            .map(audit_entry_json)
            .collect();
        return (!changes.is_empty()).then(|| {
            Event::default()
                .event("device")
                .data(json!({ "changes": changes }).to_string())
        });
    }
    let points: Vec<Shown<'_>> = batch
        .points
        .iter()
        .filter(|p| device.is_none_or(|d| &p.device == d))
        .filter(|p| resource.is_none_or(|r| &p.resource == r))
        .map(|p| Shown {
            device: &p.device,
            resource: &p.resource,
            t: p.t,
            v: p.v.to_json(),
        })
        .collect();
    if points.is_empty() {
        return None;
    }
    // Serialized straight from the batch: a commit of 1,000 points is rendered on the
    // latency path of every subscriber, so no intermediate JSON tree is built.
    let data = match serde_json::to_string(&PointsEvent { points }) {
        Ok(data) => data,
        Err(e) => {
            tracing::error!(error = %e, "cannot render a live event");
            return None;
        }
    };
    Some(Event::default().event("points").data(data))
}

/// The body of a `points` event.
#[derive(serde::Serialize)]
struct PointsEvent<'a> {
    points: Vec<Shown<'a>>,
}

/// One point of a `points` event, as the data API shows it.
#[derive(serde::Serialize)]
struct Shown<'a> {
    device: &'a proto::model::Identity,
    resource: &'a proto::model::ResourceName,
    t: i64,
    v: serde_json::Value,
}
