//! `/api/v1/connectors/{cid}/resources…`: a connector's named data channels: create, list,
//! read, change, delete, and what a delete would delete (`usage`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use proto::model::{Format, ResourceName};
use serde::{Deserialize, Deserializer};
use serde_json::Value as Json_;

use super::extract::ApiJson;
use super::render::resource_json;
use crate::auth::User;
use crate::error::ApiError;
use crate::ops::resources::{NewResource, ResourceChange};
use crate::ops::{self, connector_id, resource_name};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    name: String,
    format: String,
    unit: Option<String>,
    #[serde(default)]
    settable: bool,
    #[serde(default)]
    remote_sync: bool,
}

/// `unit: null` clears the unit; an absent `unit` leaves it.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    #[serde(default, deserialize_with = "present")]
    unit: Option<Option<String>>,
    settable: Option<bool>,
    remote_sync: Option<bool>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

pub async fn list(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let all = state.store.resources(&connector_id(&cid)?).await?;
    Ok(Json(Json_::Array(all.iter().map(resource_json).collect())))
}

pub async fn get_one(
    State(state): State<AppState>,
    _: User,
    Path((cid, name)): Path<(String, String)>,
) -> Result<Json<Json_>, ApiError> {
    let name = resource_name(&name)?;
    let r = ops::resources::get(&state, &connector_id(&cid)?, &name).await?;
    Ok(Json(resource_json(&r)))
}

pub async fn create(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<(StatusCode, Json<Json_>), ApiError> {
    let cid = connector_id(&cid)?;
    let new = NewResource {
        name: ResourceName::parse(&body.name)?,
        format: Format::parse(&body.format)?,
        unit: body.unit,
        settable: body.settable,
        remote_sync: body.remote_sync,
    };
    let r = ops::resources::create(&state, &cid, new).await?;
    Ok((StatusCode::CREATED, Json(resource_json(&r))))
}

pub async fn update(
    State(state): State<AppState>,
    _: User,
    Path((cid, name)): Path<(String, String)>,
    ApiJson(body): ApiJson<PatchBody>,
) -> Result<Json<Json_>, ApiError> {
    let change = ResourceChange {
        unit: body.unit,
        settable: body.settable,
        remote_sync: body.remote_sync,
    };
    let (cid, name) = (connector_id(&cid)?, resource_name(&name)?);
    let r = ops::resources::update(&state, &cid, &name, change).await?;
    Ok(Json(resource_json(&r)))
}

/// `DELETE …/resources/{name}`: the resource and its points on this site (docs/api.md).
pub async fn delete(
    State(state): State<AppState>,
    _: User,
    Path((cid, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (cid, name) = (connector_id(&cid)?, resource_name(&name)?);
    ops::resources::delete(&state, &cid, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET …/resources/{name}/usage`: how many points (and devices) a delete would delete.
pub async fn usage(
    State(state): State<AppState>,
    _: User,
    Path((cid, name)): Path<(String, String)>,
) -> Result<Json<Json_>, ApiError> {
    let (cid, name) = (connector_id(&cid)?, resource_name(&name)?);
    let u = ops::resources::usage(&state, &cid, &name).await?;
    Ok(Json(
        serde_json::json!({ "points": u.points, "devices": u.devices }),
    ))
}
