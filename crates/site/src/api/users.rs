//! `/api/v1/users…`: the site's users, managed by the admin; every user may change their
//! own password. Passwords come only in request bodies and never go back out.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value as Json_, json};

use super::extract::{ApiJson, QueryPairs};
use super::render::user_json;
use crate::auth::{ClientAddr, User};
use crate::error::ApiError;
use crate::ops::users::{self, MAX_PAGE};
use crate::state::AppState;

/// Users on a page unless `limit` says otherwise.
const DEFAULT_PAGE: i64 = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    username: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    password: String,
    #[serde(default)]
    current_password: Option<String>,
}

/// `GET /api/v1/users?limit=N&cursor=C`: `{"users": [User], "next"?, "total"}`.
pub async fn list(
    State(state): State<AppState>,
    user: User,
    q: QueryPairs,
) -> Result<Json<Json_>, ApiError> {
    let max = i64::try_from(MAX_PAGE).unwrap_or(i64::MAX);
    let limit = usize::try_from(q.number("limit", DEFAULT_PAGE, 1..=max)?).unwrap_or(MAX_PAGE);
    let after = q.get("cursor").map(users::parse_cursor).transpose()?;
    let (rows, next) = users::list(&state, &user.name, after.as_deref(), limit).await?;
    let mut out = json!({
        "users": rows.iter().map(user_json).collect::<Vec<_>>(),
        "total": users::count(&state).await?,
    });
    if let Some(last) = next {
        out["next"] = json!(users::cursor(&last));
    }
    Ok(Json(out))
}

/// `POST /api/v1/users {"username", "password"}`: 201 `User`.
pub async fn create(
    State(state): State<AppState>,
    user: User,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<(StatusCode, Json<Json_>), ApiError> {
    let created = users::create(&state, &user.name, &body.username, &body.password).await?;
    Ok((StatusCode::CREATED, Json(user_json(&created))))
}

/// `DELETE /api/v1/users/{name}`: 204; the user's tokens stop working at once.
pub async fn delete(
    State(state): State<AppState>,
    user: User,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    users::remove(&state, &user.name, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/v1/users/{name}/password {"password", "current_password"?}`: 204 when the admin
/// set another user's; 200 `{"token"}` when the caller changed their own (every token of
/// theirs, the one of this call included, stopped working).
pub async fn set_password(
    State(state): State<AppState>,
    user: User,
    client: ClientAddr,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<PasswordBody>,
) -> Result<Response, ApiError> {
    let token = users::set_password(
        &state,
        &user.name,
        client.0,
        &name,
        &body.password,
        body.current_password.as_deref(),
    )
    .await?;
    Ok(match token {
        Some(token) => Json(json!({ "token": token })).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}
