//! `/api/v1/connectors/{cid}/remote/…`: the peer's devices, looked up live through the hub
//! over the connector's end-to-end encrypted session (`ops::peer`), and the drift check
//! between the two registries.
//!
//! A remote list or device has exactly the local answer's shape: the peer answers with typed
//! views (`proto::lookup`) that this site renders as it renders its own devices. Refusals:
//! 409 `conflict` when the connector is not paired, 503 `peer_offline` when the session is
//! down or the peer does not answer within `ops::peer::TIMEOUT`, and the peer's own
//! `not_found` or `invalid_query`.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::Value as Json_;

use super::devices::list_query;
use super::extract::{ApiJson, QueryPairs};
use super::render::{device_json, device_page_json, drift_json, resent_json};
use crate::auth::User;
use crate::error::ApiError;
use crate::ops::{self, connector_id, identity};
use crate::state::AppState;

/// `GET …/remote/devices?tag=K:V&limit=N&cursor=C`: one page of the peer's device list.
pub async fn list(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
    q: QueryPairs,
) -> Result<Json<Json_>, ApiError> {
    let c = state.store.connector(&connector_id(&cid)?).await?;
    let q = list_query(&q)?;
    let page = ops::peer::list(&state, &c, q.clone()).await?;
    Ok(Json(device_page_json(&page, &q)))
}

/// `GET …/remote/devices/{identity}`: one device as the peer has it.
pub async fn get_one(
    State(state): State<AppState>,
    _: User,
    Path((cid, id)): Path<(String, String)>,
) -> Result<Json<Json_>, ApiError> {
    let c = state.store.connector(&connector_id(&cid)?).await?;
    let d = ops::peer::device(&state, &c, &identity(&id)?).await?;
    Ok(Json(device_json(&d)))
}

/// `GET …/remote/diff`: the drift check, `{"in_sync", "differences": […], …}`.
pub async fn diff(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let c = state.store.connector(&connector_id(&cid)?).await?;
    Ok(Json(drift_json(&ops::peer::diff(&state, &c).await?)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResendBody {
    identities: Vec<String>,
}

/// `POST …/remote/resend {"identities": […]}`: re-sends those devices in both directions
/// (after the drift check listed them), `{"queued", "peer": {"queued"} | {"error"}}`.
pub async fn resend(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
    ApiJson(body): ApiJson<ResendBody>,
) -> Result<Json<Json_>, ApiError> {
    let c = state.store.connector(&connector_id(&cid)?).await?;
    let resent = ops::peer::resend(&state, &c, &body.identities).await?;
    Ok(Json(resent_json(&resent)))
}
