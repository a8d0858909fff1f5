//! `/api/v1/connectors/{cid}/resources…`: a connector's named data channels.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use proto::model::{Format, ModelError, ResourceName};
use serde::{Deserialize, Deserializer};
use serde_json::Value as Json_;
use store::{NewResource, ResourcePatch};

use super::render::resource_json;
use super::{ApiJson, connector_id, resource_name};
use crate::auth::User;
use crate::error::ApiError;
use crate::state::{AppState, now_micros};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub name: String,
    pub format: String,
    pub unit: Option<String>,
    #[serde(default)]
    pub settable: bool,
    #[serde(default)]
    pub remote_sync: bool,
}

/// `unit: null` clears the unit; an absent `unit` leaves it.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    #[serde(default, deserialize_with = "present")]
    pub unit: Option<Option<String>>,
    pub settable: Option<bool>,
    pub remote_sync: Option<bool>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn check_unit(unit: Option<String>) -> Result<Option<String>, ApiError> {
    match unit.map(|u| u.trim().to_owned()) {
        Some(u) if u.is_empty() => Ok(None),
        Some(u) if u.chars().count() > 32 => Err(ModelError::Unit.into()),
        other => Ok(other),
    }
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
    let all = state.store.resources(&connector_id(&cid)?).await?;
    let r = all.iter().find(|r| r.name == name).ok_or_else(|| {
        ApiError::NotFound(format!("resource {name} does not exist in this connector"))
    })?;
    Ok(Json(resource_json(r)))
}

pub async fn create(
    State(state): State<AppState>,
    _: User,
    Path(cid): Path<String>,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<(StatusCode, Json<Json_>), ApiError> {
    let r = create_resource(&state, &connector_id(&cid)?, body).await?;
    Ok((StatusCode::CREATED, Json(resource_json(&r))))
}

/// Creates a resource; shared by the API and the UI's form.
pub async fn create_resource(
    state: &AppState,
    cid: &proto::model::ConnectorId,
    body: CreateBody,
) -> Result<store::Resource, ApiError> {
    let new = NewResource {
        name: ResourceName::parse(&body.name)?,
        format: Format::parse(&body.format)?,
        unit: check_unit(body.unit)?,
        settable: body.settable,
        remote_sync: body.remote_sync,
        created_at: now_micros(),
    };
    let r = state.store.create_resource(cid, new).await?;
    tracing::info!(connector = %cid, resource = %r.name, format = %r.format, "created resource");
    Ok(r)
}

pub async fn update(
    State(state): State<AppState>,
    _: User,
    Path((cid, name)): Path<(String, String)>,
    ApiJson(body): ApiJson<PatchBody>,
) -> Result<Json<Json_>, ApiError> {
    let r = update_resource(&state, &connector_id(&cid)?, &resource_name(&name)?, body).await?;
    Ok(Json(resource_json(&r)))
}

/// Changes a resource's unit, settable flag or Remote-Sync toggle; shared with the UI.
pub async fn update_resource(
    state: &AppState,
    cid: &proto::model::ConnectorId,
    name: &ResourceName,
    body: PatchBody,
) -> Result<store::Resource, ApiError> {
    let patch = ResourcePatch {
        unit: body.unit.map(check_unit).transpose()?,
        settable: body.settable,
        remote_sync: body.remote_sync,
    };
    Ok(state.store.update_resource(cid, name, patch).await?)
}
