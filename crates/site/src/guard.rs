//! HTTP middleware that protects browsers using the site (issue 13 #3, #6): a cross-site
//! request may not change anything with the session cookie, and every answer carries the
//! headers that keep pages out of frames, sniffing and caches.
//!
//! ```text
//!  request ─▶ GET / HEAD / OPTIONS ──────────────────────────────────────────▶ handler
//!          ─▶ Authorization header (bearer: no ambient authority) ──────────────▶ handler
//!          ─▶ Sec-Fetch-Site other than same-origin/none, or Origin not this
//!             site's own ─▶ 403 cross_site_request
//!          ─▶ the session cookie:
//!               neither Origin nor Sec-Fetch-Site ─▶ 403 (browsers send one)
//!               /api/…: Content-Type must be application/json ─▶ else 403
//!               a UI form: its `csrf` field must be the session's form token ─▶ else 403
//!          ─▶ handler ─▶ + CSP, X-Frame-Options, nosniff, Referrer-Policy, Cache-Control
//! ```
//!
//! The form token is derived from the session token (SHA-256 of a label and the token), so
//! it needs no storage, changes with every sign-in and cannot be computed without the
//! cookie, which another site cannot read.
//!
//! Deliberately absent: CORS (the API answers no cross-origin browser request) and tokens
//! for bearer clients (a page of another site cannot set `Authorization`).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HOST, ORIGIN,
    REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::auth;
use crate::error::ApiError;
use crate::state::AppState;

/// The pages' policy: everything from this site only, no frames, no plugins, forms post
/// only here.
pub const CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; \
                       base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The form field that carries the form token.
pub const FORM_FIELD: &str = "csrf";

/// The form token of a session: what every UI form must send back.
pub fn form_token(session_token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"west form token v1\0");
    h.update(session_token.as_bytes());
    URL_SAFE_NO_PAD.encode(h.finalize())
}

/// Adds the security headers to every answer.
pub async fn headers(req: Request, next: Next) -> Response {
    let is_static = req.uri().path().starts_with("/static/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    // Pages and API answers may show tokens (a new device's, a sign-in's): never stored.
    if !is_static && !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// Refuses state-changing requests that another site's page could have made.
pub async fn csrf(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let headers = req.headers();
    if headers.contains_key(AUTHORIZATION) {
        return next.run(req).await;
    }
    let scheme = if state.tls { "https" } else { "http" };
    if let Err(why) = same_origin(headers, scheme) {
        return refuse(&req, why);
    }
    let cookie_name = auth::session_cookie(&state.site_name);
    let Some(session) = cookie_value(headers, &cookie_name) else {
        return next.run(req).await;
    };
    if !headers.contains_key(ORIGIN) && !headers.contains_key("sec-fetch-site") {
        return refuse(
            &req,
            "a request with the session cookie must say where it comes from (Origin)",
        );
    }
    if req.uri().path().starts_with("/api/") {
        let json = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return refuse(
                &req,
                "an API call with the session cookie must send Content-Type: application/json \
                 (or use Authorization: Bearer)",
            );
        }
        return next.run(req).await;
    }
    if req.uri().path() == "/login" {
        return next.run(req).await;
    }
    // A UI form: its token must match the session's.
    let expected = form_token(&session);
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, state.body_limit).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::TooLarge {
                limit: state.body_limit,
            }
            .into_response();
        }
    };
    let sent = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
        .ok()
        .and_then(|pairs| {
            pairs
                .into_iter()
                .find(|(k, _)| k == FORM_FIELD)
                .map(|(_, v)| v)
        });
    let req = Request::from_parts(parts, Body::from(bytes));
    match sent {
        Some(t) if crate::login::constant_time_eq(t.as_bytes(), expected.as_bytes()) => {
            next.run(req).await
        }
        _ => refuse(
            &req,
            "the form is missing its token or is from an older sign-in; reload the page and try again",
        ),
    }
}

/// Whether the request's `Sec-Fetch-Site` and `Origin` (when sent) name this site.
fn same_origin(headers: &HeaderMap, scheme: &str) -> Result<(), &'static str> {
    if let Some(site) = headers.get("sec-fetch-site") {
        let ok = matches!(site.to_str(), Ok("same-origin" | "none"));
        if !ok {
            return Err("a request from another site may not change anything here");
        }
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let host = headers.get(HOST).and_then(|h| h.to_str().ok());
        let ok = match (origin.to_str(), host) {
            (Ok(o), Some(h)) => o.eq_ignore_ascii_case(&format!("{scheme}://{h}")),
            _ => false,
        };
        if !ok {
            return Err("a request from another origin may not change anything here");
        }
    }
    Ok(())
}

fn refuse(req: &Request, why: &'static str) -> Response {
    tracing::warn!(method = %req.method(), path = req.uri().path(), origin = ?req.headers().get(ORIGIN), "cross-site request refused: {why}");
    ApiError::CrossSite(why).into_response()
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_this_sites_origin_passes() {
        let ok = |pairs: &[(&str, &str)]| same_origin(&headers(pairs), "http").is_ok();
        assert!(ok(&[("host", "site:8080")]));
        assert!(ok(&[("host", "site:8080"), ("origin", "http://site:8080")]));
        assert!(ok(&[
            ("host", "site:8080"),
            ("sec-fetch-site", "same-origin")
        ]));
        assert!(!ok(&[
            ("host", "site:8080"),
            ("origin", "https://evil.example")
        ]));
        assert!(!ok(&[
            ("host", "site:8080"),
            ("origin", "http://site:8081")
        ]));
        assert!(!ok(&[("host", "site:8080"), ("origin", "null")]));
        assert!(!ok(&[
            ("host", "site:8080"),
            ("sec-fetch-site", "cross-site")
        ]));
        assert!(!ok(&[
            ("host", "site:8080"),
            ("sec-fetch-site", "same-site")
        ]));
        assert!(same_origin(&headers(&[("host", "s"), ("origin", "http://s")]), "https").is_err());
    }

    #[test]
    fn form_tokens_differ_per_session() {
        assert_ne!(form_token("a"), form_token("b"));
        assert_eq!(form_token("a"), form_token("a"));
        assert!(crate::login::constant_time_eq(b"abc", b"abc"));
        assert!(!crate::login::constant_time_eq(b"abc", b"abd"));
    }
}
