//! The web UI of docs/ui.md: server-rendered pages from askama templates (`web/templates`), forms
//! that POST to UI routes and redirect after the post, and a little plain JavaScript
//! (`web/static/app.js`) for the live parts: the header's hub dot polls `/health`; a device
//! page's charts and latest values follow the live stream (`GET …/data/live`, SSE), other
//! charts poll the data API with the session cookie.
//!
//! Invariants:
//! - Every change goes through the same domain operations as the REST API (`ops::…`), so
//!   the UI can do nothing the API refuses, and a refusal reaches the operator as the
//!   domain error's sentence, with the status the API would answer.
//! - The UI keeps no state of its own beyond the session cookie and a one-shot flash cookie.
//! - Templates and assets are compiled into the binary; a page never loads anything from
//!   outside the site.
//!
//! Page map (all but `/login` and `/static/…` need a session and redirect to `/login`):
//!
//! ```text
//! /                                         connectors (home)
//! /connectors/new                           create a connector (Remote-Sync Target toggle)
//! /connectors/{cid}/devices                 Devices tab: filter, add device
//! /connectors/{cid}/devices/{id}            device page: tags, permissions, config, charts
//! /connectors/{cid}/devices/{id}/changes    the device's audit log, paged
//! /connectors/{cid}/devices/{id}/resources/{name}   data view: one resource over time
//! /connectors/{cid}/resources[/{name}]      Resources tab and resource settings
//! /connectors/{cid}/settings[/remote-sync]  Settings tab: General and Remote-Sync
//! /connectors/{cid}/settings/remote-sync/budget    (POST) the Source's bandwidth budget
//! /connectors/{cid}/settings/remote-sync/compare   drift check against the peer
//! /connectors/{cid}/settings/remote-sync/resend    (POST) re-send the devices it listed
//! /connectors/{cid}/settings/alarms         Settings tab: Alarms (thresholds form, recent)
//! /alarms                                   the site's alarms: active and cleared, paged
//! /connectors/{cid}/settings/remote-sync/backfill[/cancel]  (POST) send history again
//! /users                                    the admin's users: list, create (POST)
//! /users/{name}/password                    the admin resets a user's password
//! /users/{name}/delete                      (POST) remove a user, after a confirmation
//! /account[/password]                       every user: change my password
//! ```

mod alarms;
mod backfill;
mod connectors;
mod devices;
mod error_page;
mod frame;
mod remote;
mod resources;
mod session;
mod users;
mod view;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::error::ApiError;
use crate::state::AppState;
use error_page::UiError;
use frame::Crumb;
use session::Ctx;

pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/login", get(session::login_page).post(session::login))
        .route("/logout", post(session::logout))
        .route("/", get(connectors::list))
        .route(
            "/connectors/new",
            get(connectors::new_page).post(connectors::create),
        )
        .route("/connectors/{cid}", get(connectors::home))
        .route("/connectors/{cid}/delete", post(connectors::delete))
        .route(
            "/connectors/{cid}/settings",
            get(connectors::settings).post(connectors::update),
        )
        .route(
            "/connectors/{cid}/settings/remote-sync",
            get(connectors::remote_sync),
        )
        .route(
            "/connectors/{cid}/settings/remote-sync/enable",
            post(connectors::enable_remote_sync),
        )
        .route(
            "/connectors/{cid}/settings/remote-sync/disable",
            post(connectors::disable_remote_sync),
        )
        .route(
            "/connectors/{cid}/settings/remote-sync/budget",
            post(remote::set_budget),
        )
        .route(
            "/connectors/{cid}/settings/remote-sync/compare",
            get(remote::compare),
        )
        .route(
            "/connectors/{cid}/settings/remote-sync/resend",
            post(remote::resend),
        )
        .route(
            "/connectors/{cid}/settings/alarms",
            get(alarms::settings).post(alarms::set),
        )
        .route("/alarms", get(alarms::list))
        .route(
            "/connectors/{cid}/settings/remote-sync/backfill",
            post(backfill::start),
        )
        .route(
            "/connectors/{cid}/settings/remote-sync/backfill/cancel",
            post(backfill::cancel),
        )
        .route(
            "/connectors/{cid}/resources",
            get(resources::list).post(resources::create),
        )
        .route(
            "/connectors/{cid}/resources/{name}",
            get(resources::settings).post(resources::update),
        )
        .route(
            "/connectors/{cid}/resources/{name}/delete",
            post(resources::delete),
        )
        .route("/connectors/{cid}/devices", get(devices::list))
        .route(
            "/connectors/{cid}/devices/new",
            get(devices::new_page).post(devices::create),
        )
        .route("/connectors/{cid}/devices/{id}", get(devices::page))
        .route("/connectors/{cid}/devices/{id}/tags", post(devices::tags))
        .route(
            "/connectors/{cid}/devices/{id}/permissions",
            post(devices::permissions),
        )
        .route(
            "/connectors/{cid}/devices/{id}/config",
            post(devices::config),
        )
        .route(
            "/connectors/{cid}/devices/{id}/state",
            post(devices::set_state),
        )
        .route(
            "/connectors/{cid}/devices/{id}/delete",
            post(devices::delete),
        )
        .route(
            "/connectors/{cid}/devices/{id}/token",
            post(devices::new_token),
        )
        .route(
            "/connectors/{cid}/devices/{id}/changes",
            get(devices::changes),
        )
        .route(
            "/connectors/{cid}/devices/{id}/resources/{name}",
            get(devices::data_view),
        )
        .route("/users", get(users::list).post(users::create))
        .route("/users/{name}/delete", post(users::remove))
        .route(
            "/users/{name}/password",
            get(users::reset_page).post(users::reset),
        )
        .route("/account", get(users::account))
        .route("/account/password", post(users::change_own))
        .route("/static/{file}", get(asset))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found(ctx: Ctx) -> UiError {
    UiError::new(
        ctx.frame("Not found", vec![Crumb::link("Connectors", "/")]),
        ApiError::not_found("there is no page at this address".into()),
    )
}

/// The embedded static assets: name, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../../../web/static/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../../web/static/app.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../../../web/static/favicon.svg"),
    ),
];

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, kind, body)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_embedded() {
        for name in ["app.css", "app.js", "favicon.svg"] {
            let found = ASSETS.iter().find(|(n, _, _)| *n == name);
            assert!(found.is_some_and(|(_, _, body)| !body.is_empty()), "{name}");
        }
    }
}
