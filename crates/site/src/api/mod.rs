//! The HTTP API of docs/api.md: routes, request extraction with its error codes, and the
//! JSON shapes of answers. Handlers are thin: read the request into `ops`' typed inputs,
//! call `ops` (or read the store), render the answer (`render`).

mod alarms;
mod connectors;
mod data;
mod devices;
mod export;
pub mod extract;
mod hub;
mod live;
mod remote;
pub mod render;
mod resources;
mod users;
mod waiting;

use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{self, User};
use crate::error::ApiError;
use crate::ops;
use crate::state::AppState;
use extract::ApiJson;

/// The ingest bodies' parsers, pure, for the fuzz target `fuzz/fuzz_targets/ingest_json.rs`.
pub use data::{parse_bulk_body, parse_device_body};

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
            get(connectors::get_one)
                .patch(connectors::update)
                .delete(connectors::delete),
        )
        .route(
            "/connectors/{cid}/remote-sync",
            get(connectors::remote_sync).patch(connectors::update_remote_sync),
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
            "/connectors/{cid}/remote-sync/backfill",
            post(connectors::backfill).delete(connectors::cancel_backfill),
        )
        .route(
            "/connectors/{cid}/remote-sync/history",
            get(connectors::remote_sync_history),
        )
        .route(
            "/connectors/{cid}/remote-sync/waiting",
            get(waiting::waiting),
        )
        .route(
            "/connectors/{cid}/resources",
            get(resources::list).post(resources::create),
        )
        .route(
            "/connectors/{cid}/resources/{name}",
            get(resources::get_one)
                .patch(resources::update)
                .delete(resources::delete),
        )
        .route(
            "/connectors/{cid}/resources/{name}/usage",
            get(resources::usage),
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
            "/connectors/{cid}/devices/{identity}/audit",
            get(devices::device_audit),
        )
        .route("/connectors/{cid}/audit", get(devices::audit))
        .route(
            "/connectors/{cid}/devices/{identity}/data",
            post(data::ingest_device),
        )
        .route("/connectors/{cid}/data", post(data::ingest_bulk))
        .route("/connectors/{cid}/data/live", get(live::live))
        .route("/connectors/{cid}/data/export", get(export::export))
        .route("/connectors/{cid}/remote/devices", get(remote::list))
        .route(
            "/connectors/{cid}/remote/devices/{identity}",
            get(remote::get_one),
        )
        .route("/connectors/{cid}/remote/diff", get(remote::diff))
        .route("/connectors/{cid}/remote/resend", post(remote::resend))
        .route(
            "/connectors/{cid}/alarms",
            get(alarms::thresholds).patch(alarms::set_thresholds),
        )
        .route("/alarms", get(alarms::list))
        .route("/hub/ping", post(hub::ping))
        .route("/users", get(users::list).post(users::create))
        .route("/users/{name}", axum::routing::delete(users::delete))
        .route("/users/{name}/password", put(users::set_password))
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
    ApiError::not_found("no such API call; see docs/api.md".into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

async fn login(
    State(state): State<AppState>,
    client: auth::ClientAddr,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let token = ops::users::sign_in(&state, client.0, &body.username, &body.password).await?;
    Ok(Json(json!({ "token": token })))
}

async fn logout(State(state): State<AppState>, parts: Parts) -> Result<StatusCode, ApiError> {
    if let Some(token) = auth::request_token(&parts, &state.site_name) {
        ops::users::sign_out(&state, &token).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let link = state.link.state();
    Json(json!({
        "status": "ok",
        "site": state.site_name,
        "hub": { "connected": link.connected(), "link": link, "message": link.describe(),
                 "node": state.link.hub_node() },
        "storage": { "full": state.metrics.storage_full() },
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
