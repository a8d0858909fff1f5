//! `/api/v1/connectors/{cid}/devices…`: the device registry of a connector.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use proto::model::{DeviceSort, DeviceState, Identity, Permission, ResourceName, Tags};
use serde::Deserialize;
use serde_json::{Value as Json_, json};

use super::extract::{ApiJson, QueryPairs};
use super::render::{audit_page_json, device_json, device_page_json};
use crate::auth::User;
use crate::clock::now_micros;
use crate::error::ApiError;
use crate::ops::devices::{
    self, AUDIT_PAGE, DEFAULT_PAGE, DeviceChange, ListQuery, MAX_AUDIT_PAGE, MAX_PAGE, NewDevice,
};
use crate::ops::{self, connector_id, identity};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    identity: String,
    #[serde(default)]
    tags: Tags,
    #[serde(default)]
    permissions: Vec<Permission>,
    #[serde(default)]
    state: DeviceState,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    tags: Option<Tags>,
    permissions: Option<Vec<Permission>>,
    state: Option<DeviceState>,
    config: Option<BTreeMap<String, Json_>>,
}

/// Turns `?tag=K:V&prefix=P&state=S&seen=W&sort=K&order=O&limit=N&cursor=C` into a list
/// query.
pub fn list_query(q: &QueryPairs) -> Result<ListQuery, ApiError> {
    let mut tags = Vec::new();
    for (k, v) in q.0.iter().filter(|(k, _)| k == "tag") {
        let (key, value) = v.split_once(':').ok_or_else(|| {
            ApiError::invalid_query(format!("tag must be KEY:VALUE, not {v:?} ({k})"))
        })?;
        tags.push((key.to_owned(), value.to_owned()));
    }
    let limit = q.number("limit", i64::from(DEFAULT_PAGE), 1..=i64::from(MAX_PAGE))?;
    let prefix = q.get("prefix").map(str::to_owned).filter(|p| !p.is_empty());
    let state = match q.get("state").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(DeviceState::parse(s).ok_or_else(|| {
            ApiError::invalid_query(format!("state must be provisioned or locked, not {s:?}"))
        })?),
    };
    let seen = match q.get("seen").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(devices::seen_filter(s, now_micros())?),
    };
    let sort = match q.get("sort").filter(|s| !s.is_empty()) {
        None => DeviceSort::Identity,
        Some(s) => DeviceSort::parse(s).ok_or_else(|| {
            ApiError::invalid_query(format!(
                "sort must be identity, state, last_seen or sync, not {s:?}"
            ))
        })?,
    };
    let descending = match q.get("order").filter(|s| !s.is_empty()) {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(o) => {
            return Err(ApiError::invalid_query(format!(
                "order must be asc or desc, not {o:?}"
            )));
        }
    };
    let from = q
        .get("cursor")
        .map(|c| devices::parse_cursor(c, sort, descending))
        .transpose()?;
    Ok(ListQuery {
        tags,
        prefix,
        state,
        seen,
        sort,
        descending,
        from,
        limit: u32::try_from(limit).unwrap_or(MAX_PAGE),
    })
}

pub async fn list(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
    q: QueryPairs,
) -> Result<Json<Json_>, ApiError> {
    let cid = connector_id(&cid)?;
    let q = list_query(&q)?;
    let page = devices::page(&state, &cid, q.clone()).await?;
    Ok(Json(device_page_json(&page, &q)))
}

pub async fn create(
    State(state): State<AppState>,
    user: User,
    Path(cid): Path<String>,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<(StatusCode, Json<Json_>), ApiError> {
    let cid = connector_id(&cid)?;
    let new = NewDevice {
        identity: Identity::parse(body.identity.trim())?,
        tags: body.tags,
        permissions: body.permissions,
        state: body.state,
    };
    let (device, token) = devices::create(&state, &cid, new, &user.actor()).await?;
    let mut out = device_json(&device);
    out["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(out)))
}

pub async fn get_one(
    State(state): State<AppState>,
    _: User,
    Path((cid, id)): Path<(String, String)>,
) -> Result<Json<Json_>, ApiError> {
    let d = devices::get(&state, &connector_id(&cid)?, &identity(&id)?).await?;
    Ok(Json(device_json(&d)))
}

pub async fn update(
    State(state): State<AppState>,
    user: User,
    Path((cid, id)): Path<(String, String)>,
    ApiJson(body): ApiJson<PatchBody>,
) -> Result<Json<Json_>, ApiError> {
    let (cid, id) = (connector_id(&cid)?, identity(&id)?);
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
    let change = DeviceChange {
        tags: body.tags,
        permissions: body.permissions,
        state: body.state,
        config,
    };
    let d = devices::update(&state, &cid, &id, change, &user.actor()).await?;
    Ok(Json(device_json(&d)))
}

pub async fn delete(
    State(state): State<AppState>,
    user: User,
    Path((cid, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    devices::delete(&state, &connector_id(&cid)?, &identity(&id)?, &user.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST …/devices/{identity}/token`: a new token for the device, shown once; the old one
/// stops working. Also how a device that reached this site by Remote-Sync (without a token
/// here) gets one.
pub async fn rotate_token(
    State(state): State<AppState>,
    user: User,
    Path((cid, id)): Path<(String, String)>,
) -> Result<Json<Json_>, ApiError> {
    let id = identity(&id)?;
    let cid = connector_id(&cid)?;
    let token = ops::devices::new_token(&state, &cid, &id, &user.actor()).await?;
    Ok(Json(json!({ "identity": id, "token": token })))
}

/// `GET …/audit?device=&limit=&cursor=`: the connector's device audit log, newest first.
pub async fn audit(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
    q: QueryPairs,
) -> Result<Json<Json_>, ApiError> {
    let cid = connector_id(&cid)?;
    let device = q
        .get("device")
        .map(|d| Identity::parse(d).map_err(|e| ApiError::invalid_query(format!("device: {e}"))))
        .transpose()?;
    audit_page(&state, &cid, device, &q).await
}

/// `GET …/devices/{identity}/audit?limit=&cursor=`: one device's audit log, newest first
/// (also after the device was deleted: the log says who deleted it).
pub async fn device_audit(
    State(state): State<AppState>,
    _: User,
    Path((cid, id)): Path<(String, String)>,
    q: QueryPairs,
) -> Result<Json<Json_>, ApiError> {
    let (cid, id) = (connector_id(&cid)?, identity(&id)?);
    audit_page(&state, &cid, Some(id), &q).await
}

async fn audit_page(
    state: &AppState,
    cid: &proto::model::ConnectorId,
    device: Option<Identity>,
    q: &QueryPairs,
) -> Result<Json<Json_>, ApiError> {
    let limit = q.number(
        "limit",
        i64::from(AUDIT_PAGE),
        1..=i64::from(MAX_AUDIT_PAGE),
    )?;
    let limit = u32::try_from(limit).unwrap_or(MAX_AUDIT_PAGE);
    let page = devices::audit(state, cid, device, q.get("cursor"), limit).await?;
    Ok(Json(audit_page_json(&page)))
}
