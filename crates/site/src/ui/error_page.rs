//! A page that failed: the refusal's sentence in the caller's frame, with the status the
//! API would answer; and loading what a page is about (a connector) or that error page.

use askama::Template;
use axum::response::{IntoResponse, Response};

use super::frame::{Crumb, Frame, render};
use super::session::Ctx;
use crate::error::ApiError;
use crate::ops;
use crate::state::AppState;

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

impl UiError {
    pub fn new(frame: Frame, error: ApiError) -> Self {
        Self {
            frame: Box::new(frame),
            error,
        }
    }
}

/// The status the API would answer for a refusal, for a page that shows it.
pub fn status_of(e: &ops::Error) -> axum::http::StatusCode {
    ApiError::from(e.clone()).status()
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = self.error.status();
        let mut resp = render(&ErrorPage {
            frame: &self.frame,
            status: status.as_u16(),
            message: super::view::sentence(&self.error.to_string()),
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

/// Reads a connector for a page, or the error page saying it does not exist.
pub async fn load_connector(
    state: &AppState,
    ctx: &Ctx,
    cid: &str,
) -> Result<store::Connector, UiError> {
    let id = ops::connector_id(cid).or_page(ctx)?;
    state.store.connector(&id).await.or_page(ctx)
}

/// Breadcrumb of a connector's pages: `Connectors › name`, linked.
pub fn connector_crumbs(c: &store::Connector) -> Vec<Crumb> {
    vec![
        Crumb::link("Connectors", "/"),
        Crumb::link(c.name.clone(), format!("/connectors/{}", c.id)),
    ]
}
