//! The chrome every signed-in page shares (header, breadcrumb, notice), and how a page is
//! rendered and a POST redirected.

use askama::Template;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use crate::link::LinkState;

/// The chrome every signed-in page shares: header, breadcrumb and the one-shot notice.
pub struct Frame {
    /// The `<title>` and the page's heading.
    pub title: String,
    /// This site's name, in the header so that two sites side by side are told apart.
    pub site: String,
    pub user: String,
    /// Whether that user is the admin (the header then links to the Users page).
    pub admin: bool,
    /// The hub indicator's words and colour class; `app.js` keeps both fresh from `/health`.
    pub hub_words: String,
    pub hub_class: &'static str,
    pub crumbs: Vec<Crumb>,
    /// A notice left by the previous POST (redirect-after-post), shown once.
    pub flash: Option<String>,
    /// Whether that notice reports a refusal rather than a success.
    pub flash_bad: bool,
    /// The session's form token, sent back by every form (`guard::csrf`).
    pub csrf: String,
    /// Alarms active now, for the header's badge; `app.js` keeps it fresh.
    pub alarms: u64,
    /// The id of the field a refused form's notice is about (`session::refusal_redirect`):
    /// the page marks it invalid and focuses it. Empty: none.
    pub invalid: String,
    /// What was typed into that form, by field name, to fill it in again.
    pub typed: Vec<(String, String)>,
}

impl Frame {
    /// Whether the refusal shown is about the field with id `id`.
    pub fn is_invalid(&self, id: &str) -> bool {
        !self.invalid.is_empty() && self.invalid == id
    }

    /// What was typed into field `name` of the refused form, or nothing.
    pub fn kept(&self, name: &str) -> &str {
        self.typed
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
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
}
