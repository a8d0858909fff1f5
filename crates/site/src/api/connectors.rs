//! `/api/v1/connectors…`: create, list, read, rename and delete connectors, and their Remote-Sync
//! standing: pairing (enable, disable), ping, status, rate history and settings (the
//! bandwidth budget) and backfills.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value as Json_;

use super::extract::{ApiJson, QueryPairs};
use super::render::{backfill_json, connector_json, gap_json, remote_sync_json, sync_history_json};
use crate::auth::User;
use crate::error::ApiError;
use crate::ops::connectors::{ConnectorChange, NewConnector, PairWith};
use crate::ops::{self, connector_id};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    name: String,
    #[serde(default)]
    description: String,
    remote_sync_target: Option<TargetBody>,
}

/// `PATCH /api/v1/connectors/{cid}`: any of `name`, `description`; absent leaves a field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    name: Option<String>,
    description: Option<String>,
}

/// What the Target operator enters to pair with a Source.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetBody {
    remote_site: String,
    remote_connector_id: String,
    pairing_code: String,
}

pub async fn list(State(state): State<AppState>, _: User) -> Result<Json<Json_>, ApiError> {
    let all = state.store.list_connectors().await?;
    Ok(Json(Json_::Array(
        all.iter().map(|c| connector_json(&state, c)).collect(),
    )))
}

pub async fn create(
    State(state): State<AppState>,
    _: User,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<(StatusCode, Json<Json_>), ApiError> {
    let new = NewConnector {
        name: body.name,
        description: body.description,
        pair_with: body.remote_sync_target.map(|t| PairWith {
            remote_site: t.remote_site,
            remote_connector_id: t.remote_connector_id,
            pairing_code: t.pairing_code,
        }),
    };
    let c = ops::connectors::create(&state, new).await?;
    Ok((StatusCode::CREATED, Json(connector_json(&state, &c))))
}

pub async fn get_one(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let c = state.store.connector(&connector_id(&cid)?).await?;
    Ok(Json(connector_json(&state, &c)))
}

pub async fn update(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
    ApiJson(body): ApiJson<PatchBody>,
) -> Result<Json<Json_>, ApiError> {
    let change = ConnectorChange {
        name: body.name,
        description: body.description,
    };
    let c = ops::connectors::update(&state, &connector_id(&cid)?, change).await?;
    Ok(Json(connector_json(&state, &c)))
}

pub async fn delete(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
) -> Result<StatusCode, ApiError> {
    ops::connectors::delete(&state, &connector_id(&cid)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn enable(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let cid = connector_id(&cid)?;
    let c = ops::pairing::enable(&state, &cid).await?;
    let window = state.store.pairing_window(&cid).await?;
    Ok(Json(serde_json::json!({
        "state": c.state.as_str(),
        "site": state.site_name,
        "connector_id": c.id,
        "pairing_code": window.as_ref().map(|w| w.code.clone()),
        "expires_at": c.pairing_expires_at.map(crate::clock::rfc3339),
    })))
}

pub async fn disable(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let c = ops::pairing::disable(&state, &connector_id(&cid)?).await?;
    Ok(Json(remote_sync_json(&state, &c)))
}

pub async fn remote_sync(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let c = state.store.connector(&connector_id(&cid)?).await?;
    let mut rs = remote_sync_json(&state, &c);
    if c.state == proto::model::SyncState::Pairing {
        rs["failed_attempts"] = ops::pairing::attempts_used(&state, &c.id).await.into();
        rs["max_attempts"] = proto::pairing::MAX_ATTEMPTS.into();
        rs["window_seconds"] = state.pairing_window.as_secs().into();
    }
    rs["max_bytes_per_s"] = serde_json::json!(ops::budget::get(&state, &c.id).await?);
    let gaps = state.store.sync_gaps(&c.id).await?;
    rs["gaps"] = Json_::Array(gaps.iter().map(gap_json).collect());
    if c.state == proto::model::SyncState::Paired {
        let backfill = ops::backfill::status(&state, &c).await?;
        rs["backfill"] = backfill.as_ref().map_or(Json_::Null, backfill_json);
    }
    Ok(Json(rs))
}

/// `POST …/remote-sync/backfill`: send a resource's points of a time range again (docs/api.md).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillBody {
    resource: String,
    since: Option<i64>,
    until: Option<i64>,
    devices: Option<Vec<String>>,
}

pub async fn backfill(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
    ApiJson(body): ApiJson<BackfillBody>,
) -> Result<(StatusCode, Json<Json_>), ApiError> {
    let ask = ops::backfill::Ask {
        resource: body.resource,
        since: body.since,
        until: body.until,
        devices: body.devices,
    };
    let view = ops::backfill::start(&state, &connector_id(&cid)?, ask).await?;
    Ok((StatusCode::ACCEPTED, Json(backfill_json(&view))))
}

/// `DELETE …/remote-sync/backfill`: cancel the running backfill.
pub async fn cancel_backfill(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let view = ops::backfill::cancel(&state, &connector_id(&cid)?).await?;
    Ok(Json(backfill_json(&view)))
}

/// `PATCH …/remote-sync`: the connector's Remote-Sync settings; today its bandwidth
/// budget (`max_bytes_per_s`: bytes per second, or `null` for none; absent: unchanged).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSyncPatch {
    #[serde(default, deserialize_with = "present")]
    max_bytes_per_s: Option<Option<u64>>,
}

/// A field that is present, `null` included.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

pub async fn update_remote_sync(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
    ApiJson(body): ApiJson<RemoteSyncPatch>,
) -> Result<Json<Json_>, ApiError> {
    let cid = connector_id(&cid)?;
    let c = match body.max_bytes_per_s {
        Some(budget) => ops::budget::set(&state, &cid, budget).await?,
        None => state.store.connector(&cid).await?,
    };
    let mut rs = remote_sync_json(&state, &c);
    rs["max_bytes_per_s"] = serde_json::json!(ops::budget::get(&state, &cid).await?);
    Ok(Json(rs))
}

/// `GET …/remote-sync/history?since=µs`: the last hour of the link's send and apply rates
/// and backlog, for the Remote-Sync tab's chart; 409 when not paired.
pub async fn remote_sync_history(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
    q: QueryPairs,
) -> Result<Json<Json_>, ApiError> {
    let cid = connector_id(&cid)?;
    let since = q.number("since", 0, 0..=i64::MAX)?;
    let c = ops::connectors::paired(&state, &cid, "link to keep a history of").await?;
    Ok(Json(sync_history_json(&state, &c, since)))
}

/// `POST …/remote-sync/ping`: a round trip through the connector's end-to-end encrypted
/// session with its peer.
pub async fn ping(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let rtt = ops::connectors::ping(&state, &connector_id(&cid)?).await?;
    Ok(Json(
        serde_json::json!({ "rtt_ms": rtt.as_secs_f64() * 1000.0 }),
    ))
}
