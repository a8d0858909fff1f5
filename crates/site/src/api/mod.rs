//! The HTTP API of API.md: routes, request extraction with API.md's error codes, and the
//! JSON shapes of answers. Handlers are thin: parse and check input into `proto::model`
//! values, call the store, render the answer.

pub(crate) mod connectors;
mod data;
pub(crate) mod devices;
pub(crate) mod hub;
pub(crate) mod remote;
pub(crate) mod render;
pub(crate) mod resources;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use proto::model::{ConnectorId, Identity, ResourceName};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::auth::{self, User};
use crate::error::ApiError;
use crate::state::{AppState, now_micros};

pub use render::{connector_json, device_json, remote_sync_json};

pub fn routes(state: AppState) -> Router {
    let limit = state.body_limit;
    let api = Router::new()
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route(
            "/connectors",
            get(connectors::list).post(connectors::create),
        )
        .route(
            "/connectors/{cid}",
            get(connectors::get_one).delete(connectors::delete),
        )
        .route(
            "/connectors/{cid}/remote-sync",
            get(connectors::remote_sync),
        )
        .route(
            "/connectors/{cid}/remote-sync/enable",
            post(connectors::enable),
        )
        .route(
            "/connectors/{cid}/remote-sync/disable",
            post(connectors::disable),
        )
        .route("/connectors/{cid}/remote-sync/ping", post(connectors::ping))
        .route(
            "/connectors/{cid}/remote-sync/history",
            get(connectors::remote_sync_history),
        )
        .route(
            "/connectors/{cid}/resources",
            get(resources::list).post(resources::create),
        )
        .route(
            "/connectors/{cid}/resources/{name}",
            get(resources::get_one).patch(resources::update),
        )
        .route(
            "/connectors/{cid}/devices",
            get(devices::list).post(devices::create),
        )
        .route(
            "/connectors/{cid}/devices/{identity}",
            get(devices::get_one)
                .patch(devices::update)
                .delete(devices::delete),
        )
        .route(
            "/connectors/{cid}/devices/{identity}/token",
            post(devices::rotate_token),
        )
        .route(
            "/connectors/{cid}/devices/{identity}/data",
            post(data::ingest_device),
        )
        .route("/connectors/{cid}/data", post(data::ingest_bulk))
        .route("/connectors/{cid}/remote/devices", get(remote::list))
        .route(
            "/connectors/{cid}/remote/devices/{identity}",
            get(remote::get_one),
        )
        .route("/connectors/{cid}/remote/diff", get(remote::diff))
        .route("/connectors/{cid}/remote/resend", post(remote::resend))
        .route("/hub/ping", post(hub::ping))
        .route(
            "/connectors/{cid}/devices/{identity}/resources/{name}/data",
            get(data::read),
        )
        .fallback(api_not_found);
    Router::new()
        .nest("/api/v1", api)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn api_not_found() -> ApiError {
    ApiError::NotFound("no such API call; see API.md".into())
}

/// A request body as bytes, refused with `payload_too_large` over the body limit.
pub struct ApiBytes(pub Bytes);

impl FromRequest<AppState> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(ApiBytes)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge {
                        limit: state.body_limit,
                    }
                } else {
                    ApiError::InvalidJson(format!("could not read the request body: {e}"))
                }
            })
    }
}

/// A JSON body, refused with API.md's codes: `invalid_json` for bytes that are not JSON,
/// `invalid_value` for JSON of the wrong shape, `payload_too_large` over the body limit.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let ApiBytes(bytes) = ApiBytes::from_request(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::InvalidValue(format!("the body does not fit this call: {e}"))
        }
        _ => ApiError::InvalidJson(format!("the body is not valid JSON: {e}")),
    })
}

/// The raw query string as ordered pairs, so that a key may repeat (`tag=a:1&tag=b:2`).
pub struct QueryPairs(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(q)
            .map(QueryPairs)
            .map_err(|e| ApiError::InvalidQuery(format!("the query string is malformed: {e}")))
    }
}

impl QueryPairs {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A numeric parameter, `default` when absent, refused when malformed or outside `range`.
    pub fn number(
        &self,
        key: &str,
        default: i64,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<i64, ApiError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    ApiError::InvalidQuery(format!(
                        "{key} must be a whole number from {} to {}, not {v:?}",
                        range.start(),
                        range.end()
                    ))
                }),
        }
    }
}

/// Path segments are parsed into domain types; one that cannot be valid names nothing that
/// exists, so it answers 404.
pub fn connector_id(s: &str) -> Result<ConnectorId, ApiError> {
    ConnectorId::parse(s).map_err(|_| ApiError::NotFound(format!("connector {s} does not exist")))
}

pub fn identity(s: &str) -> Result<Identity, ApiError> {
    Identity::parse(s)
        .map_err(|_| ApiError::NotFound(format!("device {s} does not exist in this connector")))
}

pub fn resource_name(s: &str) -> Result<ResourceName, ApiError> {
    ResourceName::parse(s)
        .map_err(|_| ApiError::NotFound(format!("resource {s} does not exist in this connector")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

async fn login(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let token = sign_in(&state, &body.username, &body.password).await?;
    Ok(Json(json!({ "token": token })))
}

/// Checks a password and issues a login token; shared by the API and the UI's login form.
pub async fn sign_in(state: &AppState, username: &str, password: &str) -> Result<String, ApiError> {
    const WRONG: ApiError = ApiError::Unauthorized("wrong username or password");
    let hash = state.store.password_hash(username).await?.ok_or(WRONG)?;
    let password = password.to_owned();
    let ok = tokio::task::spawn_blocking(move || auth::verify_password(&password, &hash))
        .await
        .map_err(|_| ApiError::Internal)?;
    if !ok {
        tracing::warn!(username, "failed sign-in");
        return Err(WRONG);
    }
    let (token, hash) = auth::new_token();
    state
        .store
        .create_token(hash, username, now_micros() + auth::TOKEN_LIFETIME_MICROS)
        .await?;
    Ok(token)
}

async fn logout(State(state): State<AppState>, parts: Parts) -> Result<StatusCode, ApiError> {
    if let Some(token) = auth::request_token(&parts, &state.site_name) {
        state.store.delete_token(auth::token_hash(&token)).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let link = state.link.state();
    Json(json!({
        "status": "ok",
        "site": state.site_name,
        "hub": { "connected": link.connected(), "link": link, "message": link.describe() },
    }))
}

async fn metrics(State(state): State<AppState>, mut parts: Parts) -> Response {
    if !state.metrics_public
        && let Err(e) = User::from_request_parts(&mut parts, &state).await
    {
        return e.into_response();
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
