//! The device API: writing points (one device, or many at once for gateways) and reading a
//! series back in pages.
//!
//! A write answers `{"accepted": N}` only after the store has committed every point of the
//! request; a request with any bad point is refused whole and stores nothing.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::Json;
use axum::extract::{Path, State};
use proto::model::{ConnectorId, Identity, ResourceName};
use serde::Deserialize;
use serde_json::{Value as Json_, json};
use store::{Order, PointsIn, RangeQuery};

use super::extract::{ApiBytes, QueryPairs, parse_json};
use crate::auth::{User, Writer};
use crate::clock::now_micros;
use crate::error::ApiError;
use crate::ops::{self, connector_id, identity, resource_name};
use crate::state::AppState;

const ONLY_OWN: &str = "a device token may write only its own device's data";
const DEFAULT_PAGE: i64 = 1000;
const MAX_PAGE: i64 = 10_000;

/// Values one device reports at one time; `t` defaults to the time of arrival.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PointBody {
    t: Option<i64>,
    values: BTreeMap<String, Json_>,
}

/// One entry of the bulk endpoint: a `PointBody` naming its device.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    device: String,
    t: Option<i64>,
    values: BTreeMap<String, Json_>,
}

fn points_in(
    identity: Identity,
    t: Option<i64>,
    values: BTreeMap<String, Json_>,
    now: i64,
) -> Result<PointsIn, ApiError> {
    if values.is_empty() {
        return Err(ApiError::invalid(
            "values must name at least one resource".into(),
        ));
    }
    let values = values
        .into_iter()
        .map(|(k, v)| Ok((ResourceName::parse(&k)?, v)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(PointsIn {
        identity,
        t: t.unwrap_or(now),
        values,
    })
}

/// Whether a body is a JSON array, judged by its first significant byte.
fn is_array(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'[')
}

pub async fn ingest_device(
    State(state): State<AppState>,
    writer: Writer,
    Path((cid, id)): Path<(String, String)>,
    ApiBytes(body): ApiBytes,
) -> Result<Json<Json_>, ApiError> {
    let started = Instant::now();
    let (cid, id) = (connector_id(&cid)?, identity(&id)?);
    if !writer.may_write(&cid, &id) {
        return Err(ApiError::forbidden(ONLY_OWN.into()));
    }
    let points = parse_device_body(&body, &id, now_micros());
    store_points(&state, &cid, points, started).await
}

/// The points of a one-device ingest body (one object or an array of them) for device
/// `id`, stamped `now` where a body has no `t`. Pure (no I/O), so that it can be fuzzed
/// (fuzz/fuzz_targets/ingest_json.rs); the answer's error is the call's error.
pub fn parse_device_body(body: &[u8], id: &Identity, now: i64) -> Result<Vec<PointsIn>, ApiError> {
    let bodies: Vec<PointBody> = if is_array(body) {
        parse_json(body)?
    } else {
        vec![parse_json(body)?]
    };
    bodies
        .into_iter()
        .map(|b| points_in(id.clone(), b.t, b.values, now))
        .collect()
}

pub async fn ingest_bulk(
    State(state): State<AppState>,
    writer: Writer,
    Path(cid): Path<String>,
    ApiBytes(body): ApiBytes,
) -> Result<Json<Json_>, ApiError> {
    let started = Instant::now();
    let cid = connector_id(&cid)?;
    let points = parse_bulk_body(&body, now_micros(), |id| writer.may_write(&cid, id));
    store_points(&state, &cid, points, started).await
}

/// The points of a bulk ingest body (an array of entries naming their devices), stamped
/// `now` where an entry has no `t`; `may_write` is asked for each entry's device, in order.
/// Pure (no I/O), so that it can be fuzzed (fuzz/fuzz_targets/ingest_json.rs).
pub fn parse_bulk_body(
    body: &[u8],
    now: i64,
    may_write: impl Fn(&Identity) -> bool,
) -> Result<Vec<PointsIn>, ApiError> {
    let bodies: Vec<BulkBody> = parse_json(body)?;
    bodies
        .into_iter()
        .map(|b| {
            let id = Identity::parse(&b.device)?;
            if !may_write(&id) {
                return Err(ApiError::forbidden(ONLY_OWN.into()));
            }
            points_in(id, b.t, b.values, now)
        })
        .collect()
}

async fn store_points(
    state: &AppState,
    cid: &ConnectorId,
    points: Result<Vec<PointsIn>, ApiError>,
    started: Instant,
) -> Result<Json<Json_>, ApiError> {
    let points = points.inspect_err(|_| ops::data::refused(state))?;
    let n = ops::data::ingest(state, cid, points, started).await?;
    Ok(Json(json!({ "accepted": n })))
}

pub async fn read(
    State(state): State<AppState>,
    _: User,
    Path((cid, id, name)): Path<(String, String, String)>,
    q: QueryPairs,
) -> Result<Json<Json_>, ApiError> {
    let (cid, id, name) = (connector_id(&cid)?, identity(&id)?, resource_name(&name)?);
    let since = q.number("since", 0, 0..=i64::MAX)?;
    let until = q.number("until", i64::MAX, 0..=i64::MAX)?;
    if q.get("buckets").is_some() {
        return drawn(&state, (&cid, &id, &name), (since, until), &q).await;
    }
    let limit = q.number("limit", DEFAULT_PAGE, 1..=MAX_PAGE)?;
    let order = match q.get("order") {
        None | Some("asc") => Order::Asc,
        Some("desc") => Order::Desc,
        Some(other) => {
            return Err(ApiError::invalid_query(format!(
                "order must be asc or desc, not {other:?}"
            )));
        }
    };
    let after =
        match q.get("cursor") {
            None => None,
            Some(c) => Some(c.parse::<i64>().map_err(|_| {
                ApiError::invalid_query("cursor is not one this site gave out".into())
            })?),
        };
    let query = RangeQuery {
        since,
        until,
        after,
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
        order,
    };
    let series = ops::data::series(&state, &cid, &id, &name, query).await?;
    let mut page = json!({});
    if let Some(t) = series.next {
        page["next"] = json!(t.to_string());
    }
    page["points"] = Json_::Array(
        series
            .points
            .iter()
            .map(|p| json!({ "t": p.t, "v": p.v.to_json() }))
            .collect(),
    );
    Ok(Json(page))
}

/// `…/data?since=&until=&buckets=N`: the range as a chart draws it, its points while there
/// are at most 2 × N, else N equal spans with their count, min, max, first and last point
/// (empty ones left out).
async fn drawn(
    state: &AppState,
    (cid, id, name): (
        &proto::model::ConnectorId,
        &proto::model::Identity,
        &proto::model::ResourceName,
    ),
    (since, until): (i64, i64),
    q: &QueryPairs,
) -> Result<Json<Json_>, ApiError> {
    use crate::ops::export::{self, Drawn, MAX_BUCKETS};
    let buckets = q.number("buckets", 1, 1..=MAX_BUCKETS as i64)?;
    if q.get("since").is_none() || q.get("until").is_none() {
        return Err(ApiError::invalid_query(
            "buckets split a range: give since and until too".into(),
        ));
    }
    let n = usize::try_from(buckets).unwrap_or(1);
    Ok(Json(
        match export::drawn(state, cid, id, name, (since, until), n).await? {
            Drawn::Points(points) => json!({
                "points": points.iter().map(|p| json!({ "t": p.t, "v": p.v.to_json() })).collect::<Vec<_>>()
            }),
            Drawn::Buckets(buckets) => json!({
                "buckets": buckets.iter().map(|b| json!({
                    "from": b.from, "until": b.until, "n": b.n, "min": b.min, "max": b.max,
                    "first": { "t": b.first.0, "v": b.first.1 },
                    "last": { "t": b.last.0, "v": b.last.1 },
                })).collect::<Vec<_>>()
            }),
        },
    ))
}
