//! `/api/v1/connectors/{cid}/devices…`: the device registry of a connector.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proto::model::{self, ConnectorId, DeviceState, Identity, Permission, ResourceName, Tags};
use serde::Deserialize;
use serde_json::{Value as Json_, json};
use store::{DevicePatch, DeviceQuery, NewDevice};

use super::{ApiJson, QueryPairs, connector_id, device_json, identity};
use crate::auth::{self, User};
use crate::error::ApiError;
use crate::state::{AppState, now_micros};

/// Default and largest page of the device list.
const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub identity: String,
    #[serde(default)]
    pub tags: Tags,
    #[serde(default)]
    pub permissions: Vec<Permission>,
    #[serde(default)]
    pub state: DeviceState,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    pub tags: Option<Tags>,
    pub permissions: Option<Vec<Permission>>,
    pub state: Option<DeviceState>,
    pub config: Option<BTreeMap<String, Json_>>,
}

/// Turns `?tag=K:V&limit=N&cursor=C` into a store query.
pub fn device_query(q: &QueryPairs) -> Result<DeviceQuery, ApiError> {
    let mut tags = Vec::new();
    for (k, v) in q.0.iter().filter(|(k, _)| k == "tag") {
        let (key, value) = v.split_once(':').ok_or_else(|| {
            ApiError::InvalidQuery(format!("tag must be KEY:VALUE, not {v:?} ({k})"))
        })?;
        tags.push((key.to_owned(), value.to_owned()));
    }
    let limit = q.number("limit", DEFAULT_PAGE, 1..=MAX_PAGE)?;
    let after = match q.get("cursor") {
        None => None,
        Some(c) => Some(
            URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| Identity::parse(&s).ok())
                .ok_or_else(|| {
                    ApiError::InvalidQuery("cursor is not one this site gave out".into())
                })?,
        ),
    };
    Ok(DeviceQuery {
        tags,
        after,
        // One more than asked, to know whether a next page exists.
        limit: usize::try_from(limit + 1).unwrap_or(usize::MAX),
    })
}

/// One page of devices as `{"devices": [...], "next"?}`.
pub async fn device_page(
    state: &AppState,
    cid: &ConnectorId,
    query: DeviceQuery,
) -> Result<Json_, ApiError> {
    let want = query.limit - 1;
    let mut devices = state.store.devices(cid, query).await?;
    let mut page = json!({});
    if devices.len() > want {
        devices.truncate(want);
        if let Some(last) = devices.last() {
            page["next"] = json!(URL_SAFE_NO_PAD.encode(last.identity.as_str()));
        }
    }
    page["devices"] = Json_::Array(devices.iter().map(device_json).collect());
    Ok(page)
}

pub async fn list(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
    q: QueryPairs,
) -> Result<Json<Json_>, ApiError> {
    let cid = connector_id(&cid)?;
    Ok(Json(device_page(&state, &cid, device_query(&q)?).await?))
}

pub async fn create(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<(StatusCode, Json<Json_>), ApiError> {
    let (device, token) = create_device(&state, &connector_id(&cid)?, body).await?;
    let mut out = device_json(&device);
    out["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(out)))
}

/// Creates a device and its token (returned once, never stored in clear); shared with the UI.
pub async fn create_device(
    state: &AppState,
    cid: &ConnectorId,
    body: CreateBody,
) -> Result<(store::Device, String), ApiError> {
    let identity = Identity::parse(body.identity.trim())?;
    model::check_tags(&body.tags)?;
    model::check_permissions(&body.permissions)?;
    let (token, hash) = auth::new_token();
    let new = NewDevice {
        identity,
        tags: body.tags,
        permissions: body.permissions,
        state: body.state,
        token: hash,
        created_at: now_micros(),
    };
    let device = state.store.create_device(cid, new).await?;
    state.remote.sync.appended(cid);
    tracing::info!(connector = %cid, device = %device.identity, "created device");
    Ok((device, token))
}

pub async fn get_one(
    State(state): State<AppState>,
    _: User,
    Path((cid, id)): Path<(String, String)>,
) -> Result<Json<Json_>, ApiError> {
    let d = state
        .store
        .device(&connector_id(&cid)?, &identity(&id)?)
        .await?;
    Ok(Json(device_json(&d)))
}

pub async fn update(
    State(state): State<AppState>,
    _: User,
    Path((cid, id)): Path<(String, String)>,
    ApiJson(body): ApiJson<PatchBody>,
) -> Result<Json<Json_>, ApiError> {
    let d = update_device(&state, &connector_id(&cid)?, &identity(&id)?, body).await?;
    Ok(Json(device_json(&d)))
}

/// Applies a device patch; shared with the UI.
pub async fn update_device(
    state: &AppState,
    cid: &ConnectorId,
    id: &Identity,
    body: PatchBody,
) -> Result<store::Device, ApiError> {
    let config = match body.config {
        None => None,
        Some(map) => {
            let mut out = BTreeMap::new();
            for (k, v) in map {
                let name = ResourceName::parse(&k)?;
                out.insert(name, (!v.is_null()).then_some(v));
            }
            Some(out)
        }
    };
    let patch = DevicePatch {
        tags: body.tags,
        permissions: body.permissions,
        state: body.state,
        config,
    };
    let device = state.store.update_device(cid, id, patch).await?;
    state.remote.sync.appended(cid);
    Ok(device)
}

pub async fn delete(
    State(state): State<AppState>,
    _: User,
    Path((cid, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    delete_device(&state, &connector_id(&cid)?, &identity(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST …/devices/{identity}/token`: a new token for the device, shown once; the old one
/// stops working. Also how a device that reached this site by Remote-Sync (without a token
/// here) gets one.
pub async fn rotate_token(
    State(state): State<AppState>,
    _: User,
    Path((cid, id)): Path<(String, String)>,
) -> Result<Json<Json_>, ApiError> {
    let id = identity(&id)?;
    let token = new_device_token(&state, &connector_id(&cid)?, &id).await?;
    Ok(Json(json!({ "identity": id, "token": token })))
}

/// Issues a device a new token (returned once, stored hashed); shared with the UI.
pub async fn new_device_token(
    state: &AppState,
    cid: &ConnectorId,
    id: &Identity,
) -> Result<String, ApiError> {
    let (token, hash) = auth::new_token();
    state.store.set_device_token(cid, id, hash).await?;
    tracing::info!(connector = %cid, device = %id, "issued a new device token");
    Ok(token)
}

/// Deletes a device with its data, on both sides of a pairing; shared with the UI.
pub async fn delete_device(
    state: &AppState,
    cid: &ConnectorId,
    id: &Identity,
) -> Result<(), ApiError> {
    state.store.delete_device(cid, id).await?;
    state.remote.sync.appended(cid);
    tracing::info!(connector = %cid, device = %id, "deleted device");
    Ok(())
}
