//! Signing in and out of the web UI, and the per-request context of every signed-in page.
//!
//! The session is the `west_session_SITE` cookie (HttpOnly, SameSite=Strict, Path=/) holding a
//! login token from [`api::sign_in`](crate::api::sign_in), the same token kind the API hands
//! out; signing out deletes it from the store. A page request without a valid session is
//! redirected to `/login?next=…` and comes back after signing in.
//!
//! Notices after a POST travel in a one-shot `west_flash` cookie that the next page shows
//! and clears, so that reloading a page never repeats an action. A page's background
//! refresh of itself (header `X-West-Refresh`) leaves the notice for the next page.

use askama::Template;
use axum::Form;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::header::SET_COOKIE;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::frame::{Crumb, Frame, hub_class, render};
use crate::auth::{self, cookie};
use crate::state::AppState;

/// Name of the one-shot notice cookie.
const FLASH_COOKIE: &str = "west_flash";
/// The header of a page's background refresh of itself, which leaves the notice alone.
const REFRESH_HEADER: &str = "x-west-refresh";

/// Who is asking and what the frame of their page shows. Extracting it is what makes a page
/// require a session.
pub struct Ctx {
    pub user: String,
    /// The session's form token (`guard::form_token`).
    csrf: String,
    site: String,
    link: crate::link::LinkState,
    flash: Option<String>,
    /// The field the refusal in `flash` is about, and what was typed into its form
    /// ([`refusal_redirect`]).
    invalid: String,
    typed: Vec<(String, String)>,
    /// Alarms active now, for the header's badge.
    alarms: u64,
}

impl Ctx {
    /// The author of the changes this page makes, for the audit log.
    pub fn actor(&self) -> store::Actor {
        store::Actor::User(self.user.clone())
    }

    /// The frame of a page titled `title` with breadcrumb `crumbs`.
    pub fn frame(&self, title: impl Into<String>, crumbs: Vec<Crumb>) -> Frame {
        Frame {
            title: title.into(),
            site: self.site.clone(),
            user: self.user.clone(),
            admin: crate::ops::users::is_admin(&self.user),
            hub_words: self.link.describe(),
            hub_class: hub_class(&self.link),
            crumbs,
            flash: self
                .flash
                .as_ref()
                .map(|m| super::view::sentence(m.trim_start_matches('!'))),
            flash_bad: self.flash.as_ref().is_some_and(|m| m.starts_with('!')),
            csrf: self.csrf.clone(),
            alarms: self.alarms,
            invalid: self.invalid.clone(),
            typed: self.typed.clone(),
        }
    }

    /// Renders a page of this request, clearing the notice it has now shown.
    pub fn page<T: Template>(&self, t: &T) -> Response {
        let mut resp = render(t);
        if self.flash.is_some() {
            resp.headers_mut().append(
                SET_COOKIE,
                HeaderValue::from_static("west_flash=; Path=/; Max-Age=0; SameSite=Strict"),
            );
        }
        resp
    }
}

/// Where to come back to after signing in: a path on this site only. Anything with a
/// control character, whitespace or non-ASCII byte is refused outright (a browser strips a
/// tab or newline and would read `/\t/evil.example` as `//evil.example`), and what remains
/// must parse as a path with neither scheme nor authority.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
                && n.parse::<Uri>()
                    .is_ok_and(|u| u.scheme().is_none() && u.authority().is_none()) =>
        {
            n.into()
        }
        _ => "/".into(),
    }
}

fn login_redirect(uri: &Uri) -> Response {
    let here = uri.path_and_query().map_or("/", |p| p.as_str());
    if here == "/" {
        return Redirect::to("/login").into_response();
    }
    let q = serde_urlencoded::to_string([("next", here)]).unwrap_or_default();
    Redirect::to(&format!("/login?{q}")).into_response()
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(token) = cookie(parts, &auth::session_cookie(&state.site_name)) else {
            return Err(login_redirect(&parts.uri));
        };
        let user = match state.user_for_token(token).await {
            Ok(Some(user)) => user,
            Ok(None) => return Err(login_redirect(&parts.uri)),
            Err(e) => return Err(e.into_response()),
        };
        // A page's own background refresh (`X-West-Refresh`, web/static/app.js) neither
        // shows nor clears the notice: it belongs to the page the browser shows next, and a
        // refresh that raced a form's redirect used to take it away from that page.
        let refresh = parts.headers.contains_key(REFRESH_HEADER);
        let pairs = cookie(parts, FLASH_COOKIE)
            .filter(|_| !refresh)
            .and_then(|v| {
                serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("m={v}")).ok()
            })
            .unwrap_or_default();
        let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let flash = get("m").filter(|m| !m.is_empty());
        let invalid = get("f").unwrap_or_default();
        let typed = pairs
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("t.")?.to_owned(), v.clone())))
            .collect();
        Ok(Ctx {
            user,
            csrf: crate::guard::form_token(token),
            site: state.site_name.clone(),
            link: state.link.state(),
            flash,
            invalid,
            typed,
            alarms: crate::ops::alarms::active_count(state),
        })
    }
}

