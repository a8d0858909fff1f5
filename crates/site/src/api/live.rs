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
use proto::model::Value;
use serde::Serialize;
use serde_json::json;
use store::{LiveBatch, LivePoint};
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
    let points = Points {
        all: &batch.points,
        device,
        resource,
    };
    // An event with no point left is not sent.
    points.iter().next()?;
    // Written from the batch into one string, then handed to the event whole: a commit of
    // 1,000 points is rendered on the latency path of every subscriber, so no JSON tree is
    // built, and the event's own writer (`Event::json_data`), which scans every one of the
    // serializer's many small writes for line breaks, is not used; compact JSON has none (a
    // string's are escaped), so the event's one scan finds nothing to split.
    match points_json(&points) {
        Ok(json) => Some(Event::default().event("points").data(json)),
        Err(e) => {
            tracing::error!(error = %e, "cannot render a live event");
            None
        }
    }
}

/// The JSON of a `points` event, `{"points":[{"device","resource","t","v"}, …]}`, written
/// into one buffer sized for it (growing from empty copied a 1,000-point event's 85 KB ten
/// times over). Names are copied as they are: their alphabets (`Identity`, `ResourceName`)
/// hold no character JSON escapes. Values go through serde_json, as the data API shows them.
fn points_json(points: &Points<'_>) -> Result<String, Box<dyn std::error::Error>> {
    let size = 16
        + points
            .iter()
            .map(|p| 64 + p.device.as_str().len() + p.resource.as_str().len())
            .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(b"{\"points\":[");
    for (i, p) in points.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"device\":\"");
        out.extend_from_slice(p.device.as_str().as_bytes());
        out.extend_from_slice(b"\",\"resource\":\"");
        out.extend_from_slice(p.resource.as_str().as_bytes());
        out.extend_from_slice(b"\",\"t\":");
        serde_json::to_writer(&mut out, &p.t)?;
        out.extend_from_slice(b",\"v\":");
        serde_json::to_writer(&mut out, &ShownValue(&p.v))?;
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    Ok(String::from_utf8(out)?)
}

/// The points of a batch that pass a stream's filters.
struct Points<'a> {
    all: &'a [LivePoint],
    device: Option<&'a proto::model::Identity>,
    resource: Option<&'a proto::model::ResourceName>,
}

impl<'a> Points<'a> {
    fn iter(&self) -> impl Iterator<Item = &'a LivePoint> + use<'a> {
        let (device, resource) = (self.device, self.resource);
        self.all.iter().filter(move |p| {
            device.is_none_or(|d| &p.device == d) && resource.is_none_or(|r| &p.resource == r)
        })
    }
}

/// A value as JSON, as `Value::to_json` makes it, without building it first.
struct ShownValue<'a>(&'a Value);

impl Serialize for ShownValue<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Number(x) if x.is_finite() => s.serialize_f64(*x),
            Value::Integer(i) => s.serialize_i64(*i),
            Value::String(text) => s.serialize_str(text),
            Value::Boolean(b) => s.serialize_bool(*b),
            Value::Number(_) | Value::Json(_) => self.0.to_json().serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use proto::model::{Identity, ResourceName};
    use serde_json::json;

    use super::*;

    fn point(device: &str, resource: &str, t: i64, v: Value) -> LivePoint {
        LivePoint {
            device: Identity::parse(device).expect("identity"),
            resource: ResourceName::parse(resource).expect("resource"),
            t,
            v,
        }
    }

    /// The event is written without a JSON tree: it must read exactly as one made with
    /// `Value::to_json`, for every kind of value, and keep only what the filters pass.
    #[test]
    fn a_points_event_shows_each_value_as_the_data_api_does_and_filters() {
        let all = vec![
            point("d1", "temp", 1, Value::Number(21.5)),
            point("d1", "temp", 2, Value::Number(f64::NAN)),
            point("d1", "count", 3, Value::Integer(-7)),
            point("d2", "name", 4, Value::String("a \"quoted\"\nline".into())),
            point("d2", "on", 5, Value::Boolean(true)),
            point("d2", "cfg", 6, Value::Json(r#"{"a":[1,2.5,"x"]}"#.into())),
        ];
        let shown = |device: Option<&str>, resource: Option<&str>| {
            let (device, resource) = (
                device.map(|d| Identity::parse(d).expect("identity")),
                resource.map(|r| ResourceName::parse(r).expect("resource")),
            );
            let points = Points {
                all: &all,
                device: device.as_ref(),
                resource: resource.as_ref(),
            };
            let json = points_json(&points).expect("renders");
            serde_json::from_str::<serde_json::Value>(&json).expect("valid JSON")
        };
        let expected: Vec<_> = all
            .iter()
            .map(|p| json!({"device": p.device, "resource": p.resource, "t": p.t, "v": p.v.to_json()}))
            .collect();
        assert_eq!(shown(None, None), json!({ "points": expected }));
        assert_eq!(
            shown(Some("d1"), Some("temp")),
            json!({ "points": expected[..2] })
        );
        assert_eq!(shown(Some("d3"), None), json!({ "points": [] }));
    }
}
