//! `/api/v1/connectors…`: create, list, read and delete connectors, and read their
//! Remote-Sync standing.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use proto::model::{ConnectorId, SyncState};
use rand::RngCore;
use serde::Deserialize;
use serde_json::Value as Json_;
use store::NewConnector;

use super::{ApiJson, connector_id, connector_json, remote_sync_json};
use crate::auth::User;
use crate::error::ApiError;
use crate::state::{AppState, now_micros};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub remote_sync_target: Option<TargetBody>,
}

/// What the Target operator enters to pair with a Source (SPEC §4).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetBody {
    pub remote_site: String,
    pub remote_connector_id: String,
    pub pairing_code: String,
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
    let c = create_connector(&state, body).await?;
    Ok((StatusCode::CREATED, Json(connector_json(&state, &c))))
}

/// Creates a connector; shared by the API and the UI's form.
pub async fn create_connector(
    state: &AppState,
    body: CreateBody,
) -> Result<store::Connector, ApiError> {
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 128 {
        return Err(proto::model::ModelError::ConnectorName.into());
    }
    if body.description.chars().count() > 1024 {
        return Err(ApiError::InvalidValue(
            "description must be at most 1024 characters".into(),
        ));
    }
    if let Some(target) = body.remote_sync_target {
        let req = crate::remote::pairing::TargetRequest {
            name,
            description: body.description,
            remote_site: target.remote_site,
            remote_connector_id: target.remote_connector_id,
            pairing_code: target.pairing_code,
        };
        return crate::remote::pairing::create_target(state, req).await;
    }
    let mut bytes = [0u8; proto::model::CONNECTOR_ID_LEN];
    rand::rng().fill_bytes(&mut bytes);
    let new = NewConnector {
        id: ConnectorId::from_random(bytes),
        name,
        description: body.description,
        created_at: now_micros(),
    };
    let c = state.store.create_connector(new).await?;
    tracing::info!(connector = %c.id, name = %c.name, "created connector");
    Ok(c)
}

pub async fn get_one(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let c = state.store.connector(&connector_id(&cid)?).await?;
    Ok(Json(connector_json(&state, &c)))
}

pub async fn delete(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete_connector(&state, &connector_id(&cid)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes a connector unless it is paired; shared by the API and the UI.
pub async fn delete_connector(state: &AppState, cid: &ConnectorId) -> Result<(), ApiError> {
    let c = state.store.connector(cid).await?;
    if c.state == SyncState::Paired {
        return Err(ApiError::Conflict(format!(
            "connector {cid} is paired with {}; a paired connector cannot be deleted",
            c.peer
                .as_ref()
                .map(|p| p.site.as_str())
                .unwrap_or("its peer")
        )));
    }
    state.store.delete_connector(cid).await?;
    tracing::info!(connector = %cid, "deleted connector");
    Ok(())
}

pub async fn enable(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let cid = connector_id(&cid)?;
    let c = crate::remote::pairing::enable(&state, &cid).await?;
    let window = state.store.pairing_window(&cid).await?;
    Ok(Json(serde_json::json!({
        "state": c.state.as_str(),
        "site": state.site_name,
        "connector_id": c.id,
        "pairing_code": window.as_ref().map(|w| w.code.clone()),
        "expires_at": c.pairing_expires_at.map(crate::state::rfc3339),
    })))
}

pub async fn disable(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let c = crate::remote::pairing::disable(&state, &connector_id(&cid)?).await?;
    Ok(Json(remote_sync_json(&state, &c)))
}

pub async fn remote_sync(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let c = state.store.connector(&connector_id(&cid)?).await?;
    let mut rs = remote_sync_json(&state, &c);
    let gaps = state.store.sync_gaps(&c.id).await?;
    rs["gaps"] = Json_::Array(gaps.iter().map(super::render::gap_json).collect());
    Ok(Json(rs))
}

/// `GET …/remote-sync/history?since=µs`: the last hour of the link's send and apply rates
/// and backlog, for the Remote-Sync tab's chart; 409 when not paired.
pub async fn remote_sync_history(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
    q: super::QueryPairs,
) -> Result<Json<Json_>, ApiError> {
    let cid = connector_id(&cid)?;
    let since = q.number("since", 0, 0..=i64::MAX)?;
    let c = state.store.connector(&cid).await?;
    if c.state != SyncState::Paired {
        return Err(ApiError::Conflict(format!(
            "connector {cid} is not paired, so it has no link to keep a history of"
        )));
    }
    Ok(Json(super::render::sync_history_json(&state, &c, since)))
}

/// `POST …/remote-sync/ping`: a round trip through the connector's end-to-end encrypted
/// session with its peer.
pub async fn ping(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let cid = connector_id(&cid)?;
    let c = state.store.connector(&cid).await?;
    if c.state != SyncState::Paired {
        return Err(ApiError::Conflict(format!(
            "connector {cid} is not paired, so it has no peer to reach"
        )));
    }
    let rtt = state
        .remote
        .ping(&cid, std::time::Duration::from_secs(5))
        .await
        .map_err(|e| {
            ApiError::PeerOffline(format!("the peer of connector {cid} did not answer: {e}"))
        })?;
    Ok(Json(
        serde_json::json!({ "rtt_ms": rtt.as_secs_f64() * 1000.0 }),
    ))
}
