//! The web UI of UI.md: server-rendered pages from askama templates (`web/templates`), forms
//! that POST to UI routes and redirect after the post, and a little plain JavaScript
//! (`web/static/app.js`) for the live parts: the header's hub dot polls `/health`, charts
//! and latest values poll the data API with the session cookie.
//!
//! Invariants:
//! - Every change goes through the same functions as the REST API (`api::connectors::…`,
//!   `api::devices::…`, `api::resources::…`), so the UI can do nothing the API refuses, and
//!   a refusal reaches the operator as `ApiError`'s sentence.
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
//! /connectors/{cid}/devices/{id}/resources/{name}   data view: one resource over time
//! /connectors/{cid}/resources[/{name}]      Resources tab and resource settings
//! /connectors/{cid}/settings[/remote-sync]  Settings tab: General and Remote-Sync
//! /connectors/{cid}/settings/remote-sync/compare   drift check against the peer
//! /connectors/{cid}/settings/remote-sync/resend    (POST) re-send the devices it listed
//! ```

mod connectors;
mod devices;
mod remote;
mod resources;
mod session;
mod view;

use askama::Template;
use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::error::ApiError;
use crate::link::LinkState;
use crate::state::AppState;

pub use session::Ctx;

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
        .route("/connectors/{cid}/settings", get(connectors::settings))
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
            "/connectors/{cid}/settings/remote-sync/compare",
            get(remote::compare),
        )
        .route(
            "/connectors/{cid}/settings/remote-sync/resend",
            post(remote::resend),
        )
        .route(
            "/connectors/{cid}/resources",
            get(resources::list).post(resources::create),
        )
        .route(
            "/connectors/{cid}/resources/{name}",
            get(resources::settings).post(resources::update),
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
            "/connectors/{cid}/devices/{id}/resources/{name}",
            get(devices::data_view),
        )
        .route("/static/{file}", get(asset))
        .fallback(not_found)
        .with_state(state)
}

/// The chrome every signed-in page shares: header, breadcrumb and the one-shot notice.
pub struct Frame {
    /// The `<title>` and the page's heading.
    pub title: String,
    /// This site's name, in the header so that two sites side by side are told apart.
    pub site: String,
    pub user: String,
    /// The hub indicator's words and colour class; `app.js` keeps both fresh from `/health`.
    pub hub_words: String,
    pub hub_class: &'static str,
    pub crumbs: Vec<Crumb>,
    /// A notice left by the previous POST (redirect-after-post), shown once.
    pub flash: Option<String>,
    /// Whether that notice reports a refusal rather than a success.
    pub flash_bad: bool,
}

/// One step of the breadcrumb; the last one has no link.
pub struct Crumb {
    pub label: String,
    pub href: Option<String>,
}

impl Crumb {
    pub fn link(label: impl Into<String>, href: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            href: Some(href.into()),
        }
    }

    pub fn here(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            href: None,
        }
    }
}

/// The colour class of the hub dot: status colours only for status.
pub fn hub_class(link: &LinkState) -> &'static str {
    match link {
        LinkState::Connected => "ok",
        LinkState::Connecting | LinkState::Reconnecting { .. } => "warn",
        LinkState::Refused { .. } => "bad",
        LinkState::Disabled => "off",
    }
}

/// Renders a template, or a bare 500 (and a log line) if the template itself fails.
pub fn render<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(html) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

/// A redirect after a successful POST (303, so the browser follows with GET).
pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// A page that failed with an [`ApiError`], shown in the frame with the error's words.
pub struct UiError {
    /// Boxed: a `Result` carrying a whole frame in its error would be large on every path.
    frame: Box<Frame>,
    error: ApiError,
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    frame: &'a Frame,
    status: u16,
    message: String,
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = self.error.status();
        let mut resp = render(&ErrorPage {
            frame: &self.frame,
            status: status.as_u16(),
            message: self.error.to_string(),
        });
        *resp.status_mut() = status;
        resp
    }
}

/// Turns an API failure into an error page in the caller's frame.
pub trait OrPage<T> {
    fn or_page(self, ctx: &Ctx) -> Result<T, UiError>;
}

impl<T, E: Into<ApiError>> OrPage<T> for Result<T, E> {
    fn or_page(self, ctx: &Ctx) -> Result<T, UiError> {
        self.map_err(|e| UiError {
            frame: Box::new(
                ctx.frame("Something went wrong", vec![Crumb::link("Connectors", "/")]),
            ),
            error: e.into(),
        })
    }
}

pub type UiResult = Result<Response, UiError>;

async fn not_found(ctx: Ctx) -> UiError {
    UiError {
        frame: Box::new(ctx.frame("Not found", vec![Crumb::link("Connectors", "/")])),
        error: ApiError::NotFound("there is no page at this address".into()),
    }
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

/// Reads a connector for a page, or the error page saying it does not exist.
pub async fn load_connector(
    state: &AppState,
    ctx: &Ctx,
    cid: &str,
) -> Result<store::Connector, UiError> {
    let id = crate::api::connector_id(cid).or_page(ctx)?;
    state.store.connector(&id).await.or_page(ctx)
}

/// Breadcrumb of a connector's pages: `Connectors › name`, linked.
pub fn connector_crumbs(c: &store::Connector) -> Vec<Crumb> {
    vec![
        Crumb::link("Connectors", "/"),
        Crumb::link(c.name.clone(), format!("/connectors/{}", c.id)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_link_state_has_a_colour() {
        let check = |s: LinkState, class: &str| assert_eq!(hub_class(&s), class);
        check(LinkState::Connected, "ok");
        check(LinkState::Connecting, "warn");
        check(
            LinkState::Reconnecting {
                next_try_in_ms: 4000,
            },
            "warn",
        );
        check(
            LinkState::Refused {
                reason: "unknown credential".into(),
            },
            "bad",
        );
        check(LinkState::Disabled, "off");
    }

    #[test]
    fn assets_are_embedded() {
        for name in ["app.css", "app.js", "favicon.svg"] {
            let found = ASSETS.iter().find(|(n, _, _)| *n == name);
            assert!(found.is_some_and(|(_, _, body)| !body.is_empty()), "{name}");
        }
    }
}
