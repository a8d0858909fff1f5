//! `/api/v1/connectors/{cid}/remote/…`: the peer's devices, looked up live through the hub
//! over the connector's end-to-end encrypted session (SPEC §5), and the drift check between
//! the two registries.
//!
//! The peer answers with its own `api::devices` functions, so a remote list or device has
//! exactly the local answer's shape. Refusals: 409 `conflict` when the connector is not
//! paired, 503 `peer_offline` when the session is down or the peer does not answer within
//! `remote::lookup::TIMEOUT`, and the peer's own `not_found` or `invalid_query`.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::Value as Json_;

use super::{QueryPairs, connector_id, identity};
use crate::auth::User;
use crate::error::ApiError;
use crate::remote::lookup::{self, Op};
use crate::state::AppState;

/// `GET …/remote/devices?tag=K:V&limit=N&cursor=C`: one page of the peer's device list.
pub async fn list(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
    q: QueryPairs,
) -> Result<Json<Json_>, ApiError> {
    let c = state.store.connector(&connector_id(&cid)?).await?;
    // Refuse a malformed query here, without a round trip; the peer checks it again.
    crate::api::devices::device_query(&q)?;
    Ok(Json(
        lookup::request(&state, &c, Op::List { query: q.0 }).await?,
    ))
}

/// `GET …/remote/devices/{identity}`: one device as the peer has it.
pub async fn get_one(
    State(state): State<AppState>,
    _: User,
    Path((cid, id)): Path<(String, String)>,
) -> Result<Json<Json_>, ApiError> {
    let c = state.store.connector(&connector_id(&cid)?).await?;
    let id = identity(&id)?;
    let op = Op::Device {
        identity: id.to_string(),
    };
    Ok(Json(lookup::request(&state, &c, op).await?))
}

/// `GET …/remote/diff`: the drift check, `{"in_sync", "differences": […], …}`.
pub async fn diff(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let c = state.store.connector(&connector_id(&cid)?).await?;
    Ok(Json(lookup::diff(&state, &c).await?))
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
    crate::api::ApiJson(body): crate::api::ApiJson<ResendBody>,
) -> Result<Json<Json_>, ApiError> {
    let c = state.store.connector(&connector_id(&cid)?).await?;
    Ok(Json(lookup::resend(&state, &c, body.identities).await?))
}