/// Redirects to `to` and leaves `message` for the next page to show once.
pub fn flash_redirect(to: &str, message: &str) -> Response {
    flash(to, message)
}

/// Redirects to `to` and leaves a refusal for the next page to show once, as an error.
pub fn flash_error_redirect(to: &str, message: &str) -> Response {
    flash(to, &format!("!{message}"))
}

/// Most bytes of what a refused form had typed that the notice cookie carries back; beyond
/// it the form comes back empty (a browser drops a cookie over 4 KiB, and the refusal with
/// it).
const MAX_TYPED: usize = 3 * 1024;

/// Redirects to `to` after a refused form: the next page shows `message` once as an error,
/// marks and focuses the field whose id is `field`, and fills that form in again with what
/// was `typed` (by field name), so that nothing the operator typed is lost.
pub fn refusal_redirect(to: &str, message: &str, field: &str, typed: &[(&str, &str)]) -> Response {
    let message = format!("!{message}");
    let mut pairs = vec![("m".to_owned(), message.as_str()), ("f".to_owned(), field)];
    if typed.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() <= MAX_TYPED {
        pairs.extend(typed.iter().map(|(k, v)| (format!("t.{k}"), *v)));
    }
    let encoded = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    set_flash(to, &encoded)
}

fn flash(to: &str, message: &str) -> Response {
    let encoded = serde_urlencoded::to_string([("m", message)]).unwrap_or_default();
    set_flash(to, &encoded)
}

/// Redirects to `to` with the notice cookie holding `encoded` (`m=…&…`).
fn set_flash(to: &str, encoded: &str) -> Response {
    let value = format!(
        "{FLASH_COOKIE}={}; Path=/; Max-Age=60; HttpOnly; SameSite=Strict",
        encoded.strip_prefix("m=").unwrap_or("")
    );
    let mut resp = Redirect::to(to).into_response();
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().append(SET_COOKIE, v);
    }
    resp
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    site: String,
    username: String,
    next: String,
    error: Option<String>,
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

pub async fn login_page(State(state): State<AppState>, Query(q): Query<NextQuery>) -> Response {
    render(&LoginPage {
        site: state.site_name.clone(),
        username: String::new(),
        next: safe_next(q.next.as_deref()),
        error: None,
    })
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    next: Option<String>,
}

pub async fn login(
    State(state): State<AppState>,
    client: auth::ClientAddr,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    match crate::ops::users::sign_in(&state, client.0, form.username.trim(), &form.password).await {
        Ok(token) => {
            let mut resp = Redirect::to(&next).into_response();
            let name = auth::session_cookie(&state.site_name);
            let secure = if state.tls { "; Secure" } else { "" };
            let cookie = format!(
                "{name}={token}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
                auth::TOKEN_LIFETIME_MICROS / 1_000_000
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().append(SET_COOKIE, v);
            }
            resp
        }
        Err(e) => {
            let mut resp = render(&LoginPage {
                site: state.site_name.clone(),
                username: form.username,
                next,
                error: Some(super::view::sentence(&e.to_string())),
            });
            let e = crate::error::ApiError::from(e);
            *resp.status_mut() = e.status();
            if let Some(secs) = e.retry_after() {
                resp.headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, secs.into());
            }
            resp
        }
    }
}

pub async fn logout(State(state): State<AppState>, parts: Parts) -> Response {
    if let Some(token) = cookie(&parts, &auth::session_cookie(&state.site_name))
        && let Err(e) = state.store.delete_token(auth::token_hash(token)).await
    {
        tracing::warn!(error = %e, "could not delete a session token at sign-out");
    }
    let mut resp = Redirect::to("/login").into_response();
    let name = auth::session_cookie(&state.site_name);
    let clear = format!("{name}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict");
    if let Ok(v) = HeaderValue::from_str(&clear) {
        resp.headers_mut().append(SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_site() {
        let check = |input: Option<&str>, expected: &str| assert_eq!(safe_next(input), expected);
        check(None, "/");
        check(Some("/connectors/abc"), "/connectors/abc");
        check(Some("//evil.example/"), "/");
        check(Some("https://evil.example/"), "/");
        check(Some("/\\evil.example"), "/");
        // The probes of issue 13: a tab or newline a browser would strip, and friends.
        check(Some("/\t/evil.example"), "/");
        check(Some("/\n/evil.example"), "/");
        check(Some("/\r\n/evil.example"), "/");
        check(Some("/ /evil.example"), "/");
        check(Some("/\u{3000}/evil.example"), "/");
        check(Some("/connectors?x=1"), "/connectors?x=1");
    }
}
